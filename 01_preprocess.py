"""
Step 1: from genomes (FASTA files or URLs, or a manifest of many genomes) to training segments.

    python 01_preprocess.py                                # tinydnabert: GRCh38.p14 from NCBI (~1 GB download)
    python 01_preprocess.py --config configs/demo.toml     # a synthetic genome made here, offline, seconds
    python 01_preprocess.py --preprocess.sources='["my.fa.gz", "https://host/other.fna.gz"]' --run.out_dir=out/mine
    python 01_preprocess.py --config configs/dnafm_7b.toml --dry-run   # NT's genome list: sizes, disk, time
    python 01_preprocess.py --config configs/dnafm_7b.toml --preprocess.max_genomes=2  # a trial, 2 per split

Each genome (a path or URL, plain or gzip; "demo"; or a manifest's) is streamed; any non-ACGT character (N, IUPAC
codes) ends a stretch of bases, as a record's end does; stretches are cut into seeded random lengths (the exact rule:
Segmenter), from run.seed and the genome's place in the list; each segment goes to val.txt with probability
val_fraction, else to train.txt (a manifest splits by genome instead). Writes <run.out_dir>/segments/: train.txt,
val.txt (+ test.txt), one upper-case ACGT segment a line; segment_lengths.png, config.toml and, last, stats.json
(without it, a run is unfinished). Sources are written all or nothing; a manifest (dnafm_7b: NT's ~850 genomes,
174 Gbp) genome by genome, resumable after a kill (shelf.genomes.Corpus).
"""

import time
from collections import Counter
from itertools import compress, pairwise
from pathlib import Path

import numpy as np

from shelf.config import load_config, save_config
from shelf.errors import UserError, run_main
from shelf.fasta import fasta_pieces
from shelf.files import prepare_dir, write_json
from shelf.genomes import Corpus, Genome, list_genomes, print_plan
from shelf.plots import plot_lengths
from shelf.seeds import rng

COUNTS = ("records", "empty_records", "bp_read", "n_bp", "other_bp", "bp_kept", "bp_dropped")  # per genome, summed


class Draws:
    """Numbers drawn 65,536 at a time, handed out in order: they depend on the seed, never on chunking."""

    def __init__(self, draw):
        self.draw = draw
        self.buf = draw(1 << 16)

    def peek(self, n: int) -> np.ndarray:
        """The next n numbers, left to come next."""
        while len(self.buf) < n:
            self.buf = np.concatenate([self.buf, self.draw(1 << 16)])
        return self.buf[:n]

    def take(self, n: int) -> np.ndarray:
        out = self.peek(n)
        self.buf = self.buf[n:]
        return out


class Segmenter:
    """Cuts the stream of bases into segments, holding only the open stretch's uncut bases (< max_len).

    The rule: each stretch (maximal run of A/C/G/T within a record) is cut left to right. At each point,
    with r bases of the stretch left: if r < min_len, they are dropped (bp_dropped) and the stretch is
    done; else draw L uniformly from [min_len, max_len], both ends included, and emit min(L, r) bases.
    One draw per segment, from the genome's own stream: the output depends on the data and the seed, not on chunks.
    """

    def __init__(self, min_len: int, max_len: int, rng: np.random.Generator):
        self.min_len = min_len
        self.max_len = max_len
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
        self.pending = b""
        out = []
        for s, e in zip(starts[~short].tolist(), ends[~short].tolist()):
            out += self._cut(buf[s:e], closed=e < len(buf))  # a stretch touching the end of buf may go on
        return out

    def end_stretch(self) -> list[bytes]:
        """A record ends: close the open stretch."""
        return self._cut(self.pending, closed=True)

    def _cut(self, stretch: bytes, closed: bool) -> list[bytes]:
        """Cut segments off the front of a stretch by the rule. An open stretch is cut only while max_len
        bases are left (those cuts hold whatever follows); its rest waits in pending."""
        n = len(stretch)
        need = self.min_len if closed else self.max_len
        # vectorised: lay the next draws end to end (segment i starts at bounds[i]), keep the segments
        # that start with r >= need bases left, and take only the draws used from the stream
        bounds = np.concatenate(([0], np.cumsum(self.lengths.peek(n // self.min_len + 1))))
        bounds = np.minimum(bounds[:np.searchsorted(bounds, n - need, side="right") + 1], n)  # min(L, r)
        self.lengths.take(len(bounds) - 1)
        self.length_counts += np.bincount(np.diff(bounds), minlength=len(self.length_counts))
        p = int(bounds[-1])
        self.bp_kept += p
        self.bp_dropped += n - p if closed else 0
        self.pending = b"" if closed else stretch[p:]
        return [stretch[a:b] for a, b in pairwise(bounds.tolist())]


class SplitWriter:
    """Appends one genome's segments to the split files, one a line: to the genome's split when it has one,
    else each to val with probability val_fraction (seeded: a random share of the genome, not its end), else train."""

    def __init__(self, files: dict, split: str, val_fraction: float, rng: np.random.Generator):
        self.files = files
        self.split = split
        self.val_fraction = val_fraction
        self.draws = Draws(rng.random)
        self.segments = dict.fromkeys(files, 0)  # per split file
        self.bp = dict.fromkeys(files, 0)

    def write(self, segments: list[bytes]) -> None:
        if self.split or not segments:
            groups = {self.split: segments}
        else:  # one seeded draw per segment
            is_val = self.draws.take(len(segments)) < self.val_fraction
            groups = {"train": list(compress(segments, ~is_val)), "val": list(compress(segments, is_val))}
        for name, segs in groups.items():
            if segs:
                self.files[name].writelines([b"\n".join(segs), b"\n"])
                self.segments[name] += len(segs)
                self.bp[name] += sum(map(len, segs))


def segment_genome(genome: Genome, segmenter: Segmenter, writer: SplitWriter) -> dict:
    """Stream one genome's FASTA through the segmenter into the split files -> its entry in stats.json
    (a genome missing from the server: nothing read, and why)."""
    counts = Counter(dict.fromkeys(COUNTS, 0))  # in COUNTS order, for stats.json
    t0 = time.perf_counter()
    for record, seq, other in fasta_pieces(Path(genome.file), label=genome.name) if genome.file else ():
        if record:  # a new record (empty until its first piece of sequence): the open stretch ends here
            writer.write(segmenter.end_stretch())
            counts.update(records=1, empty_records=1)
            first_piece = True
            continue
        n_n = other.count(b"N") + other.count(b"n")
        counts.update(bp_read=len(seq), n_bp=n_n, other_bp=len(other) - n_n, empty_records=-first_piece)
        first_piece = False
        writer.write(segmenter.feed(seq.upper(), has_breaks=bool(other)))
    writer.write(segmenter.end_stretch())
    counts.update(bp_kept=segmenter.bp_kept, bp_dropped=segmenter.bp_dropped)
    return {"name": genome.name, "source": genome.source, "file": genome.file, "split": genome.split or "train+val",
            **counts, "segments": writer.segments, "bp": writer.bp, "seconds": round(time.perf_counter() - t0, 3),
            **({"missing": genome.missing} if genome.missing else {})}


def make_stats(cfg, per_genome: list[dict], length_counts: np.ndarray, manifest_sha256: str) -> dict:
    p = cfg.preprocess
    width = max(1, (p.max_len - p.min_len + 1) // 24)  # 24 bins, the last one takes the odd lengths
    edges = (list(range(p.min_len, p.max_len + 1, width))[:25][:-1] or [p.min_len]) + [p.max_len + 1]
    counts = [int(length_counts[a:b].sum()) for a, b in zip(edges, edges[1:])]  # lengths in [a, b)
    segments = {s: sum(g["segments"][s] for g in per_genome) for s in per_genome[0]["segments"]}
    bp = {s: sum(g["bp"][s] for g in per_genome) for s in segments}
    stats = {
        **{k: sum(g[k] for g in per_genome) for k in COUNTS}, "segments": segments, "bp": bp,
        "mean_length": sum(bp.values()) / sum(segments.values()),
        "length_histogram": {"bin_edges": edges, "counts": counts}, "min_len": p.min_len, "max_len": p.max_len,
        "val_fraction": p.val_fraction, "seed": cfg.run.seed,
        "seconds": round(sum(g["seconds"] for g in per_genome), 2),  # parsing; downloads not counted
        **({"manifest": p.manifest, "manifest_sha256": manifest_sha256,
            "genomes_missing": sum("missing" in g for g in per_genome)} if p.manifest else {}), "genomes": per_genome,
    }
    assert stats["bp_kept"] + stats["bp_dropped"] + stats["n_bp"] + stats["other_bp"] == stats["bp_read"], stats
    return stats


def print_summary(stats: dict, out: Path) -> None:
    bp_read, seconds = stats["bp_read"], max(stats["seconds"], 0.01)
    print(f"{stats['records']:,} records ({stats['empty_records']:,} empty) in {len(stats['genomes']):,} file(s)")
    if missing := [g["name"] for g in stats["genomes"] if "missing" in g]:
        print(f"{len(missing):,} genome(s) not on the server, skipped (see stats.json): {', '.join(missing[:5])}"
              + (", ..." if len(missing) > 5 else ""))
    print(f"bp read {bp_read:>26,}  in {seconds:,.2f} s ({bp_read / 1e6 / seconds:,.0f} Mbp/s)")
    for label, key in [("N", "n_bp"), ("other non-ACGT", "other_bp"), ("kept in segments", "bp_kept"),
                       ("dropped (< min_len)", "bp_dropped")]:
        print(f"  {label:<20} {stats[key]:>13,}  {100 * stats[key] / max(1, bp_read):6.2f}%")
    splits = stats["segments"]
    print("segments " + ", ".join(f"{s} {n:,}" for s, n in splits.items())
          + f" (mean {stats['mean_length']:,.0f} bp, {stats['min_len']:,}-{stats['max_len']:,})")
    print(f"wrote {out}/ " + " ".join(f"{s}.txt" for s in splits) + " stats.json segment_lengths.png config.toml")


def main():
    cfg, flags = load_config(flags=("--dry-run",), doc=__doc__, sections=("run", "preprocess"))
    p, out = cfg.preprocess, cfg.out_dir / "segments"
    genomes, manifest_sha256 = list_genomes(p, cfg.run.seed)
    if "--dry-run" in flags:
        return print_plan(cfg, genomes)
    prepare_dir(out)  # one line if a file is in the way; removes the temp files of a killed run
    with Corpus(cfg, genomes, manifest_sha256, out) as corpus:
        for genome in corpus.todo():  # fetched and checked; a manifest's one at a time, after those done
            segmenter = Segmenter(p.min_len, p.max_len, rng(cfg.run.seed, "segment lengths", genome.index))
            writer = SplitWriter(corpus.files, genome.split, p.val_fraction,
                                 rng(cfg.run.seed, "validation split", genome.index))
            corpus.add(segment_genome(genome, segmenter, writer), segmenter.length_counts)
        if not any(sum(g["segments"].values()) for g in corpus.entries):  # raised here: earlier outputs stay
            raise UserError(f"no segments: no A/C/G/T stretch of at least min_len={p.min_len:,} bp in "
                            f"{', '.join(g['file'] for g in corpus.entries if g['file'])}")
    stats = make_stats(cfg, corpus.entries, corpus.length_counts, manifest_sha256)
    plot_lengths(stats["length_histogram"]["bin_edges"], stats["length_histogram"]["counts"],
                 out / "segment_lengths.png")
    save_config(cfg, out)
    write_json(out / "stats.json", stats)  # last: with a manifest, it marks the run finished
    print_summary(stats, out)


if __name__ == "__main__":
    run_main(main)
