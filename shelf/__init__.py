"""The shelf: machinery the numbered scripts use and a reader may skip, one job a file. The README's file tree
(## Files) says what each file does; each file's docstring says how."""
