"""
The FASTA reader: streaming, plain or gzip (bgzip = multi-member gzip), any line length and line ends.
"""

from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from shelf.errors import UserError

CHUNK = 4 << 20  # decompressed bytes per parsing step: the unit of memory, independent of genome size


def open_text(path: str | Path) -> io.TextIOBase:
    """Open plain or gzip text (bgzip is multi-member gzip, which gzip reads); sniffs the magic bytes."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="ascii", errors="replace", newline=None)
    return open(path, "r", encoding="ascii", errors="replace", newline=None)


@dataclass
class FastaRecord:
    header: str  # the text after '>'
    sequence: str  # as in the file, lines joined, no case change
    line: int  # 1-based line number of the header, for error messages


def read_fasta(path: str | Path) -> Iterator[FastaRecord]:
    """Yield the records of a (small-record) FASTA file: NT task files, test fixtures.

    For whole chromosomes use 01_preprocess.py's streaming reader, which never holds a record.
    Raises UserError naming the file and line on a file with no header or with sequence before it.
    """
    path = Path(path)
    header, header_line, chunks = None, 0, []
    try:
        with open_text(path) as f:
            for line_no, line in enumerate(f, start=1):
                line = line.strip()
                if not line:
                    continue
                if line.startswith(">"):
                    if header is not None:
                        yield FastaRecord(header, "".join(chunks), header_line)
                    header, header_line, chunks = line[1:].strip(), line_no, []
                elif header is None:
                    raise UserError(f"{path}:{line_no}: expected a FASTA header starting with '>', got {line[:40]!r}")
                else:
                    chunks.append(line)
    except (OSError, EOFError, UnicodeDecodeError) as e:  # truncated or corrupt gzip
        raise UserError(f"{path}: cannot read ({e})")
    if header is not None:
        yield FastaRecord(header, "".join(chunks), header_line)


def read_chunks(path: Path, size: int | None = None) -> Iterator[tuple[bytes, int]]:
    """Yield (decompressed bytes, compressed bytes consumed) of a plain or gzip file, `size` at a time.

    gzip goes through zlib directly: one decompressobj per member (bgzip writes many members), each
    call capped at `size` output bytes, so even a member of a billion Ns never sits in memory.
    """
    size = size or CHUNK
    with open(path, "rb") as f:
        head = f.read(6)
        f.seek(0)
        for magic, kind in [(b"BZh", "bzip2"), (b"\xfd7zXZ", "xz"), (b"\x28\xb5\x2f\xfd", "zstd")]:
            if head.startswith(magic):
                raise UserError(f"{path}: {kind}-compressed; decompress it or recompress with gzip/bgzip")
        if not head.startswith(b"\x1f\x8b"):
            while data := f.read(size):
                yield data, len(data)
            return
        d, fed, data = zlib.decompressobj(wbits=31), False, b""  # wbits 31 = gzip header + CRC check
        while True:
            consumed = 0
            if not data:
                data = f.read(1 << 20)
                consumed = len(data)
                if not data:  # end of file: drain what zlib still holds, then it must be at a member's end
                    while fed and not d.eof and (out := d.decompress(b"", size)):
                        yield out, 0
                    if fed and not d.eof:
                        raise UserError(f"{path}: truncated or corrupt gzip file (unexpected end of data); re-download it")
                    return
            try:
                out = d.decompress(data, size)
            except zlib.error as e:
                raise UserError(f"{path}: corrupt gzip data ({e})")
            fed, data = True, d.unconsumed_tail
            if out or consumed:
                yield out, consumed
            if d.eof:  # end of a member: the next one (bgzip writes many) starts in unused_data
                d, fed, data = zlib.decompressobj(wbits=31), False, d.unused_data + data


WHITESPACE = b" \t\r\v\f"  # ignored anywhere in sequence lines ('\n' is removed first, separately)


PRINTABLE = bytes(range(0x20, 0x7F))


def fasta_pieces(path: Path, progress=None) -> Iterator[tuple[str | None, bytes, bytes]]:
    """Stream a FASTA file: yield (header, b"", b"") at each record, then (None, seq, non_acgt) pieces.

    seq: a piece of the record's sequence (at most one chunk), whitespace removed, upper-cased;
    non_acgt: seq's characters other than A/C/G/T, in order (len() counts them, .count(b"N") the Ns).
    Per chunk the work is a few whole-buffer C calls (find, replace, translate, numpy), never a loop
    over characters, so parsing runs at close to decompression speed.
    """
    offset = 0  # decompressed bytes before this chunk, to point at errors
    in_header, header, at_line_start, seen_header = False, bytearray(), True, False
    for chunk, consumed in read_chunks(path):
        if progress is not None:
            progress.update(consumed)
        pos, n = 0, len(chunk)
        while pos < n:
            if in_header:  # inside a '>' line: everything up to the newline is the header
                nl = chunk.find(b"\n", pos)
                end = n if nl < 0 else nl
                if len(header) < 10_000:  # a header is a name, not data: keep its first 10,000 bytes
                    header += chunk[pos:end][:10_000]
                if nl < 0:
                    break
                yield header.decode("ascii", "replace").strip(), b"", b""
                in_header, header, pos, at_line_start = False, bytearray(), nl + 1, True
                continue
            if at_line_start and chunk[pos] == ord(">"):
                in_header = seen_header = True
                pos += 1
                continue
            end = chunk.find(b">", pos + 1)  # the next header: a '>' right after a newline (memchr-fast)
            while end > 0 and chunk[end - 1] != 10:
                end = chunk.find(b">", end + 1)
            end = n if end < 0 else end
            raw = chunk[pos:end]
            at_line_start = raw.endswith(b"\n")
            seq = raw.replace(b"\n", b"")
            non_acgt = seq.translate(None, b"ACGTacgt")
            if non_acgt:
                for ws in WHITESPACE:  # CR of CRLF files, blank-ish lines, spaces: not sequence
                    if ws in non_acgt:
                        seq = seq.replace(bytes([ws]), b"")
                        non_acgt = non_acgt.replace(bytes([ws]), b"")
            if seq and not seen_header:
                where = offset + pos + len(raw) - len(raw.lstrip())
                raise UserError(f"{path}:{line_at(path, where)}: expected a FASTA header starting with '>', "
                                f"found {raw.lstrip()[:20]!r}")
            if non_acgt:
                bad = non_acgt.translate(None, PRINTABLE)
                if bad:
                    where = offset + pos + raw.find(bad[:1])
                    raise UserError(f"{path}:{line_at(path, where)}: binary byte {bad[0]:#04x} in a sequence "
                                    "line: not a FASTA text file")
                non_acgt = non_acgt.upper()
            if seq:
                # upper-case with one vectorised AND: clearing bit 5 maps a/c/g/t to A/C/G/T and can turn
                # no other byte into A/C/G/T (non-letters may change, but they only ever break stretches)
                yield None, (np.frombuffer(seq, np.uint8) & 0xDF).tobytes(), non_acgt
            pos = end
        offset += n
    if in_header:
        yield header.decode("ascii", "replace").strip(), b"", b""
    if not seen_header:
        raise UserError(f"{path}: empty file (no FASTA records)")


def line_at(path: Path, offset: int) -> int:
    """1-based line number of decompressed byte `offset` (read again: only used for an error message)."""
    line, seen = 1, 0
    for chunk, _ in read_chunks(path):
        if seen + len(chunk) > offset:
            return line + chunk.count(b"\n", 0, offset - seen)
        line, seen = line + chunk.count(b"\n"), seen + len(chunk)
    return line
