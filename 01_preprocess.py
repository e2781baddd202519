"""
Step 1: from genomes (FASTA files or URLs, or a manifest of many genomes) to training segments.

    python 01_preprocess.py                                # tinydnabert: GRCh38.p14 from NCBI (~1 GB download)
    python 01_preprocess.py --config configs/demo.toml     # a synthetic genome made here, offline, seconds
    python 01_preprocess.py --preprocess.sources='["my.fa.gz", "https://host/other.fna.gz"]' \\
        --preprocess.md5='["", "0123456789abcdef0123456789abcdef"]' --run.out_dir=out/mine
    python 01_preprocess.py --config configs/agront_1b.toml  # many genomes from a manifest, split by genome

Writes into <run.out_dir>/segments/: train.txt and val.txt (+ test.txt with a manifest split by genome),
one upper-case pure-ACGT segment per line; stats.json; segment_lengths.png; config.toml.

Sources (`preprocess.sources`): local paths or http(s) URLs, plain or gzip (bgzip = multi-member gzip
works too), or "demo". URLs are downloaded once into `preprocess.download_dir` (resumed, retried,
checked against `preprocess.md5[i]` or, when that is empty, against `md5checksums.txt` beside the URL as
NCBI publishes it; see common.download).

Manifest (`preprocess.manifest`, for the 1B/7B presets): a text file, one genome per line,
    name <TAB> url or path <TAB> md5 (optional)
blank lines and lines starting with '#' are skipped; relative paths are relative to the manifest. The
genomes are shuffled with the seed and split BY GENOME: round(test_genomes * n) go to test.txt,
round(val_genomes * n) to val.txt (at least one each when the fraction is > 0), the rest to train.txt.
With val_genomes = 0 the validation set is a val_fraction share of the train genomes' segments.
The presets name configs/genomes_plants.tsv and configs/genomes_multispecies.tsv: the project does not
ship these lists (the 48 plant / 796 species genomes of AgroNT / the NT multi-species set); write them.

Parsing (streaming, bounded memory: the decompressed file is read in fixed 4 MiB chunks, a record is
never held whole; peak memory does not grow with the genome):
- a line starting with '>' starts a record (header = the rest of the line, spaces allowed); a record with
  no sequence is counted as empty; whitespace anywhere in sequence lines (CRLF, blank lines, spaces) is
  ignored, so wrapped, unwrapped and very long lines all read the same;
- bases are upper-cased (soft-masked repeats count like any base);
- every character other than A, C, G, T ends the current stretch: N (counted as "N bp") and anything
  else, e.g. IUPAC R, Y, K, M (counted as "other non-ACGT bp"). A record boundary ends a stretch too.

Segmentation, the exact rule. Each stretch (maximal run of A/C/G/T within a record) is cut left to right.
At position p, with r bases of the stretch left:
    if r < min_len: the r bases are dropped (counted in "bp dropped") and the stretch is done;
    else: draw L uniformly from [min_len, max_len], BOTH ends included, and emit min(L, r) bases.
So every segment is pure ACGT with min_len <= length <= max_len, a stretch's last segment is its
remainder when that is at least min_len, and only remainders (or whole stretches) under min_len are
dropped (DESIGN.md §2: "remainders under 256 bp dropped"). One draw per emitted segment, from a numpy
generator seeded by run.seed, so the output depends only on the data and the seed, not on chunk sizes.

Split: each segment goes to val.txt with probability val_fraction (a second seeded stream), else to
train.txt: a random sample of the whole genome, not its last chromosomes.

Accounting (printed and in stats.json): bp read = bp kept + bp dropped + N bp + other non-ACGT bp.
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from itertools import compress
from pathlib import Path

import numpy as np
from tqdm import tqdm

from shelf.config import load_config, save_config
from shelf.demo_data import write_demo_genome
from shelf.errors import UserError, run_main
from shelf.fasta import fasta_pieces
from shelf.files import atomic_write, download, is_verified, write_json
from shelf.plots import plot_lengths


def main():
    cfg, _ = load_config()
    p = cfg.preprocess
    if not 1 <= p.min_len <= p.max_len:
        raise UserError(f"preprocess.min_len={p.min_len} and max_len={p.max_len}: need 1 <= min_len <= max_len", 2)
    if not 0.0 <= p.val_fraction < 1.0:
        raise UserError(f"preprocess.val_fraction={p.val_fraction}: need 0 <= val_fraction < 1", 2)
    out = cfg.out_dir / "segments"
    seeds = np.random.SeedSequence(cfg.run.seed).spawn(3)  # independent streams: lengths, split, genome split

    # ---- inputs: (name, source, md5, split) per genome; split "" = by segment into train/val
    genomes = manifest_genomes(p, seeds[2]) if p.manifest else source_genomes(p)

    # ---- get every file first (download, or make the demo genome), so a failure cannot cost a parse
    files = [resolve_source(src, md5, p.download_dir, cfg.out_dir) for _, src, md5, _ in genomes]

    # ---- stream every file through the parser and the segmenter into the split files
    segmenter = Segmenter(p.min_len, p.max_len, np.random.default_rng(seeds[0]))
    split_draws = Draws(np.random.default_rng(seeds[1]).random)  # one uniform draw per segment
    splits = ["train", "val"] + (["test"] if any(g[3] == "test" for g in genomes) else [])
    tally = {s: {"segments": 0, "bp": 0} for s in splits}
    totals = {"records": 0, "empty_records": 0, "bp_read": 0, "n_bp": 0, "other_bp": 0}
    per_genome = []
    t0 = time.perf_counter()
    with ExitStack() as stack:  # any error deletes the temp files: earlier outputs stay untouched
        writers = {s: stack.enter_context(atomic_write(out / f"{s}.txt", "wb")) for s in splits}
        for (name, src, _, split), path in zip(genomes, files):
            counts = dict.fromkeys(totals, 0)
            record_bp = 0
            with tqdm(total=path.stat().st_size, desc=name, unit="B", unit_scale=True, leave=False,
                      disable=None) as bar:
                for header, seq, non_acgt in fasta_pieces(path, bar):
                    if header is not None:  # a new record: the open stretch ends here
                        segments = segmenter.end_stretch()
                        if counts["records"] and record_bp == 0:  # the record before had no sequence
                            counts["empty_records"] += 1
                        counts["records"] += 1
                        record_bp = 0
                    else:
                        n_n = non_acgt.count(b"N")
                        counts["bp_read"] += len(seq)
                        counts["n_bp"] += n_n
                        counts["other_bp"] += len(non_acgt) - n_n
                        record_bp += len(seq)
                        segments = segmenter.feed(seq, has_breaks=bool(non_acgt))
                    write_segments(segments, split, p.val_fraction, split_draws, writers, tally)
            write_segments(segmenter.end_stretch(), split, p.val_fraction, split_draws, writers, tally)
            if record_bp == 0:  # the file's last record
                counts["empty_records"] += 1
            totals = {k: totals[k] + counts[k] for k in totals}
            per_genome.append({"name": name, "source": src, "file": str(path),
                               "split": split or "train+val", **counts})
        if sum(t["segments"] for t in tally.values()) == 0:
            raise UserError(f"no segments: no A/C/G/T stretch of at least min_len={p.min_len:,} bp in "
                            f"{', '.join(str(f) for f in files)}")
    if "test" not in splits:
        (out / "test.txt").unlink(missing_ok=True)  # stale from an earlier manifest run
    seconds = time.perf_counter() - t0

    # ---- stats, plot, config
    lengths = segmenter.length_counts  # lengths[k] = number of segments of k bp
    width = max(1, (p.max_len - p.min_len + 1) // 24)  # 24 bins, the last one takes the odd lengths
    edges = list(range(p.min_len, p.max_len + 1, width))[:25]
    edges = edges[:-1] + [p.max_len + 1] if len(edges) > 1 else [p.min_len, p.max_len + 1]
    n_segments = sum(t["segments"] for t in tally.values())
    stats = {
        **totals,
        "bp_kept": segmenter.bp_kept,
        "bp_dropped": segmenter.bp_dropped,  # stretches and remainders under min_len
        "segments": {s: tally[s]["segments"] for s in splits},
        "bp": {s: tally[s]["bp"] for s in splits},
        "mean_length": segmenter.bp_kept / n_segments,
        "length_histogram": {"bin_edges": edges,  # bin i counts lengths in [edges[i], edges[i+1])
                             "counts": [int(lengths[a:b].sum()) for a, b in zip(edges[:-1], edges[1:])]},
        "min_len": p.min_len, "max_len": p.max_len, "val_fraction": p.val_fraction, "seed": cfg.run.seed,
        "seconds": round(seconds, 2),
        "genomes": per_genome,
    }
    # every base read is accounted for exactly once
    assert stats["bp_kept"] + stats["bp_dropped"] + stats["n_bp"] + stats["other_bp"] == stats["bp_read"], stats
    write_json(out / "stats.json", stats)
    plot_lengths(edges, stats["length_histogram"]["counts"], out / "segment_lengths.png")
    save_config(cfg, out)

    read = max(1, totals["bp_read"])
    print(f"{totals['records']:,} records ({totals['empty_records']:,} empty) in {len(files):,} file(s)")
    print(f"bp read {totals['bp_read']:>26,}  in {seconds:,.2f} s ({totals['bp_read'] / 1e6 / seconds:,.0f} Mbp/s)")
    for label, value in [("N", totals["n_bp"]), ("other non-ACGT", totals["other_bp"]),
                         ("kept in segments", segmenter.bp_kept), ("dropped (< min_len)", segmenter.bp_dropped)]:
        print(f"  {label:<20} {value:>13,}  {100 * value / read:6.2f}%")
    print("segments " + ", ".join(f"{s} {tally[s]['segments']:,}" for s in splits)
          + f" (mean {stats['mean_length']:,.0f} bp, {p.min_len:,}-{p.max_len:,})")
    print(f"wrote {out}/ " + " ".join(f"{s}.txt" for s in splits) + " stats.json segment_lengths.png config.toml")


# -----------------------------------------------------------------------------
# inputs


def source_genomes(p) -> list[tuple[str, str, str, str]]:
    if not p.sources:
        raise UserError("preprocess.sources is empty and no preprocess.manifest is set: nothing to read", 2)
    if p.md5 and len(p.md5) != len(p.sources):
        raise UserError(f"preprocess.md5 has {len(p.md5)} entries for {len(p.sources)} sources: give one per "
                        "source (\"\" = look it up beside the URL) or none", 2)
    md5s = p.md5 or [""] * len(p.sources)
    return [(Path(src.rstrip("/")).name or src, src, md5, "") for src, md5 in zip(p.sources, md5s)]


def manifest_genomes(p, seed: np.random.SeedSequence) -> list[tuple[str, str, str, str]]:
    """Read the manifest (format in the module docstring) and split its genomes by genome, seeded."""
    if p.sources:
        raise UserError("preprocess.sources and preprocess.manifest are both set; pick one "
                        "(e.g. --preprocess.sources=[] to use the manifest)", 2)
    path = Path(p.manifest)
    if not path.is_file():
        raise UserError(f"{path}: manifest not found. Write it: one genome per line, "
                        "'name<TAB>url or path<TAB>md5 (optional)' (see 01_preprocess.py's docstring)")
    rows, names = [], set()
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) not in (2, 3) or not all(fields[:2]):
            raise UserError(f"{path}:{line_no}: expected 'name<TAB>url or path<TAB>md5 (optional)', got {line[:80]!r}")
        name, src, md5 = fields[0], fields[1], (fields[2] if len(fields) == 3 else "")
        if name in names:
            raise UserError(f"{path}:{line_no}: genome name {name!r} appears twice")
        names.add(name)
        if "://" not in src and src != "demo" and not Path(src).is_absolute():
            src = str(path.parent / src)
        rows.append((name, src, md5))
    n = len(rows)
    n_test = max(1, round(p.test_genomes * n)) if p.test_genomes > 0 else 0
    n_val = max(1, round(p.val_genomes * n)) if p.val_genomes > 0 else 0
    if n - n_test - n_val < 1:
        raise UserError(f"{path}: {n} genomes cannot give {n_test} test + {n_val} validation genomes and "
                        "still leave one to train on", 2)
    order = np.random.default_rng(seed).permutation(n)
    split_of = {int(i): ("test" if k < n_test else "val" if k < n_test + n_val else "") for k, i in enumerate(order)}
    return [(name, src, md5, split_of[i] or ("train" if n_val else "")) for i, (name, src, md5) in enumerate(rows)]


def resolve_source(src: str, md5: str, download_dir: str, run_dir: Path) -> Path:
    """A local FASTA path for a source: the file itself, a verified download, or the demo genome."""
    if src == "demo":
        return write_demo_genome(run_dir / "genome" / "demo.fa")
    if src.startswith(("http://", "https://")):
        dest = Path(download_dir) / src.rstrip("/").rsplit("/", 1)[-1]
        if md5 or is_verified(dest):
            return download(src, dest, md5=md5)
        md5 = checksum_beside(src)  # NCBI's md5checksums.txt, fetched only when a check is needed
        download(src, dest, md5=md5)
        if md5 is None:
            print(f"warning: no preprocess.md5 for {src} and none in md5checksums.txt beside it: "
                  "only the length was checked", file=sys.stderr)
        return dest
    if "://" in src:
        raise UserError(f"{src}: only http:// and https:// URLs can be downloaded (NCBI serves https too)")
    path = Path(src)
    if not path.is_file():
        raise UserError(f"{src}: no such file")
    return path


def checksum_beside(url: str) -> str | None:
    """NCBI publishes `md5checksums.txt` beside each assembly, lines `<md5>  ./<file name>`."""
    import urllib.error
    import urllib.request

    base, name = url.rstrip("/").rsplit("/", 1)
    md5_url = f"{base}/md5checksums.txt"
    try:
        with urllib.request.urlopen(md5_url, timeout=60) as r:
            text = r.read().decode("ascii", errors="replace")
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise UserError(f"{md5_url}: HTTP {e.code} {e.reason}")
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"{md5_url}: {getattr(e, 'reason', e)} (give the checksum in preprocess.md5 to skip this)")
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].removeprefix("./") == name:
            return fields[0]
    return None


# -----------------------------------------------------------------------------
# the streaming FASTA parser


# -----------------------------------------------------------------------------
# segmentation (the rule is in the module docstring)


class Draws:
    """Numbers from a seeded generator, drawn `batch` at a time (always the same batch size) and handed
    out in order: the sequence depends only on the seed, never on how the input happened to be chunked."""

    def __init__(self, draw, batch: int = 1 << 16):
        self.draw, self.batch, self.buf, self.i = draw, batch, draw(batch), 0

    def peek(self, n: int) -> np.ndarray:
        while len(self.buf) - self.i < n:
            self.buf, self.i = np.concatenate([self.buf[self.i:], self.draw(self.batch)]), 0
        return self.buf[self.i:self.i + n]

    def take(self, n: int) -> np.ndarray:
        out = self.peek(n)
        self.i += n
        return out


class Segmenter:
    """Cuts the stream of bases into segments; holds at most one unfinished segment (< max_len bases)."""

    def __init__(self, min_len: int, max_len: int, rng: np.random.Generator):
        self.min_len = min_len
        self.lengths = Draws(lambda n: rng.integers(min_len, max_len + 1, size=n))  # inclusive [min, max]
        self.pending = b""  # bases of the open stretch not yet emitted
        self.L = 0  # drawn length of the segment starting at pending[0]; 0 = not drawn (pending < min_len)
        self.bp_kept = self.bp_dropped = 0
        self.length_counts = np.zeros(max_len + 1, np.int64)  # [k] = segments of k bp

    def feed(self, seq: bytes, has_breaks: bool) -> list[bytes]:
        """Add a piece of one record's sequence (upper-case); return the segments completed so far."""
        buf = self.pending + seq if self.pending else seq
        if not has_breaks:  # the common case: the open stretch just gets longer
            return self._cut(buf, 0, len(buf), self.L, closed=False, out=[])
        # stretches = maximal A/C/G/T runs of buf, found with numpy: (run starts, run ends)
        a = np.frombuffer(buf, np.uint8)
        is_base = (a == 65) | (a == 67) | (a == 71) | (a == 84)
        bounds = np.concatenate(([0], np.flatnonzero(is_base[1:] != is_base[:-1]) + 1, [len(buf)]))
        starts, ends = bounds[:-1][is_base[bounds[:-1]]], bounds[1:][is_base[bounds[:-1]]]
        closed = ends < len(buf)  # a run touching the end of buf may go on in the next piece
        keep = ~closed | (ends - starts >= self.min_len)  # closed runs under min_len: dropped whole, no draw
        self.bp_dropped += int((ends - starts)[~keep].sum())
        L, out = self.L, []
        self.pending, self.L = b"", 0  # a break closes the open stretch (its bases are in buf)
        for s, e, c in zip(starts[keep].tolist(), ends[keep].tolist(), closed[keep].tolist()):
            self._cut(buf, s, e, L if s == 0 else 0, c, out)
        return out

    def end_stretch(self) -> list[bytes]:
        """A record ends: close the open stretch (keep its remainder if >= min_len, else drop it)."""
        return self._cut(self.pending, 0, len(self.pending), self.L, closed=True, out=[])

    def _cut(self, buf: bytes, p: int, e: int, L: int, closed: bool, out: list[bytes]) -> list[bytes]:
        """Cut the stretch buf[p:e] by the rule, entering with drawn length L (0 = none); append to out.

        Vectorised, with the same result as cutting one segment at a time: the next draws are laid end
        to end (cumsum), every segment that fits whole is cut, and only the draws used leave the stream."""
        held = 1 if L else 0  # the segment at p already has its length (drawn in an earlier piece)
        if held or e - p >= self.min_len:
            lens = self.lengths.peek((e - p) // self.min_len + 1)  # more lengths than can fit
            if held:
                lens = np.concatenate(([L], lens))
            cuts = p + np.cumsum(lens)
            m = int(np.searchsorted(cuts, e, side="right"))  # segments that fit whole
            if m:
                ends = cuts[:m].tolist()
                out.extend(buf[a:b] for a, b in zip([p] + ends[:-1], ends))
                self.length_counts += np.bincount(lens[:m], minlength=len(self.length_counts))
                self.bp_kept += ends[-1] - p
                p = ends[-1]
            L = int(lens[m]) if e - p >= self.min_len else 0  # the next segment's length, if one starts
            self.lengths.take(m + (1 if L else 0) - held)
        if closed:
            if L:  # min_len <= remainder < L: the stretch's last segment
                out.append(buf[p:e])
                self.length_counts[e - p] += 1
                self.bp_kept += e - p
            else:
                self.bp_dropped += e - p
            self.pending, self.L = b"", 0
        else:
            self.pending, self.L = buf[p:e], L
        return out


def write_segments(segments: list[bytes], split: str, val_fraction: float, draws: Draws,
                   writers: dict, tally: dict) -> None:
    """Append segments to their split's file, one per line: the genome's split, or a seeded val_fraction."""
    if not segments:
        return
    if split:
        groups = {split: segments}
    else:
        is_val = (draws.take(len(segments)) < val_fraction).tolist()  # one uniform draw per segment
        groups = {"train": list(compress(segments, [not v for v in is_val])), "val": list(compress(segments, is_val))}
    for name, segs in groups.items():
        if segs:
            writers[name].write(b"\n".join(segs))
            writers[name].write(b"\n")
            tally[name]["segments"] += len(segs)
            tally[name]["bp"] += sum(map(len, segs))


# -----------------------------------------------------------------------------
# the demo genome: small, synthetic, deterministic, with structure a model can learn


if __name__ == "__main__":
    run_main(main)
