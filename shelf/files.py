"""Files: written atomically (a temp file in the target's folder, fsync, then a rename over the target, which POSIX
makes atomic: a reader or a crash sees the old file or the new one, never half of one), hashed, and downloaded
resumably with a checksum."""

import contextlib
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path

from shelf.errors import UserError
from shelf.progress import progress

RETRIES = 5  # download failures in a row before giving up
BACKOFF_S = 1.0  # the first wait, doubling after each failure
TIMEOUT_S = 60.0  # per connection and read


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w"):
    """`with atomic_write(path, "w" or "wb") as f:` writes a temp file that replaces `path` on success
    and is deleted on any error. The file gets the permissions a plain open() would (not mkstemp's 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def prepare_dir(path: str | Path) -> Path:
    """mkdir -p, failing in one line if a file is in the way, then remove the temp files atomic_write
    leaves when a run is killed (`.<name>.<random>.tmp`: a kill skips the `finally` that deletes them)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{path}: cannot create the output folder ({e.strerror}); is a file in the way?")
    for tmp in path.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, obj) -> None:
    with atomic_write(path) as f:
        f.write(json.dumps(obj, indent=2) + "\n")


def file_hash(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in blocks (tokenizer and data fingerprints: sha256; downloads: md5)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


# -----------------------------------------------------------------------------
# downloads: resumable, retried, verified, cached (01 fetches genomes, 04 the NT benchmark)
class NotFound(UserError):
    """HTTP 404 or 410: the server has no such file (a genome withdrawn from NCBI since a list was made)."""


def unresolved(e: Exception) -> bool:
    """No DNS answer: offline, or a wrong host name. Retrying cannot help, so it fails at once."""
    return isinstance(getattr(e, "reason", e), socket.gaierror)


def remote_size(url: str) -> int | None:
    """A file's size in bytes as the server reports it; None on any error. A one-byte ranged GET, not a
    HEAD: every server that serves resumable downloads answers it (Content-Range: bytes 0-0/<size>)."""
    request = urllib.request.Request(url, headers={"Range": "bytes=0-0", "User-Agent": "dna-lm-download/1.0"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as r:
            size = r.headers.get("Content-Range", "").rpartition("/")[2] or r.headers.get("Content-Length")
            return int(size) if r.status in (200, 206) and size and size.isdigit() else None
    except (urllib.error.URLError, HTTPException, OSError, ValueError):
        return None


def is_verified(dest: str | Path, md5: str | None = None) -> bool:
    """True when download() verified `dest` (its `<dest>.md5` sidecar is newer than it), against `md5` if given."""
    dest = Path(dest)
    sidecar = dest.with_name(dest.name + ".md5")
    if not (dest.is_file() and sidecar.is_file()) or sidecar.stat().st_mtime < dest.stat().st_mtime:
        return False
    recorded = sidecar.read_text().split()[:1]
    return bool(recorded) and (md5 is None or recorded[0] == md5.lower())


def download(url: str, dest: str | Path, md5: str | None = None, *, sha256: str | None = None, quiet: bool = False,
             offline_hint: str = "") -> Path:
    """Fetch `url` (http/https) to `dest` once, via `<dest>.part`, which an interrupted transfer resumes (HTTP Range).
    Network errors, timeouts and HTTP 408/429/5xx are retried with back-off, RETRIES times in a row. The md5 and
    sha256 are checked when given (else only the length), then `<dest>.md5` is written (md5sum format): a verified
    file is never fetched again, one that fails is deleted, never used. HTTP 404/410 raise NotFound; a host name
    that does not resolve fails at once, with `offline_hint` (what to do instead)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    md5 = md5.lower() if md5 else None
    if is_verified(dest, md5):
        return dest

    def accept(path: Path) -> Path:
        digest = file_hash(path, "md5")
        checks = [("md5", md5, digest)] + ([("sha256", sha256.lower(), file_hash(path))] if sha256 else [])
        for algorithm, expected, got in checks:
            if expected is not None and got != expected:
                path.unlink()
                raise UserError(f"{url}: {algorithm} mismatch (expected {expected}, got {got}); the file was deleted, "
                                "not used")
        os.replace(path, dest)
        with atomic_write(dest.with_name(dest.name + ".md5")) as f:
            f.write(f"{digest}  {dest.name}\n")
        return dest

    if dest.is_file() and md5 is not None and file_hash(dest, "md5") == md5:
        return accept(dest)  # already here (copied in by hand, or verified before the sidecar existed)

    failures = 0
    while True:
        have = part.stat().st_size if part.is_file() else 0
        headers = {"User-Agent": "dna-lm-download/1.0", **({"Range": f"bytes={have}-"} if have else {})}
        got = 0
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S) as r:
                if have and (r.status != 206 or not r.headers.get("Content-Range", "").startswith(f"bytes {have}-")):
                    have = 0  # the server ignored the Range request: start over
                length = r.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                with open(part, "ab" if have else "wb") as f, progress(
                        total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=dest.name, disable=True if quiet else None, leave=False) as bar:
                    while block := r.read(1 << 20):
                        f.write(block)
                        got += len(block)
                        bar.update(len(block))
                if total is not None and have + got < total:
                    raise ConnectionError(f"connection closed after {have + got:,} of {total:,} bytes")
            return accept(part)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # Range not satisfiable: the .part is already complete
                return accept(part)
            if e.code not in (408, 429) and e.code < 500:
                raise (NotFound if e.code in (404, 410) else UserError)(f"{url}: HTTP {e.code} {e.reason}")
            error = f"HTTP {e.code} {e.reason}"
        except (urllib.error.URLError, HTTPException, OSError) as e:
            error = str(getattr(e, "reason", None) or e)
            if unresolved(e):
                raise UserError(f"{url}: cannot resolve the host name (offline?){offline_hint}"
                                + (f"; re-run to resume from {part}" if part.is_file() else ""))
        failures = 0 if got else failures + 1  # a transfer that made progress resumes immediately
        if failures > RETRIES:
            raise UserError(f"{url}: download failed after {RETRIES} retries ({error})"
                            + (f"; re-run to resume from {part}" if part.is_file() else ""))
        if failures:
            if not quiet:
                print(f"{url}: {error}; retrying in {BACKOFF_S * 2 ** (failures - 1):.0f} s", file=sys.stderr)
            time.sleep(BACKOFF_S * 2 ** (failures - 1))
