"""Errors for people: a UserError is printed as one line naming the file, line or key; no traceback."""

import sys


class UserError(Exception):
    """A problem with the user's input. exit_code: 2 = bad config or command line, 1 = bad data or a failed download."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class ConfigError(UserError):
    def __init__(self, message: str):
        super().__init__(message, exit_code=2)


def run_main(main) -> None:
    """Run a script's main(); turn a UserError into 'error: ...' on stderr and its exit code."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    except OSError as e:  # a file the user named or the run writes: unreadable, a directory, read-only, ...
        if e.filename is None:
            raise
        print(f"error: {e.filename}: {e.strerror}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
