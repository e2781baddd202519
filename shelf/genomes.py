"""Genomes for 01: the list (sources, or a manifest: a TSV or NT's urls.csv, a file or a URL, split by genome),
each one as a local file (downloaded, md5-checked against NCBI's or UCSC's list beside it), the ledger that
makes a manifest run resumable genome by genome, and the --dry-run plan (sizes, disk at peak, time)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import sys
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urljoin

import numpy as np

from shelf.demo_data import write_demo_genome
from shelf.errors import UserError
from shelf.files import download, file_hash, is_verified, remote_size, unresolved, write_json

OFFLINE = "; to work offline, give a local FASTA (--preprocess.sources=['genome.fa.gz']) or use configs/demo.toml"


TSV_LINE = "'name<TAB>url or path<TAB>md5 (optional)'"



class Genome(NamedTuple):
    name: str
    source: str  # a path, an http(s) URL or "demo"
    md5: str  # "" = look it up beside the URL
    split: str  # "train" / "val" / "test" for a manifest split by genome; "" = by segment into train/val
    index: int  # its row in the manifest (or place in sources): a manifest genome's random streams derive from it



def read_manifest(p) -> tuple[list[tuple[str, str, str]], str]:
    """The manifest's (name, source, md5) rows and its sha256. A file, or an http(s) URL fetched once into
    the download cache (NT's urls.csv has no published checksum: the preset pins it by the revision in
    its URL, and stats.json records its sha256). Lines `name<TAB>url or path<TAB>md5 (optional)`, or a
    CSV with a URL column (NT's urls.csv), each genome named by its file name."""
    where, remote = p.manifest, p.manifest.startswith(("http://", "https://"))
    if remote:  # one cache folder per URL: many manifests are called urls.csv
        folder = Path(p.download_dir) / "manifests" / hashlib.sha256(where.encode()).hexdigest()[:12]
        path = download(where, folder / where.rsplit("/", 1)[-1], offline_hint=OFFLINE)
    elif not (path := Path(where)).is_file():
        raise UserError(f"{path}: manifest not found; write it: one {TSV_LINE} a line, or a CSV with a URL column")
    lines = [(no, line) for no, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
             if line.strip() and not line.startswith("#")]
    header = [c.strip().lower() for c in next(csv.reader([lines[0][1]]))] if lines else []
    is_csv = "url" in header and "\t" not in lines[0][1]
    rows, names = [], set()
    for no, line in lines[is_csv:]:
        if is_csv:
            src = (next(csv.reader([line])) + [""] * len(header))[header.index("url")].strip()
            # named by its file: .../GCF_000001405.40_GRCh38.p14_genomic.fna.gz -> GCF_..._genomic
            name, md5, ok = re.sub(r"(\.fna|\.fa|\.fasta)?(\.gz)?$", "", src.rsplit("/", 1)[-1]), "", bool(src)
        else:
            fields = [f.strip() for f in line.split("\t")]
            name, src, md5 = (fields + ["", ""])[:3]
            ok = len(fields) in (2, 3) and bool(name and src)
        if not ok or name in names:
            raise UserError(f"{where}:{no}: expected {'a URL in column URL' if is_csv else TSV_LINE} with a "
                            f"genome name not used before, got {line[:80]!r}")
        names.add(name)
        if src.startswith("ftp://ftp.ncbi.nlm.nih.gov/"):  # NCBI serves the same tree over https
            src = "https" + src[3:]
        if "://" not in src and src != "demo" and not Path(src).is_absolute():
            src = urljoin(where, src) if remote else str(path.parent / src)  # relative to the manifest
        rows.append((name, src, md5))
    return rows, file_hash(path)



def list_genomes(p, seed: np.random.SeedSequence) -> tuple[list[Genome], str]:
    """-> (the genomes, the manifest's sha256 or ""). One genome per source; or the manifest's, split by
    genome: test_genomes and val_genomes (counts, or shares of them all: >= 1 if > 0) to test and val, the
    rest to train. split_by = "seed": which ones is a seeded draw; "position": NT's split, the last rows
    test and the val rows before them. max_genomes keeps only the first N genomes of each split (a trial)."""
    if not p.manifest:
        md5s = p.md5 or [""] * len(p.sources)
        return [Genome(Path(src.rstrip("/")).name or src, src, md5, "", i)
                for i, (src, md5) in enumerate(zip(p.sources, md5s))], ""
    rows, sha256 = read_manifest(p)
    n = len(rows)
    n_test, n_val = (int(v) if v >= 1 else max(1, round(v * n)) if v > 0 else 0
                     for v in (p.test_genomes, p.val_genomes))  # a count, or a share (>= 1 genome if > 0)
    if n - n_test - n_val < 1:
        raise UserError(f"{p.manifest}: {n} genomes cannot give {n_test} test, {n_val} validation and 1 train "
                        "genome", 2)
    # place[i]: genome i's place in the order the splits take genomes from: test first, then val, then train
    place = np.arange(n)[::-1] if p.split_by == "position" else np.argsort(np.random.default_rng(seed).permutation(n))
    splits = ["test" if k < n_test else "val" if k < n_test + n_val else "train" if n_val else "" for k in place]
    genomes = [Genome(name, src, md5, split, i) for i, ((name, src, md5), split) in enumerate(zip(rows, splits))]
    if p.max_genomes:
        taken = Counter()  # update() returns None: the `or` just counts the genome first
        genomes = [g for g in genomes if taken.update([g.split]) or taken[g.split] <= p.max_genomes]
    return genomes, sha256


CHECKSUM_LISTS = ("md5checksums.txt", "md5sum.txt")  # NCBI's beside each assembly, UCSC's in each folder



def checksum_beside(url: str) -> str | None:
    """The file's md5 from the first checksum list beside it that names it: NCBI's `md5checksums.txt`
    (lines `<md5>  ./<file name>`) or UCSC's `md5sum.txt` (lines `<md5>  <file name>`); None if neither does."""
    base, name = url.rstrip("/").rsplit("/", 1)
    for listing in CHECKSUM_LISTS:
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
        if md5 or is_verified(dest):
            return download(src, dest, md5=md5, offline_hint=OFFLINE)
        md5 = checksum_beside(src)  # fetched only when a check is needed
        download(src, dest, md5=md5, offline_hint=OFFLINE)
        if md5 is None:  # warned after the download: a failed one prints its error alone
            print(f"warning: {src}: no md5 given or found beside it; only its length was checked", file=sys.stderr)
        return dest
    if not Path(src).is_file():
        raise UserError(f"{src}: " + ("a directory, not a FASTA file" if Path(src).is_dir() else "no such file")
                        + (" (only http(s):// URLs can be downloaded)" if "://" in src else ""))
    return Path(src)



def open_ledger(out: Path, key: dict, splits: list[str], max_len: int) -> dict:
    """The ledger of a run with this key (config, seed, manifest) resumes: each split file is cut back to
    its size after the last finished genome (a killed run may have appended part of the next one).
    Anything else starts over from empty files. stats.json goes until the run is done."""
    path = out / "ledger.json"
    try:
        ledger = json.loads(path.read_text())
    except (OSError, ValueError):  # none (or not one of ours): a fresh start
        ledger = {}
    sizes = ledger["genomes"][-1]["sizes"] if ledger.get("key") == key and ledger["genomes"] else {}
    if ledger and (ledger.get("key") != key or any(
            sizes.get(s, 0) > (f.stat().st_size if (f := out / f"{s}.txt").is_file() else 0) for s in splits)):
        print(f"warning: {path}: another config, manifest or seed, or its files changed; starting over",
              file=sys.stderr)
        ledger, sizes = {}, {}
    ledger = ledger or {"key": key, "genomes": [], "length_counts": [0] * (max_len + 1)}
    for s in splits:
        with open(out / f"{s}.txt", "ab") as f:
            f.truncate(sizes.get(s, 0))
    (out / "stats.json").unlink(missing_ok=True)
    write_json(path, ledger)
    return ledger


GZIP_BP_PER_BYTE = 3.1  # bases per byte of a gzip FASTA: 2,333,275 bp in 754,422 bytes (../shared/data's hg38 slice)



def print_plan(cfg, genomes: list[Genome]) -> None:
    """--dry-run: genomes per split; download size, disk at peak and time from the sizes the servers report
    (a one-byte request per genome, 16 at a time; no answer = unknown). Fetches nothing but the manifest."""
    p, tc, GB = cfg.preprocess, cfg.tokenizer, 1e9
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
    rate, how = (60e6, "~60 Mbp/s") if tc.kind == "char" else (2e6 * os.cpu_count(), f"~2 Mbp/s x {os.cpu_count()} cores")
    print(f"time: ~{total / 25e6 / 3600:,.1f} h to download at 25 MB/s, ~{bp / 60e6 / 3600:,.1f} h to segment at "
          f"~60 Mbp/s, ~{bp / rate / 3600:,.1f} h for 02 to encode at {how} (bench/bench_genome_list.py measures them)")
