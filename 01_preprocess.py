"""
Step 1: from genomes (FASTA files or URLs, or a manifest of many genomes) to training segments.

    python 01_preprocess.py                                # tinydnabert: GRCh38.p14 from NCBI (~1 GB download)
    python 01_preprocess.py --config configs/demo.toml     # a synthetic genome made here, offline, seconds
    python 01_preprocess.py --preprocess.sources='["my.fa.gz", "https://host/other.fna.gz"]' --run.out_dir=out/mine
    python 01_preprocess.py --config configs/agront_1b.toml  # many genomes from a manifest, split by genome

Each genome (a path or URL, plain or gzip; "demo"; or a manifest's: list_genomes) is streamed; any
non-ACGT character (N, IUPAC codes) ends a stretch of bases, as a record's end does; stretches are cut
into seeded random lengths (the exact rule: Segmenter); each segment goes to val.txt with probability
val_fraction, else to train.txt (a manifest splits by genome instead). Writes <run.out_dir>/segments/:
train.txt, val.txt (+ test.txt), one upper-case ACGT segment a line; stats.json, segment_lengths.png, config.toml.
"""

import sys
import time
import urllib.request
from collections import Counter
from contextlib import ExitStack
from itertools import compress, pairwise
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from shelf.config import load_config, save_config
from shelf.demo_data import write_demo_genome
from shelf.errors import UserError, run_main
from shelf.fasta import fasta_pieces
from shelf.files import atomic_write, download, is_verified, write_json
from shelf.plots import plot_lengths

COUNTS = ("records", "empty_records", "bp_read", "n_bp", "other_bp")  # per genome, summed in stats.json


class Genome(NamedTuple):
    name: str
    source: str  # a path, an http(s) URL or "demo"
    md5: str  # "" = look it up beside the URL
    split: str  # "train" / "val" / "test" for a manifest split by genome; "" = by segment into train/val


def list_genomes(p, seed: np.random.SeedSequence) -> list[Genome]:
    """One genome per source; or the manifest's, one per line `name <TAB> url or path <TAB> md5 (optional)`
    (the 1B/7B presets' configs/genomes_*.tsv are not shipped: write them), split by genome, seeded:
    round(test_genomes * n) to test, round(val_genomes * n) to val (>= 1 if the share is > 0), the rest train."""
    if not p.manifest:
        md5s = p.md5 or [""] * len(p.sources)
        return [Genome(Path(src.rstrip("/")).name or src, src, md5, "") for src, md5 in zip(p.sources, md5s)]
    path = Path(p.manifest)
    if not path.is_file():
        raise UserError(f"{path}: manifest not found; write it: one 'name<TAB>url or path<TAB>md5 (optional)' a line")
    rows = {}  # name -> (source, md5)
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) not in (2, 3) or not all(fields[:2]) or fields[0] in rows:
            raise UserError(f"{path}:{line_no}: expected 'name<TAB>url or path<TAB>md5 (optional)' with a name "
                            f"not used before, got {line[:80]!r}")
        name, src, md5 = (fields + [""])[:3]
        if "://" not in src and src != "demo" and not Path(src).is_absolute():
            src = str(path.parent / src)  # relative to the manifest
        rows[name] = (src, md5)
    n = len(rows)
    n_test, n_val = (max(1, round(share * n)) if share > 0 else 0 for share in (p.test_genomes, p.val_genomes))
    if n - n_test - n_val < 1:
        raise UserError(f"{path}: {n} genomes cannot give {n_test} test, {n_val} validation and 1 train genome", 2)
    place = np.argsort(np.random.default_rng(seed).permutation(n))  # place[i]: genome i's place in the shuffle
    splits = ["test" if k < n_test else "val" if k < n_test + n_val else "train" if n_val else "" for k in place]
    return [Genome(name, src, md5, split) for (name, (src, md5)), split in zip(rows.items(), splits)]


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
            return download(src, dest, md5=md5)
        md5 = checksum_beside(src)  # fetched only when a check is needed
        download(src, dest, md5=md5)
        if md5 is None:  # warned after the download: a failed one prints its error alone
            print(f"warning: {src}: no md5 given or found beside it; only its length was checked", file=sys.stderr)
        return dest
    if not Path(src).is_file():
        raise UserError(f"{src}: no such file" + (" (only http(s):// URLs can be downloaded)" if "://" in src else ""))
    return Path(src)


class Draws:
    """Numbers drawn 65,536 at a time, handed out in order: they depend on the seed, never on chunking."""

    def __init__(self, draw):
        self.draw, self.buf = draw, draw(1 << 16)

    def next(self, n: int, take: bool = True) -> np.ndarray:  # take=False: they stay next
        while len(self.buf) < n:
            self.buf = np.concatenate([self.buf, self.draw(1 << 16)])
        out, self.buf = self.buf[:n], self.buf[n if take else 0:]
        return out


class Segmenter:
    """Cuts the stream of bases into segments, holding only the open stretch's uncut bases (< max_len).

    The rule: each stretch (maximal run of A/C/G/T within a record) is cut left to right. At each point,
    with r bases of the stretch left: if r < min_len, they are dropped (bp_dropped) and the stretch is
    done; else draw L uniformly from [min_len, max_len], both ends included, and emit min(L, r) bases.
    One draw per segment, seeded by run.seed: the output depends on the data and the seed, not on chunks.
    """

    def __init__(self, min_len: int, max_len: int, rng: np.random.Generator):
        self.min_len, self.max_len = min_len, max_len
        self.lengths = Draws(lambda n: rng.integers(min_len, max_len + 1, size=n))  # inclusive [min, max]
        self.pending = b""  # the open stretch's bases not yet cut
        self.bp_kept = self.bp_dropped = 0  # dropped: stretches and remainders under min_len
        self.length_counts = np.zeros(max_len + 1, np.int64)  # [k] = segments of k bp

    def feed(self, seq: bytes, has_breaks: bool) -> list[bytes]:
        """Add a piece of one record's sequence (upper-case); return the segments completed so far."""
        buf = self.pending + seq
        if not has_breaks:  # the common case: the open stretch just gets longer
            return self._cut(buf, closed=False)
        # the stretches of buf with numpy: is_base flips at each start and end -> (n_stretches, 2)
        a = np.frombuffer(buf, np.uint8)
        is_base = (a == 65) | (a == 67) | (a == 71) | (a == 84)
        starts, ends = np.flatnonzero(np.diff(is_base, prepend=False, append=False)).reshape(-1, 2).T
        short = (ends - starts < self.min_len) & (ends < len(buf))  # closed, under min_len: dropped, no draw
        self.bp_dropped += int((ends - starts)[short].sum())
        out, self.pending = [], b""
        for s, e in zip(starts[~short].tolist(), ends[~short].tolist()):
            out += self._cut(buf[s:e], closed=e < len(buf))  # a stretch touching the end of buf may go on
        return out

    def end_stretch(self) -> list[bytes]:
        """A record ends: close the open stretch."""
        return self._cut(self.pending, closed=True)

    def _cut(self, stretch: bytes, closed: bool) -> list[bytes]:
        """Cut segments off the front of a stretch by the rule. An open stretch is cut only while max_len
        bases are left (those cuts hold whatever follows); its rest waits in pending."""
        n, need = len(stretch), self.min_len if closed else self.max_len
        # vectorised: lay the next draws end to end (segment i starts at bounds[i]), keep the segments
        # that start with r >= need bases left, and take only the draws used from the stream
        bounds = np.concatenate(([0], np.cumsum(self.lengths.next(n // self.min_len + 1, take=False))))
        bounds = np.minimum(bounds[:np.searchsorted(bounds, n - need, side="right") + 1], n)  # min(L, r)
        self.lengths.next(len(bounds) - 1)
        self.length_counts += np.bincount(np.diff(bounds), minlength=len(self.length_counts))
        p = int(bounds[-1])
        self.bp_kept, self.bp_dropped = self.bp_kept + p, self.bp_dropped + (n - p if closed else 0)
        self.pending = b"" if closed else stretch[p:]
        return [stretch[a:b] for a, b in pairwise(bounds.tolist())]


class SplitWriter:
    """Appends segments to the split files, one per line: to the genome's split when it has one, else each
    to val with probability val_fraction (seeded: a random share of the genome, not its end), else train."""

    def __init__(self, files: dict, val_fraction: float, rng: np.random.Generator):
        self.files, self.val_fraction, self.draws = files, val_fraction, Draws(rng.random)
        self.segments, self.bp = dict.fromkeys(files, 0), dict.fromkeys(files, 0)

    def write(self, segments: list[bytes], split: str) -> None:
        if split or not segments:
            groups = {split: segments}
        else:  # one seeded draw per segment
            is_val = (self.draws.next(len(segments)) < self.val_fraction).tolist()
            groups = {"train": [s for s, v in zip(segments, is_val) if not v], "val": list(compress(segments, is_val))}
        for name, segs in groups.items():
            if segs:
                self.files[name].writelines([b"\n".join(segs), b"\n"])
                self.segments[name] += len(segs)
                self.bp[name] += sum(map(len, segs))


def segment_file(path: Path, genome: Genome, segmenter: Segmenter, writer: SplitWriter) -> dict:
    """Stream one FASTA file through the segmenter into the split files; return its entry in stats.json."""
    counts = Counter(dict.fromkeys(COUNTS, 0))  # in COUNTS order, for stats.json
    with tqdm(total=path.stat().st_size, desc=genome.name, unit="B", unit_scale=True, leave=False, disable=None) as bar:
        for record, seq, other in fasta_pieces(path, bar):
            if record:  # a new record (empty until its first piece of sequence): the open stretch ends here
                writer.write(segmenter.end_stretch(), genome.split)
                counts.update(records=1, empty_records=1)
                first_piece = True
                continue
            n_n = other.count(b"N") + other.count(b"n")
            counts.update(bp_read=len(seq), n_bp=n_n, other_bp=len(other) - n_n, empty_records=-first_piece)
            first_piece = False
            writer.write(segmenter.feed(seq.upper(), has_breaks=bool(other)), genome.split)
    writer.write(segmenter.end_stretch(), genome.split)
    return {"name": genome.name, "source": genome.source, "file": str(path), "split": genome.split or "train+val",
            **counts}


def make_stats(cfg, per_genome: list[dict], segmenter: Segmenter, writer: SplitWriter, seconds: float) -> dict:
    p, kept = cfg.preprocess, segmenter.bp_kept
    width = max(1, (p.max_len - p.min_len + 1) // 24)  # 24 bins, the last one takes the odd lengths
    edges = (list(range(p.min_len, p.max_len + 1, width))[:25][:-1] or [p.min_len]) + [p.max_len + 1]
    counts = [int(segmenter.length_counts[a:b].sum()) for a, b in zip(edges, edges[1:])]  # lengths in [a, b)
    stats = {
        **{k: sum(g[k] for g in per_genome) for k in COUNTS},
        "bp_kept": kept, "bp_dropped": segmenter.bp_dropped, "segments": writer.segments, "bp": writer.bp,
        "mean_length": kept / sum(writer.segments.values()), "length_histogram": {"bin_edges": edges, "counts": counts},
        "min_len": p.min_len, "max_len": p.max_len, "val_fraction": p.val_fraction, "seed": cfg.run.seed,
        "seconds": round(seconds, 2), "genomes": per_genome,
    }
    assert kept + stats["bp_dropped"] + stats["n_bp"] + stats["other_bp"] == stats["bp_read"], stats  # each base once
    return stats


def print_summary(stats: dict, out: Path) -> None:
    bp_read, seconds, splits = stats["bp_read"], max(stats["seconds"], 0.01), stats["segments"]
    print(f"{stats['records']:,} records ({stats['empty_records']:,} empty) in {len(stats['genomes']):,} file(s)")
    print(f"bp read {bp_read:>26,}  in {seconds:,.2f} s ({bp_read / 1e6 / seconds:,.0f} Mbp/s)")
    for label, key in [("N", "n_bp"), ("other non-ACGT", "other_bp"), ("kept in segments", "bp_kept"),
                       ("dropped (< min_len)", "bp_dropped")]:
        print(f"  {label:<20} {stats[key]:>13,}  {100 * stats[key] / max(1, bp_read):6.2f}%")
    print("segments " + ", ".join(f"{s} {n:,}" for s, n in splits.items())
          + f" (mean {stats['mean_length']:,.0f} bp, {stats['min_len']:,}-{stats['max_len']:,})")
    print(f"wrote {out}/ " + " ".join(f"{s}.txt" for s in splits) + " stats.json segment_lengths.png config.toml")


def main():
    cfg, _ = load_config()
    p = cfg.preprocess
    out = cfg.out_dir / "segments"
    seeds = np.random.SeedSequence(cfg.run.seed).spawn(3)  # independent streams: lengths, split, genome split
    genomes = list_genomes(p, seeds[2])
    # every file first (download, or make the demo genome), so a failed download cannot cost a parse
    paths = [local_file(g.source, g.md5, p.download_dir, cfg.out_dir) for g in genomes]
    segmenter = Segmenter(p.min_len, p.max_len, np.random.default_rng(seeds[0]))
    splits = ["train", "val"] + (["test"] if any(g.split == "test" for g in genomes) else [])
    t0 = time.perf_counter()
    with ExitStack() as stack:  # any error deletes the temp files: earlier outputs stay untouched
        files = {s: stack.enter_context(atomic_write(out / f"{s}.txt", "wb")) for s in splits}
        writer = SplitWriter(files, p.val_fraction, np.random.default_rng(seeds[1]))
        per_genome = [segment_file(path, genome, segmenter, writer) for genome, path in zip(genomes, paths)]
        if sum(writer.segments.values()) == 0:
            raise UserError(f"no segments: no A/C/G/T stretch of at least min_len={p.min_len:,} bp in "
                            f"{', '.join(map(str, paths))}")
    if "test" not in splits:
        (out / "test.txt").unlink(missing_ok=True)  # stale from an earlier manifest run
    stats = make_stats(cfg, per_genome, segmenter, writer, time.perf_counter() - t0)
    write_json(out / "stats.json", stats)
    plot_lengths(stats["length_histogram"]["bin_edges"], stats["length_histogram"]["counts"],
                 out / "segment_lengths.png")
    save_config(cfg, out)
    print_summary(stats, out)


if __name__ == "__main__":
    run_main(main)
