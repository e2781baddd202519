"""Genomes for 01: the list (sources, or a manifest: a TSV or NT's urls.csv, a file or a URL, split by genome),
each one as a local file (downloaded, md5-checked against NCBI's or UCSC's list beside it), the Corpus that 01
writes their segments to, and the --dry-run plan (sizes, disk at peak, time)."""

import csv
import dataclasses
import hashlib
import json
import os
import re
import sys
import urllib.request
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator, NamedTuple
from urllib.parse import urljoin

import numpy as np

from shelf.demo_data import write_demo_genome
from shelf.errors import UserError
from shelf.files import NotFound, atomic_write, download, file_hash, is_verified, remote_size, unresolved, write_json
from shelf.progress import progress
from shelf.seeds import rng

OFFLINE = "; to work offline, give a local FASTA (--preprocess.sources=['genome.fa.gz']) or use configs/demo.toml"
TSV_LINE = "'name<TAB>url or path<TAB>md5 (optional)'"


class Genome(NamedTuple):
    name: str
    source: str  # a path, an http(s) URL or "demo"
    md5: str  # "" = look it up beside the URL
    split: str  # "train" / "val" / "test" for a manifest split by genome; "" = by segment into train/val
    index: int  # its row in the manifest (or place in sources): its random streams derive from it
    file: str = ""  # the local FASTA, once Corpus.todo has fetched it
    missing: str = ""  # why the server does not have it (HTTP 404): skipped, recorded in stats.json


def read_manifest(p) -> tuple[list[Genome], str]:
    """The manifest's genomes (not split yet) and its sha256. A file, or an http(s) URL fetched once into the
    download cache (NT's urls.csv has no published checksum: the preset pins it by the revision in its URL). Lines
    `name<TAB>url or path<TAB>md5 (optional)`, or a CSV with a URL column, each genome named by its file name."""
    where = p.manifest
    remote = where.startswith(("http://", "https://"))
    if remote:  # one cache folder per URL: many manifests are called urls.csv
        folder = Path(p.download_dir) / "manifests" / hashlib.sha256(where.encode()).hexdigest()[:12]
        path = download(where, folder / where.rsplit("/", 1)[-1], offline_hint=OFFLINE)
    elif not (path := Path(where)).is_file():
        raise UserError(f"{path}: manifest not found; write it: one {TSV_LINE} a line, or a CSV with a URL column")
    lines = [(no, line) for no, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
             if line.strip() and not line.startswith("#")]
    header = [c.strip().lower() for c in next(csv.reader([lines[0][1]]))] if lines else []
    is_csv = "url" in header and "\t" not in lines[0][1]
    genomes = {}  # name -> Genome, in manifest order
    for no, line in lines[is_csv:]:
        if is_csv:
            src = (next(csv.reader([line])) + [""] * len(header))[header.index("url")].strip()
            # named by its file: .../GCF_000001405.40_GRCh38.p14_genomic.fna.gz -> GCF_..._genomic
            fields = [re.sub(r"(\.fna|\.fa|\.fasta)?(\.gz)?$", "", src.rsplit("/", 1)[-1]), src]
        else:
            fields = [f.strip() for f in line.split("\t")]
        name, src, md5 = (fields + ["", ""])[:3]
        if len(fields) not in (2, 3) or not (name and src) or name in genomes:
            raise UserError(f"{where}:{no}: expected {'a URL in column URL' if is_csv else TSV_LINE} with a "
                            f"genome name not used before, got {line[:80]!r}")
        if src.startswith("ftp://ftp.ncbi.nlm.nih.gov/"):  # NCBI serves the same tree over https
            src = "https" + src[3:]
        if "://" not in src and src != "demo" and not Path(src).is_absolute():
            src = urljoin(where, src) if remote else str(path.parent / src)  # relative to the manifest
        genomes[name] = Genome(name, src, md5, "", len(genomes))
    return list(genomes.values()), file_hash(path)


def count_of(v: float, n: int) -> int:
    """val_genomes / test_genomes: a count, or a share of the n genomes (at least 1 if > 0)."""
    return int(v) if v >= 1 else max(1, round(v * n)) if v > 0 else 0


def list_genomes(p, seed: int) -> tuple[list[Genome], str]:
    """-> (the genomes, the manifest's sha256 or ""). One genome per source; or the manifest's, split by genome:
    test_genomes and val_genomes to test and val, the rest to train; which ones is a seeded draw (split_by = "seed")
    or NT's split ("position": the last rows test, the val rows before them). max_genomes: the first N of each split."""
    if not p.manifest:
        md5s = p.md5 or [""] * len(p.sources)
        return [Genome(Path(src.rstrip("/")).name or src, src, md5, "", i)
                for i, (src, md5) in enumerate(zip(p.sources, md5s))], ""
    genomes, sha256 = read_manifest(p)
    n = len(genomes)
    n_test = count_of(p.test_genomes, n)
    n_val = count_of(p.val_genomes, n)
    if n - n_test - n_val < 1:
        raise UserError(f"{p.manifest}: {n} genomes cannot give {n_test} test, {n_val} validation and 1 train "
                        "genome", 2)
    # place[i]: genome i's place in the order the splits take genomes from: test first, then val, then train
    order = np.arange(n)[::-1] if p.split_by == "position" else rng(seed, "genome split").permutation(n)
    place = np.argsort(order)
    genomes = [g._replace(split="test" if k < n_test else "val" if k < n_test + n_val else "train" if n_val else "")
               for g, k in zip(genomes, place)]
    if p.max_genomes:
        taken = Counter()  # update() returns None: the `or` just counts the genome first
        genomes = [g for g in genomes if taken.update([g.split]) or taken[g.split] <= p.max_genomes]
    return genomes, sha256


def checksum_beside(url: str) -> str | None:
    """The file's md5 from the first checksum list beside it that names it: NCBI's `md5checksums.txt`
    (lines `<md5>  ./<file name>`) or UCSC's `md5sum.txt` (lines `<md5>  <file name>`); None if neither does."""
    base, name = url.rstrip("/").rsplit("/", 1)
    for listing in ("md5checksums.txt", "md5sum.txt"):  # NCBI's beside each assembly, UCSC's in each folder
        md5_url = f"{base}/{listing}"
        try:
            with urllib.request.urlopen(md5_url, timeout=60) as r:
                lines = r.read().decode("ascii", errors="replace").splitlines()
        except OSError as e:  # urllib's URLError and HTTPError are OSErrors
            if getattr(e, "code", None) == 404:
                continue
            if unresolved(e):  # offline: every other request would fail the same way
                raise UserError(f"{md5_url}: cannot resolve the host name (offline?){OFFLINE}")
            raise UserError(f"{md5_url}: {getattr(e, 'reason', e)} (give the checksum in preprocess.md5 to skip this)")
        md5 = next((f[0] for f in map(str.split, lines) if f[1:] in ([name], [f"./{name}"])), None)
        if md5:
            return md5
    return None


def local_file(src: str, md5: str, download_dir: str, run_dir: Path) -> Path:
    """A local FASTA path for a source: the file itself, a verified download, or the demo genome."""
    if src == "demo":
        return write_demo_genome(run_dir / "genome" / "demo.fa")
    if src.startswith(("http://", "https://")):
        dest = Path(download_dir) / src.rstrip("/").rsplit("/", 1)[-1]
        look_up = not md5 and not is_verified(dest)  # the list beside it is fetched only when a check is needed
        if look_up:
            md5 = checksum_beside(src)
        download(src, dest, md5=md5, offline_hint=OFFLINE)
        if look_up and md5 is None:  # warned after the download: a failed one prints its error alone
            print(f"warning: {src}: no md5 given or found beside it; only its length was checked", file=sys.stderr)
        return dest
    if not Path(src).is_file():
        raise UserError(f"{src}: " + ("a directory, not a FASTA file" if Path(src).is_dir() else "no such file")
                        + (" (only http(s):// URLs can be downloaded)" if "://" in src else ""))
    return Path(src)


class Corpus:
    """The split files 01 writes, and the genomes done (their stats.json entries and segment length counts).

    Sources (one run, minutes): temp files, renamed over train.txt and val.txt when every genome went through; a
    failed run leaves earlier outputs untouched. A manifest (dnafm_7b: NT's ~850 genomes, days): the split files are
    appended in place, ledger.json naming each finished genome and the files' sizes after it (temp files could only
    be renamed at the end: a kill would lose every genome done). A rerun cuts off a half-appended genome and goes on
    at the next; as each genome's random streams derive from its row, the output is an uninterrupted run's."""

    def __init__(self, cfg, genomes: list[Genome], manifest_sha256: str, out: Path):
        self.cfg = cfg
        self.genomes = genomes
        self.manifest_sha256 = manifest_sha256
        self.out = out
        self.files = {}  # split -> the file its segments are appended to
        self.entries = []  # a stats.json entry per genome done
        self.length_counts = np.zeros(cfg.preprocess.max_len + 1, np.int64)  # [k] = segments of k bp
        self.ledger = None  # a manifest's
        self.stack = ExitStack()

    def __enter__(self) -> "Corpus":
        p = self.cfg.preprocess
        if not p.manifest:
            self.files = {s: self.stack.enter_context(atomic_write(self.out / f"{s}.txt", "wb"))
                          for s in ("train", "val")}
            return self
        # a manifest: the ledger of an earlier run with this key (config, seed, manifest), its split files cut back
        # to their sizes after its last genome (a killed run may have appended part of the next); else a fresh one
        splits = ["train", "val"] + (["test"] if any(g.split == "test" for g in self.genomes) else [])
        key = json.loads(json.dumps({**dataclasses.asdict(p), "download_dir": None, "keep_downloads": None,
                                     "seed": self.cfg.run.seed, "manifest_sha256": self.manifest_sha256}))
        path = self.out / "ledger.json"
        try:
            ledger = json.loads(path.read_text())
        except (OSError, ValueError):  # none (or not one of ours): a fresh start
            ledger = {}
        sizes = ledger["genomes"][-1]["sizes"] if ledger.get("key") == key and ledger["genomes"] else {}
        if ledger and (ledger.get("key") != key or any(
                sizes.get(s, 0) > (f.stat().st_size if (f := self.out / f"{s}.txt").is_file() else 0) for s in splits)):
            print(f"warning: {path}: another config, manifest or seed, or its files changed; starting over",
                  file=sys.stderr)
            ledger = {}
            sizes = {}
        self.ledger = ledger or {"key": key, "genomes": [], "length_counts": [0] * (p.max_len + 1)}
        self.entries = self.ledger["genomes"]
        self.length_counts = np.array(self.ledger["length_counts"], np.int64)
        for s in splits:
            with open(self.out / f"{s}.txt", "ab") as f:
                f.truncate(sizes.get(s, 0))
        (self.out / "stats.json").unlink(missing_ok=True)  # until the run is done
        write_json(path, self.ledger)
        self.files = {s: self.stack.enter_context(open(self.out / f"{s}.txt", "ab")) for s in splits}
        return self

    def __exit__(self, *error) -> None:
        self.stack.__exit__(*error)  # temp files: renamed into place, or deleted after an error
        if error[0] is None and self.ledger is None:
            for stale in ("test.txt", "ledger.json"):  # from an earlier manifest run
                (self.out / stale).unlink(missing_ok=True)

    def todo(self) -> Iterator[Genome]:
        """The genomes not done yet, each with its local file: sources all fetched first (a failed download cannot
        cost a parse); a manifest's one at a time, the oldest download deleted once keep_downloads are on disk, one
        gone from the server (HTTP 404: NT's list predates withdrawals) passed on as missing. add() each in turn."""
        p = self.cfg.preprocess
        if self.ledger is None:
            yield from [self.fetch(g) for g in self.genomes]
            return
        on_disk = deque(Path(e["file"]) for e in self.entries if "://" in e["source"] and Path(e["file"]).is_file())
        with progress(total=len(self.genomes), initial=len(self.entries), unit="genome", disable=None) as bar:
            for genome in self.genomes[len(self.entries):]:
                while "://" in genome.source and p.keep_downloads and len(on_disk) >= p.keep_downloads:
                    old = on_disk.popleft()  # room for this one's download
                    for f in (old, old.with_name(old.name + ".md5")):
                        f.unlink(missing_ok=True)
                try:
                    genome = self.fetch(genome)
                except NotFound as e:
                    print(f"warning: {e}: skipped, recorded in stats.json", file=sys.stderr)
                    genome = genome._replace(missing=str(e))
                yield genome
                on_disk.extend([Path(genome.file)] if "://" in genome.source and genome.file else [])
                bar.update()
                bar.set_postfix_str(f"{sum(e['bp_read'] for e in self.entries) / 1e9:,.2f} Gbp read")

    def fetch(self, genome: Genome) -> Genome:
        file = local_file(genome.source, genome.md5, self.cfg.preprocess.download_dir, self.cfg.out_dir)
        return genome._replace(file=str(file))

    def add(self, entry: dict, length_counts: np.ndarray) -> None:
        """A genome done: its stats.json entry and segment length counts; a manifest's into the ledger, once its
        segments are on disk, with the split files' sizes after it."""
        self.length_counts += length_counts
        if self.ledger is None:
            self.entries.append(entry)
            return
        for f in self.files.values():  # on disk before the ledger says so
            f.flush()
            os.fsync(f.fileno())
        self.entries.append({**entry, "sizes": {s: f.tell() for s, f in self.files.items()}})
        self.ledger["length_counts"] = self.length_counts.tolist()
        write_json(self.out / "ledger.json", self.ledger)


GZIP_BP_PER_BYTE = 3.1  # bases per byte of a gzip FASTA: 2,333,275 bp in 754,422 bytes (../shared/data's hg38 slice)


def print_plan(cfg, genomes: list[Genome]) -> None:
    """--dry-run: genomes per split; download size, disk at peak and time from the sizes the servers report
    (a one-byte request per genome, 16 at a time; no answer = unknown). Fetches nothing but the manifest."""
    p = cfg.preprocess
    tc = cfg.tokenizer
    GB = 1e9
    print(f"{cfg.run.name}: {len(genomes):,} genomes: "
          + ", ".join(f"{s} {n:,}" for s, n in Counter(g.split or "train+val" for g in genomes).items()))
    with ThreadPoolExecutor(16) as pool:
        sizes = pool.map(lambda g: remote_size(g.source) if "://" in g.source else
                         Path(g.source).stat().st_size if Path(g.source).is_file() else None, genomes)
        known = [(size, g) for size, g in zip(sizes, genomes) if size is not None]
    total = sum(size for size, _ in known)
    kept = sum(sorted((size for size, g in known if "://" in g.source), reverse=True)[:p.keep_downloads or None])
    bp = sum(size * (GZIP_BP_PER_BYTE if g.source.endswith(".gz") else 1) for size, g in known)
    tokens = 2 * bp / {"char": 1, "kmer": tc.k, "bpe": 4.3}[tc.kind]  # uint16 tokens; bp per token
    print(f"download: {total / GB:,.1f} GB, {len(known):,} genomes" + (f" ({len(genomes) - len(known):,} of unknown "
          "size: not on the server, or no answer)" if len(known) < len(genomes) else ""))
    print(f"disk at peak: {(kept + bp + tokens) / GB:,.1f} GB = downloads kept {kept / GB:,.1f} GB (keep_downloads = "
          f"{p.keep_downloads or 'all'}) + segments ~{bp / GB:,.1f} GB + 02's {tc.kind} tokens ~{tokens / GB:,.1f} GB")
    # 02: char tokens by table lookup, ~60 Mbp/s; tokenizers' encode_batch ~2 Mbp/s per core (bench_genome_list)
    rate = 60e6 if tc.kind == "char" else 2e6 * os.cpu_count()
    how = "~60 Mbp/s" if tc.kind == "char" else f"~2 Mbp/s x {os.cpu_count()} cores"
    print(f"time: ~{total / 25e6 / 3600:,.1f} h to download at 25 MB/s, ~{bp / 60e6 / 3600:,.1f} h to segment at "
          f"~60 Mbp/s, ~{bp / rate / 3600:,.1f} h for 02 to encode at {how} (bench/bench_genome_list.py measures them)")
