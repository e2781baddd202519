"""
Benchmark of 01_preprocess.py: speed against `gzip -dc FILE > /dev/null` on the same file (the floor
any streaming parser of a gzip FASTA sits on), and peak memory at two genome sizes (must stay flat).

    python bench/bench_preprocess.py                 # 30 and 300 Mbp (~1.5 GB of temp space, ~1 minute)
    python bench/bench_preprocess.py --mbp 20 --small-mbp 2 --repeats 1   # a quick look

Each genome is synthetic but shaped like an assembly: 60-column lines, a record per 50 Mbp, ~50%
soft-masked (lower-case) stretches, N runs, compressed with `gzip -1`. Timings are wall-clock seconds,
best of --repeats, taken alternately, so the ratio compares like with like on a shared machine. "01 s"
is the whole command (its fixed start-up, mostly importing torch through model.py, included); "01
parse s" is its streaming loop alone, as 01 itself reports it in stats.json ("seconds").
Prints a table and writes bench/results/preprocess.csv.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchlib import two_sizes, write_table
from shelf.seeds import rng

ROOT = Path(__file__).resolve().parents[1]


def make_genome(path: Path, mbp: float, seed: int = 0) -> int:
    """Write a gzip FASTA of about `mbp` million bases; return the number of bases."""
    draw = rng(seed, "bench genome")
    block = np.frombuffer(b"ACGT", np.uint8)[draw.integers(0, 4, 6_000_000)]  # 6 Mbp, tiled below
    for start in draw.integers(0, len(block) - 3000, 1200):  # soft-masked repeats, ~50% of bases
        block[start:start + int(draw.integers(300, 5000))] |= 0x20
    block[1_000_000:1_020_000] = ord("N")  # one 20 kb gap per 6 Mbp
    total = int(mbp * 1e6) // 60 * 60
    with subprocess.Popen(["gzip", "-1"], stdin=subprocess.PIPE, stdout=open(path, "wb")) as gz:
        written, record = 0, 0
        while written < total:
            record += 1
            gz.stdin.write(f">chr{record} synthetic benchmark record\n".encode())
            size = min(50_000_020, total - written) // 60 * 60
            done = 0
            while done < size:
                n = min(len(block), size - done) // 60 * 60
                lines = np.empty((n // 60, 61), np.uint8)  # 60 bases + newline per row
                lines[:, :60] = block[:n].reshape(-1, 60)
                lines[:, 60] = ord("\n")
                gz.stdin.write(lines.tobytes())
                done += n
            written += size
    return written


def timed(cmd: list[str]) -> tuple[float, float, float]:
    """Run cmd (stdout discarded); return (wall s, CPU s = user + system, peak RSS MiB) of that one child.
    CPU seconds are the steadier figure on a machine shared with other jobs."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode()}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main():
    args = two_sizes(__doc__, "mbp", 300.0, 30.0, "genome", ("--repeats", 2, "timings per size; the best is kept"))

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_preprocess_") as tmp:
        tmp = Path(tmp)
        # startup alone (imports: shelf/config.py pulls in torch through model.py): 01 on a one-record file
        tiny = tmp / "tiny.fa"
        tiny.write_text(">t\n" + "ACGT" * 300 + "\n")
        startup, startup_cpu, startup_rss = timed([sys.executable, "01_preprocess.py",
                                                   f"--preprocess.sources=['{tiny}']", f"--run.out_dir={tmp / 'tiny'}"])
        for mbp in (args.small_mbp, args.mbp):
            fa = tmp / f"genome_{mbp:g}mbp.fa.gz"
            t0 = time.perf_counter()
            bases = make_genome(fa, mbp)
            print(f"made {fa.name}: {bases:,} bp, {fa.stat().st_size / 2**20:,.0f} MiB gzip "
                  f"in {time.perf_counter() - t0:.0f} s", flush=True)
            gz, pp, rss = [], [], 0.0
            for _ in range(args.repeats):  # alternate, so both see the same machine
                gz.append(timed(["gzip", "-dc", str(fa)])[:2])
                wall, cpu, peak = timed([sys.executable, "01_preprocess.py", f"--preprocess.sources=['{fa}']",
                                         f"--run.out_dir={tmp / 'run'}"])
                parse = json.loads((tmp / "run" / "segments" / "stats.json").read_text())["seconds"]
                pp.append((wall, parse, cpu))
                rss = max(rss, peak)
            (gz_wall, gz_cpu), (pp_wall, pp_parse, pp_cpu) = min(gz), min(pp)
            rows.append({"mbp": mbp, "bases": bases, "gzip_mib": round(fa.stat().st_size / 2**20, 1),
                         "gzip_dc_s": round(gz_wall, 2), "preprocess_s": round(pp_wall, 2),
                         "preprocess_parse_s": pp_parse,  # the streaming loop alone, timed by 01 itself
                         "ratio": round(pp_wall / gz_wall, 2), "ratio_parse": round(pp_parse / gz_wall, 2),
                         "gzip_dc_cpu_s": round(gz_cpu, 2), "preprocess_cpu_s": round(pp_cpu, 2),
                         "peak_rss_mib": round(rss, 1), "startup_s": round(startup, 2),
                         "startup_cpu_s": round(startup_cpu, 2), "startup_rss_mib": round(startup_rss, 1),
                         "load_avg_1m": round(os.getloadavg()[0], 2)})
            fa.unlink()

    print(f"\n{'Mbp':>6} {'gzip MiB':>9} {'gzip -dc s':>11} {'01 s':>7} {'01 parse s':>11} {'ratio':>6} "
          f"{'parse ratio':>12} {'gzip CPU s':>11} {'01 CPU s':>9} {'peak RSS MiB':>13} {'load':>5}")
    for r in rows:
        print(f"{r['mbp']:>6g} {r['gzip_mib']:>9,.0f} {r['gzip_dc_s']:>11.2f} {r['preprocess_s']:>7.2f} "
              f"{r['preprocess_parse_s']:>11.2f} {r['ratio']:>6.2f} {r['ratio_parse']:>12.2f} "
              f"{r['gzip_dc_cpu_s']:>11.2f} {r['preprocess_cpu_s']:>9.2f} {r['peak_rss_mib']:>13,.0f} "
              f"{r['load_avg_1m']:>5.1f}")
    print(f"startup alone (python, imports and a tiny file): {startup:.2f} s wall, "
          f"{startup_cpu:.2f} s CPU, {startup_rss:,.0f} MiB")
    print(f"peak RSS {rows[-1]['mbp']:g} Mbp / {rows[0]['mbp']:g} Mbp: {rows[-1]['peak_rss_mib'] / rows[0]['peak_rss_mib']:.2f}x "
          f"(target <= 1.2x); time vs gzip -dc at {rows[-1]['mbp']:g} Mbp: {rows[-1]['ratio']:.2f}x in all, "
          f"{rows[-1]['ratio_parse']:.2f}x for the streaming parse (target <= 2x)")
    write_table(ROOT / "bench" / "results" / "preprocess.csv", rows)


if __name__ == "__main__":
    main()
