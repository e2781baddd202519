"""
Tokenizer benchmark: BPE training time and peak memory at 31 and 310 Mbp of training input (the 1/10
GRCh38 sample is ~310 Mbp), and encoding throughput (Mbp/s) of each kind on 1 and 2 cores.

    python bench/bench_tokenizer.py                  # 31 and 310 Mbp (310 needs ~16 GiB free RAM; long)
    python bench/bench_tokenizer.py --timeout=600    # stop a training run after 10 min, keep its peak RSS
    python bench/bench_tokenizer.py --mbp=3,31       # smaller
    python bench/bench_tokenizer.py --mbp=1 --encode-mbp=2   # a smoke run in seconds

Input: real human DNA (../shared/data/genome, 2.3 Mbp of chr2) tiled to the size asked, cut at fresh
random points on every pass so no two segments repeat (a repeated segment would be counted once by
the trainer and understate its memory). Every measurement runs in its own child process (nice 19)
so ru_maxrss is that measurement's peak alone. Figures are ratios against baselines from the same
run: memory above the child's RSS after imports (and bytes per input bp), time against the smallest
size, 2-core encoding against 1 core. The machine is shared: the load average is printed with the
table. Writes bench/results/tokenizer.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GENOME = ROOT.parent / "shared" / "data" / "genome" / "hg38_chr2_1-2333275.fa.gz"

# Runs in the child: import 02, note RSS after imports, do one job, print a JSON line.
CHILD = r"""
import importlib.util, json, resource, sys, time
from pathlib import Path
spec = importlib.util.spec_from_file_location("t02", sys.argv[1] + "/02_train_tokenizer.py")
t02 = importlib.util.module_from_spec(spec); spec.loader.exec_module(t02)
def rss_now():  # current RSS in bytes (Linux)
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
base = rss_now()
job, seg_path = sys.argv[2], Path(sys.argv[3])
t0 = time.perf_counter()
if job == "train":
    tok, stats = t02.train_bpe(seg_path, 1024, 4, 1.0, 1337, 1024)
    out = {"bp": stats["sampled_bp"], "vocab": tok.get_vocab_size()}
else:
    tok = {"bpe": lambda: t02.Tokenizer.from_file(sys.argv[4]), "kmer": lambda: t02.kmer_tokenizer(6),
           "char": t02.char_tokenizer}[job]()
    enc = t02.batch_encoder(tok, job) if hasattr(t02, "batch_encoder") else tok  # older 02: the tokenizer itself
    s = t02.encode_split(enc, seg_path, seg_path.with_suffix(".bin"), 1024, None)
    out = {"bp": s["bp"], "tokens": s["tokens"]}
out["seconds"] = time.perf_counter() - t0
out["base_rss"] = base
out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT " + json.dumps(out))
"""


def real_dna_runs() -> list[str]:
    from shelf.fasta import read_fasta

    seq = "".join(r.sequence for r in read_fasta(GENOME)).upper()
    return re.findall("[ACGT]{256,}", seq)


def write_segments(path: Path, runs: list[str], target_bp: int, seed: int) -> int:
    """Tile the real runs, cutting 256–1024 bp segments at fresh random points each pass."""
    rng, total = random.Random(seed), 0
    with open(path, "w") as f:
        while total < target_bp:
            for run in runs:
                i = rng.randint(0, 1023)  # a new phase every pass: no segment repeats
                while len(run) - i >= 256 and total < target_bp:
                    n = rng.randint(256, 1024)
                    seg = run[i:i + n]
                    f.write(seg + "\n")
                    total += len(seg)
                    i += n
    return total


def first_to_die() -> None:
    """On a shared machine, if memory runs out, the kernel should kill this benchmark, not a colleague."""
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")


def vm_hwm(pid: int) -> int:
    """Peak RSS so far of a running process, in bytes (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))


def run_child(job: str, seg_path: Path, threads: int, extra: list[str] = (), timeout: float = 0) -> dict:
    """Run one measurement in a fresh process. With `timeout`, a run that goes over is stopped and
    reported with its peak RSS so far (BPE's peak comes early: all symbols are allocated before the
    first merge), so a long 310 Mbp run still yields its memory figure on a busy machine."""
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    cmd = ["nice", "-n", "19", sys.executable, "-c", CHILD, str(ROOT), job, str(seg_path), *extra]
    t0, hwm = time.perf_counter(), 0
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True, preexec_fn=first_to_die)
        while p.poll() is None:
            time.sleep(0.5)
            try:
                hwm = vm_hwm(p.pid)
            except (OSError, StopIteration):
                pass
            if timeout and time.perf_counter() - t0 > timeout:
                p.kill()
                p.wait()
                return {"timed_out": True, "seconds": time.perf_counter() - t0, "peak_rss": hwm, "base_rss": 0}
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    line = next((l for l in stdout.splitlines() if l.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        raise SystemExit(f"{job} child failed (exit {p.returncode}):\n{stderr[-2000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mbp", default="31,310", help="BPE training input sizes in Mbp, comma-separated")
    ap.add_argument("--encode-mbp", type=float, default=20.0, help="Mbp encoded per throughput measurement")
    ap.add_argument("--threads", type=int, default=2, help="cores for training and the parallel encode")
    ap.add_argument("--timeout", type=float, default=0, help="stop a training run after this many seconds and "
                    "report its peak RSS so far (0 = no limit)")
    args = ap.parse_args()
    sizes = [float(x) for x in args.mbp.split(",")]
    rows = []
    avail = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemAvailable")) / 2**20
    print(f"load average at start: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores; "
          f"{avail:.1f} GiB memory available")
    runs = real_dna_runs()
    with tempfile.TemporaryDirectory(prefix="bench_tok_") as tmp:
        tmp = Path(tmp)
        # 1. BPE training: time and peak RSS per input size
        base_time = None
        for mbp in sizes:
            seg = tmp / f"train_{mbp:g}.txt"
            bp = write_segments(seg, runs, int(mbp * 1e6), seed=int(mbp * 1000))
            load = os.getloadavg()[0]
            r = run_child("train", seg, args.threads, timeout=args.timeout)
            if r.get("timed_out"):  # bp: the whole file was read before the merges began
                rows.append({"measure": "bpe_train", "kind": "bpe", "input_mbp": round(bp / 1e6, 1),
                             "threads": args.threads, "seconds": f">{r['seconds']:.0f}", "mbp_per_s": "",
                             "peak_rss_gib": round(r["peak_rss"] / 2**30, 3), "rss_over_baseline_gib": "",
                             "bytes_per_bp": round(r["peak_rss"] / bp, 1), "ratio": "", "load_avg": round(load, 2)})
                print(rows[-1], "(stopped by --timeout)", flush=True)
                continue
            base_time = base_time or r["seconds"] / bp
            extra = r["peak_rss"] - r["base_rss"]
            rows.append({"measure": "bpe_train", "kind": "bpe", "input_mbp": round(bp / 1e6, 1),
                         "threads": args.threads, "seconds": round(r["seconds"], 2),
                         "mbp_per_s": round(bp / 1e6 / r["seconds"], 2),
                         "peak_rss_gib": round(r["peak_rss"] / 2**30, 3),
                         "rss_over_baseline_gib": round(extra / 2**30, 3),
                         "bytes_per_bp": round(extra / bp, 1),
                         "ratio": round(r["seconds"] / bp / base_time, 2),  # time per bp vs the smallest size
                         "load_avg": round(load, 2)})
            print(rows[-1], flush=True)
            if mbp != sizes[0]:
                seg.unlink()
        # 2. encoding throughput, 1 vs N cores, with the BPE tokenizer trained on the first size
        seg = tmp / "encode.txt"
        bp = write_segments(seg, runs, int(args.encode_mbp * 1e6), seed=99)
        # the BPE tokenizer to encode with: trained here on ~1 Mbp (vocab 1024, as tinydnabert)
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import load_script

        with open(seg) as f:
            sample = [next(f).strip() for _ in range(1500)]
        bpe_json = str(tmp / "encode_bpe.json")
        load_script("02_train_tokenizer.py").train_bpe_from_segments(sample, 1024, 4).save(bpe_json)
        for kind in ("bpe", "kmer", "char"):
            one = None
            for threads in (1, args.threads):
                load = os.getloadavg()[0]
                r = run_child(kind, seg, threads, [bpe_json])
                speed = r["bp"] / 1e6 / r["seconds"]
                one = one or speed
                rows.append({"measure": "encode", "kind": kind, "input_mbp": round(bp / 1e6, 1),
                             "threads": threads, "seconds": round(r["seconds"], 2), "mbp_per_s": round(speed, 2),
                             "peak_rss_gib": round(r["peak_rss"] / 2**30, 3),
                             "rss_over_baseline_gib": round((r["peak_rss"] - r["base_rss"]) / 2**30, 3),
                             "bytes_per_bp": "", "ratio": round(speed / one, 2),  # speed-up vs 1 core
                             "load_avg": round(load, 2)})
                print(rows[-1], flush=True)

    print(f"\nload average at end: {os.getloadavg()[0]:.2f}; other engineers share these cores, so read "
          f"ratios, not absolute figures")
    cols = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(str(r[c]).rjust(w) for c, w in zip(cols, widths)))
    print("ratio: bpe_train = seconds per bp relative to the smallest size (1.0 = linear); "
          "encode = speed-up over 1 thread")
    out = ROOT / "bench" / "results" / "tokenizer.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
