"""
Step 1: from genomes (FASTA files or URLs, or a manifest of many genomes) to training segments.

    python 01_preprocess.py                                # tinydnabert: GRCh38.p14 from NCBI (~1 GB download)
    python 01_preprocess.py --config configs/demo.toml     # a synthetic genome made here, offline, seconds
    python 01_preprocess.py --preprocess.sources='["my.fa.gz", "https://host/other.fna.gz"]' --run.out_dir=out/mine
    python 01_preprocess.py --config configs/dnafm_7b.toml --dry-run   # NT's genome list: sizes, disk, time
    python 01_preprocess.py --config configs/dnafm_7b.toml --preprocess.max_genomes=2  # a trial, 2 per split

Each genome (a path or URL, plain or gzip; "demo"; or a manifest's: list_genomes) is streamed; any
non-ACGT character (N, IUPAC codes) ends a stretch of bases, as a record's end does; stretches are cut
into seeded random lengths (the exact rule: Segmenter); each segment goes to val.txt with probability
val_fraction, else to train.txt (a manifest splits by genome instead). Writes <run.out_dir>/segments/:
train.txt, val.txt (+ test.txt), one upper-case ACGT segment a line; stats.json, segment_lengths.png, config.toml.

Sources are all fetched first, then written to temp files renamed into place at the end: a failed run
leaves earlier outputs untouched. A manifest (dnafm_7b: NT's ~850 genomes, 174 Gbp; see --dry-run) is
streamed genome by genome instead: download, verify, segment, append, at most keep_downloads downloads
on disk. Its split files are appended in place, segments/ledger.json naming each finished genome and
the files' sizes after it: temp files could only be renamed at the end of a days-long run, so a kill
would lose every genome done; instead a rerun cuts off a half-appended genome and goes on at the next,
output identical to an uninterrupted run. stats.json is written last: without it, a run is unfinished.
"""

import dataclasses
import json
import os
import sys
import time
from collections import Counter, deque
from contextlib import ExitStack
from itertools import compress, pairwise
from pathlib import Path

import numpy as np
from tqdm import tqdm

from shelf.config import load_config, save_config
from shelf.errors import UserError, run_main
from shelf.fasta import fasta_pieces
from shelf.files import NotFound, atomic_write, prepare_dir, write_json
from shelf.genomes import Genome, list_genomes, local_file, open_ledger, print_plan
from shelf.plots import plot_lengths

COUNTS = ("records", "empty_records", "bp_read", "n_bp", "other_bp", "bp_kept", "bp_dropped")  # per genome, summed


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
    counts, t0 = Counter(dict.fromkeys(COUNTS, 0)), time.perf_counter()  # in COUNTS order, for stats.json
    kept, dropped, segments, bp = segmenter.bp_kept, segmenter.bp_dropped, dict(writer.segments), dict(writer.bp)
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
    counts.update(bp_kept=segmenter.bp_kept - kept, bp_dropped=segmenter.bp_dropped - dropped)
    return {"name": genome.name, "source": genome.source, "file": str(path), "split": genome.split or "train+val",
            **counts, "segments": {s: n - segments[s] for s, n in writer.segments.items()},
            "bp": {s: n - bp[s] for s, n in writer.bp.items()}, "seconds": round(time.perf_counter() - t0, 3)}


def check_segments(per_genome: list[dict], min_len: int) -> None:
    if not any(sum(g["segments"].values()) for g in per_genome):
        raise UserError(f"no segments: no A/C/G/T stretch of at least min_len={min_len:,} bp in "
                        f"{', '.join(g['file'] for g in per_genome if g['file'])}")


def segment_sources(cfg, genomes: list[Genome], out: Path, seeds) -> tuple[list[dict], np.ndarray]:
    """Sources: every file first (a failed download cannot cost a parse), then one seeded stream through
    them all into temp files, renamed over train.txt and val.txt only when every file went through."""
    p = cfg.preprocess
    paths = [local_file(g.source, g.md5, p.download_dir, cfg.out_dir) for g in genomes]
    segmenter = Segmenter(p.min_len, p.max_len, np.random.default_rng(seeds[0]))
    with ExitStack() as stack:  # any error deletes the temp files: earlier outputs stay untouched
        files = {s: stack.enter_context(atomic_write(out / f"{s}.txt", "wb")) for s in ("train", "val")}
        writer = SplitWriter(files, p.val_fraction, np.random.default_rng(seeds[1]))
        per_genome = [segment_file(path, genome, segmenter, writer) for genome, path in zip(genomes, paths)]
        check_segments(per_genome, p.min_len)
    for stale in ("test.txt", "ledger.json"):  # from an earlier manifest run
        (out / stale).unlink(missing_ok=True)
    return per_genome, segmenter.length_counts


def add_genome(cfg, genome: Genome, files: dict) -> dict:
    """One genome of a manifest -> its stats.json entry, with its length counts and the split files' sizes
    after it (synced). Its random streams derive from (seed, its row): a resumed run cuts as a whole one.
    A genome the server no longer has (HTTP 404: NT's list predates withdrawals) is skipped and recorded."""
    p = cfg.preprocess
    try:
        path = local_file(genome.source, genome.md5, p.download_dir, cfg.out_dir)
    except NotFound as e:
        print(f"warning: {e}: skipped, recorded in stats.json", file=sys.stderr)
        zero = dict.fromkeys(files, 0)
        return {"name": genome.name, "source": genome.source, "file": "", "split": genome.split or "train+val",
                **dict.fromkeys(COUNTS, 0), "segments": zero, "bp": zero, "seconds": 0, "missing": str(e),
                "sizes": {s: f.tell() for s, f in files.items()}, "length_counts": 0}
    lengths_seed, split_seed = np.random.SeedSequence([cfg.run.seed, genome.index]).spawn(2)
    segmenter = Segmenter(p.min_len, p.max_len, np.random.default_rng(lengths_seed))
    entry = segment_file(path, genome, segmenter, SplitWriter(files, p.val_fraction, np.random.default_rng(split_seed)))
    for f in files.values():  # on disk before the ledger says so
        f.flush()
        os.fsync(f.fileno())
    return {**entry, "downloaded": "://" in genome.source,
            "sizes": {s: f.tell() for s, f in files.items()}, "length_counts": segmenter.length_counts}


def stream_genomes(cfg, genomes: list[Genome], out: Path, manifest_sha256: str) -> tuple[list[dict], np.ndarray]:
    """A manifest, genome by genome: download -> verify -> segment -> append -> ledger, resuming where a
    killed run stopped, with at most keep_downloads downloaded genomes on disk (the oldest go first)."""
    p = cfg.preprocess
    key = {**dataclasses.asdict(p), "download_dir": None, "keep_downloads": None, "seed": cfg.run.seed,
           "manifest_sha256": manifest_sha256}  # what the segments depend on
    splits = ["train", "val"] + (["test"] if any(g.split == "test" for g in genomes) else [])
    ledger = open_ledger(out, json.loads(json.dumps(key)), splits, p.max_len)
    done = ledger["genomes"]
    on_disk = deque(Path(e["file"]) for e in done if e.get("downloaded") and Path(e["file"]).is_file())
    with ExitStack() as stack, tqdm(total=len(genomes), initial=len(done), unit="genome", disable=None) as bar:
        files = {s: stack.enter_context(open(out / f"{s}.txt", "ab")) for s in splits}
        for genome in genomes[len(done):]:
            while "://" in genome.source and p.keep_downloads and len(on_disk) >= p.keep_downloads:
                old = on_disk.popleft()  # room for this one's download
                for f in (old, old.with_name(old.name + ".md5")):
                    f.unlink(missing_ok=True)
            entry = add_genome(cfg, genome, files)
            ledger["length_counts"] = (np.array(ledger["length_counts"]) + entry.pop("length_counts")).tolist()
            on_disk.extend([Path(entry["file"])] if entry.get("downloaded") else [])
            done.append(entry)
            write_json(out / "ledger.json", ledger)
            bar.update()
            bar.set_postfix_str(f"{sum(e['bp_read'] for e in done) / 1e9:,.2f} Gbp read")
    check_segments(done, p.min_len)
    return done, np.array(ledger["length_counts"])


def make_stats(cfg, per_genome: list[dict], length_counts: np.ndarray, manifest_sha256: str) -> dict:
    p = cfg.preprocess
    width = max(1, (p.max_len - p.min_len + 1) // 24)  # 24 bins, the last one takes the odd lengths
    edges = (list(range(p.min_len, p.max_len + 1, width))[:25][:-1] or [p.min_len]) + [p.max_len + 1]
    counts = [int(length_counts[a:b].sum()) for a, b in zip(edges, edges[1:])]  # lengths in [a, b)
    segments, bp = ({s: sum(g[key][s] for g in per_genome) for s in per_genome[0][key]} for key in ("segments", "bp"))
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
    bp_read, seconds, splits = stats["bp_read"], max(stats["seconds"], 0.01), stats["segments"]
    print(f"{stats['records']:,} records ({stats['empty_records']:,} empty) in {len(stats['genomes']):,} file(s)")
    if missing := [g["name"] for g in stats["genomes"] if "missing" in g]:
        print(f"{len(missing):,} genome(s) not on the server, skipped (see stats.json): {', '.join(missing[:5])}"
              + (", ..." if len(missing) > 5 else ""))
    print(f"bp read {bp_read:>26,}  in {seconds:,.2f} s ({bp_read / 1e6 / seconds:,.0f} Mbp/s)")
    for label, key in [("N", "n_bp"), ("other non-ACGT", "other_bp"), ("kept in segments", "bp_kept"),
                       ("dropped (< min_len)", "bp_dropped")]:
        print(f"  {label:<20} {stats[key]:>13,}  {100 * stats[key] / max(1, bp_read):6.2f}%")
    print("segments " + ", ".join(f"{s} {n:,}" for s, n in splits.items())
          + f" (mean {stats['mean_length']:,.0f} bp, {stats['min_len']:,}-{stats['max_len']:,})")
    print(f"wrote {out}/ " + " ".join(f"{s}.txt" for s in splits) + " stats.json segment_lengths.png config.toml")


def main():
    cfg, flags = load_config(flags=("--dry-run",))
    p, out = cfg.preprocess, cfg.out_dir / "segments"
    seeds = np.random.SeedSequence(cfg.run.seed).spawn(3)  # independent streams: lengths, split, genome split
    genomes, manifest_sha256 = list_genomes(p, seeds[2])
    if "--dry-run" in flags:
        return print_plan(cfg, genomes)
    prepare_dir(out)  # one line if a file is in the way; removes the temp files of a killed run
    if p.manifest:  # many genomes: one at a time, resumable
        per_genome, length_counts = stream_genomes(cfg, genomes, out, manifest_sha256)
    else:
        per_genome, length_counts = segment_sources(cfg, genomes, out, seeds)
    stats = make_stats(cfg, per_genome, length_counts, manifest_sha256)
    plot_lengths(stats["length_histogram"]["bin_edges"], stats["length_histogram"]["counts"],
                 out / "segment_lengths.png")
    save_config(cfg, out)
    write_json(out / "stats.json", stats)  # last: with a manifest, it marks the run finished
    print_summary(stats, out)


if __name__ == "__main__":
    run_main(main)
