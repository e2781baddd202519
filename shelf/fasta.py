"""The one FASTA reader: streaming, plain or gzip (bgzip = multi-member gzip), any line length and line ends."""

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from shelf.errors import UserError
from shelf.progress import progress

CHUNK = 4 << 20  # decompressed bytes per parsing step: the unit of memory, independent of genome size
WHITESPACE = b" \t\r\v\f"  # ignored anywhere in sequence lines ('\n' is removed first, separately)
PRINTABLE = bytes(range(0x20, 0x7F))  # anything else in a sequence line means a binary file


@dataclass
class FastaRecord:
    header: str  # the text after '>', stripped
    sequence: str  # as in the file, lines joined, whitespace removed, no case change
    line: int  # 1-based line number of the header, for error messages


def read_fasta(path: str | Path) -> Iterator[FastaRecord]:
    """Yield whole records: for files of small records (NT tasks, tests). Genomes go through fasta_pieces."""
    record = None
    pieces = []
    for start, seq, _ in fasta_pieces(Path(path)):
        if start is None:
            pieces.append(seq)
            continue
        if record:
            yield FastaRecord(record.header, b"".join(pieces).decode(), record.line)
        record = start
        pieces = []
    yield FastaRecord(record.header, b"".join(pieces).decode(), record.line)


def read_chunks(path: Path, label: str | None = None) -> Iterator[bytes]:
    """Yield CHUNK decompressed bytes at a time of a plain or gzip file; `label`: of a progress bar of the file's
    bytes read (None: no bar)."""
    try:
        raw = open(path, "rb")
    except OSError as e:  # no permission, a directory, removed since it was listed
        raise UserError(f"{path}: cannot read ({e.strerror})")
    with raw, progress(total=os.fstat(raw.fileno()).st_size, desc=label, unit="B", unit_scale=True, leave=False,
                       disable=label is None) as bar:
        head = raw.peek(6)[:6]
        for magic, kind in [(b"BZh", "bzip2"), (b"\xfd7zXZ", "xz"), (b"\x28\xb5\x2f\xfd", "zstd")]:
            if head.startswith(magic):
                raise UserError(f"{path}: {kind}-compressed; decompress it or recompress with gzip/bgzip")
        f = gzip.GzipFile(fileobj=raw) if head.startswith(b"\x1f\x8b") else raw
        try:
            while data := f.read(CHUNK):
                bar.update(raw.tell() - bar.n)
                yield data
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise UserError(f"{path}: cannot read: truncated or corrupt gzip file ({e}); re-download it")


def fasta_pieces(path: Path, label: str | None = None) -> Iterator[tuple[FastaRecord | None, bytes, bytes]]:
    """Stream a FASTA file, never holding a record: yield (FastaRecord with no sequence, b"", b"") at each header,
    then (None, seq, other) pieces: seq = at most a chunk of the record's sequence, whitespace removed, case kept;
    other = seq's bytes but A/C/G/T/a/c/g/t, in order. Per chunk: whole-buffer C calls, no loop over characters."""
    header = None  # the bytes of a '>' line being read (it may span chunks), else None
    header_line = 0  # the line number of the last header (0: none yet)
    line = 1  # the line number at pos
    at_line_start = True
    for chunk in read_chunks(path, label):
        pos = 0
        while pos < len(chunk):
            if header is not None:  # inside a '>' line: everything up to the newline is the header
                nl = chunk.find(b"\n", pos)
                if len(header) < 10_000:  # a header is a name, not data: keep its first 10,000 bytes
                    header += chunk[pos:nl if nl >= 0 else len(chunk)][:10_000]
                if nl < 0:
                    break
                yield FastaRecord(header.decode("ascii", "replace").strip(), "", header_line), b"", b""
                header = None
                pos = nl + 1
                at_line_start = True
                line += 1
            elif at_line_start and chunk[pos] == ord(">"):
                header = bytearray()
                header_line = line
                pos += 1
            else:  # sequence lines, up to the next header: a '>' right after a newline (found by memchr)
                end = chunk.find(b">", pos + 1)
                while end > 0 and chunk[end - 1] != ord("\n"):
                    end = chunk.find(b">", end + 1)
                end = len(chunk) if end < 0 else end
                raw = chunk[pos:end]
                seq = raw.replace(b"\n", b"")
                other = seq.translate(None, b"ACGTacgt")
                if other and (clean := other.translate(None, WHITESPACE)) != other:  # CRLF, spaces, tabs
                    seq = seq.translate(None, WHITESPACE)
                    other = clean
                if seq and not header_line:
                    at = len(raw) - len(raw.lstrip())
                    raise UserError(f"{path}:{line + raw.count(10, 0, at)}: expected a FASTA header starting with "
                                    f"'>', found {raw[at:at + 20]!r}")
                if bad := other.translate(None, PRINTABLE):
                    at = raw.find(bad[:1])
                    raise UserError(f"{path}:{line + raw.count(10, 0, at)}: binary byte {bad[0]:#04x} in a sequence "
                                    "line: not a FASTA text file")
                if seq:
                    yield None, seq, other
                line += raw.count(b"\n")
                at_line_start = raw.endswith(b"\n")
                pos = end
    if header is not None:  # a last header with no newline after it
        yield FastaRecord(header.decode("ascii", "replace").strip(), "", header_line), b"", b""
    if not header_line:
        raise UserError(f"{path}: empty file (no FASTA records)")
