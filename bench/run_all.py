"""
Run every benchmark in bench/ one after the other and collect their figures into one table.

    python bench/run_all.py                  # quick sizes: a few minutes on 2 CPU cores
    python bench/run_all.py --full           # the issue's sizes (300 Mbp genome, 8 x 512 batch, ...): long
    python bench/run_all.py --only model,fsdp

Each bench script runs in its own process (so one that crashes or is missing costs one row, not the
run), writes its own CSV under bench/results/, and is turned here into rows of
    figure | what | baseline | ours | ratio | target | met | note
The table is printed with the date, the machine (CPU, cores, torch, GPU) and the load average, and
written to bench/results/summary.md and bench/results/summary.csv; each script's output goes to
bench/results/logs/<script>.log. GPU figures say "not measured (no GPU)" on a machine without one.
"""

import argparse
import csv
import datetime
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from benchlib import (RESULTS, ROOT, ROW_FIELDS, format_table, load_str, machine_info, row,  # noqa: E402
                      target_met, write_rows)


# -----------------------------------------------------------------------------
# each script's CSV -> summary rows. Scripts that write ROW_FIELDS columns (benchlib.write_rows) are
# taken as they are; the others get a small adapter, and any CSV an adapter cannot read is summarised
# generically (its ratio column, if any, and a pointer to the file), never dropped.

def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def standard_rows(figure, rows, path):
    if rows and all(k in rows[0] for k in ("figure", "what", "ratio", "target")):
        return [{k: r.get(k, "") for k in ROW_FIELDS} for r in rows]
    return generic_rows(figure, rows, path)


def generic_rows(figure, rows, path):
    out = []
    for r in rows:
        labels = [f"{k}={v}" for k, v in r.items() if v and num(v) is None and k != "ratio"]
        out.append(row(figure, f"{path.stem}: " + (", ".join(labels) or "row"), ratio=num(r.get("ratio")),
                       note=f"see bench/results/{path.name}"))
    return out


def preprocess_rows(figure, rows, path):
    """bench_preprocess.py: one row per genome size (small first)."""
    small, big = rows[0], rows[-1]
    gz, pp = num(big["gzip_dc_s"]), num(big["preprocess_s"])
    parse = num(big["preprocess_parse_s"])
    out = [row(figure, f"01_preprocess {big['mbp']} Mbp gzip FASTA, time / gzip -dc (whole command)",
               f"{gz:,.2f} s", f"{pp:,.2f} s", pp / gz, "<= 2.0",
               f"includes start-up {big.get('startup_s', '?')} s (imports): dominates small inputs"),
           row(figure, f"01_preprocess {big['mbp']} Mbp gzip FASTA, time / gzip -dc (streaming parse alone)",
               f"{gz:,.2f} s", f"{parse:,.2f} s", parse / gz, "<= 2.0", "as 01 times itself (stats.json)")]
    rss_s, rss_b = num(small["peak_rss_mib"]), num(big["peak_rss_mib"])
    out.append(row(figure, f"01_preprocess peak RSS, {big['mbp']} Mbp / {small['mbp']} Mbp", f"{rss_s:,.0f} MiB",
                   f"{rss_b:,.0f} MiB", rss_b / rss_s, "<= 1.2"))
    return out


def tokenizer_rows(figure, rows, path):
    """bench_tokenizer.py: bpe_train rows per size (ratio = time per bp vs the smallest size) and encode
    rows per kind and thread count (ratio = speed-up over 1 thread). The issue sets no targets here."""
    out = []
    train = [r for r in rows if r["measure"] == "bpe_train"]
    for r in train:
        out.append(row(figure, f"BPE training {r['input_mbp']} Mbp: peak RSS {num(r['peak_rss_gib']):.2f} GiB, "
                               f"time per bp vs smallest size", ours=f"{num(r['seconds']):,.1f} s",
                       ratio=num(r["ratio"])))
    if len(train) > 1:
        a, b = num(train[0]["peak_rss_gib"]), num(train[-1]["peak_rss_gib"])
        out.append(row(figure, f"BPE training peak RSS, {train[-1]['input_mbp']} / {train[0]['input_mbp']} Mbp",
                       f"{a:.2f} GiB", f"{b:.2f} GiB", b / a))
    for r in rows:
        if r["measure"] == "encode":
            out.append(row(figure, f"encode {r['kind']} {r['input_mbp']} Mbp, {r['threads']} threads, "
                                   f"speed-up over 1 thread", ours=f"{num(r['mbp_per_s']):,.2f} Mbp/s",
                           ratio=num(r["ratio"])))
    return out


@dataclass
class Bench:
    figure: str
    script: str  # in bench/
    csv: str  # what it writes in bench/results/
    quick: list[str] = field(default_factory=list)
    full: list[str] = field(default_factory=list)
    adapt: Callable = standard_rows
    gpu_only: bool = False  # run only when CUDA is available (its CPU rows come from another entry)


BENCHES = [
    Bench("1", "bench_model.py", "bench_model.csv", ["--batch", "2", "--seq-len", "128", "--repeats", "3"]),
    Bench("1", "bench_model.py", "bench_model_cuda.csv", ["--device", "cuda", "--repeats", "5"],  # 8 x 512: cheap on a GPU
          ["--device", "cuda", "--out", str(RESULTS / "bench_model_cuda.csv")], gpu_only=True),
    Bench("2", "bench_preprocess.py", "preprocess.csv", ["--mbp", "20", "--small-mbp", "2", "--repeats", "1"],
          adapt=preprocess_rows),
    Bench("3", "bench_tokenizer.py", "tokenizer.csv", ["--mbp=1,3", "--encode-mbp=2"], adapt=tokenizer_rows),
    Bench("4", "bench_pretrain.py", "pretrain.csv", ["--quick"]),
    Bench("4", "bench_pretrain.py", "pretrain_cuda.csv", ["--device", "cuda", "--repeats", "3"],
          ["--device", "cuda", "--out", str(RESULTS / "pretrain_cuda.csv")], gpu_only=True),
    Bench("5", "bench_fsdp.py", "bench_fsdp.csv", ["--layers", "2", "--batch", "1", "--steps", "5"]),
    Bench("6", "bench_genome_list.py", "genome_list.csv", ["--gbp", "0.02", "--small-gbp", "0.005", "--genome-mbp", "2"]),
]
for b in BENCHES:  # the cuda entries write their own files, in quick mode too
    if b.gpu_only:
        b.quick += ["--out", str(RESULTS / b.csv)]


def supported(args, script):
    """Drop flags the script's --help does not mention (a script still being written may lack --quick)."""
    try:
        help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                                   timeout=120, cwd=ROOT).stdout
    except subprocess.TimeoutExpired:
        return args
    kept, i = [], 0
    while i < len(args):
        flag = args[i].split("=")[0]
        takes_value = "=" not in args[i] and i + 1 < len(args) and not args[i + 1].startswith("--")
        if flag in help_text:
            kept += args[i:i + 1 + takes_value]
        i += 1 + takes_value
    return kept


def run_bench(b, full, timeout, log_dir):
    """Run one script; return its summary rows (or one row saying why there are none)."""
    script = BENCH / b.script
    if not script.exists():
        return [row(b.figure, b.script, note=f"missing: bench/{b.script} does not exist yet")]
    args = supported(b.full if full else b.quick, script)
    out_csv = RESULTS / b.csv
    start = time.time()
    log = log_dir / f"{Path(b.csv).stem}.log"
    print(f"\n=== figure {b.figure}: python bench/{b.script} {' '.join(args)}  (load {load_str()})", flush=True)
    try:
        with open(log, "w") as f:
            proc = subprocess.run([sys.executable, str(script), *args], cwd=ROOT, stdout=f,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        return [row(b.figure, b.script, note=f"failed: timed out after {timeout:,.0f} s (log {log.name})")]
    tail = log.read_text().strip().splitlines()[-3:]
    print("\n".join(tail))
    if rc != 0:
        last = tail[-1] if tail else ""
        return [row(b.figure, b.script, note=f"failed (exit {rc}): {last[:200]} (log {log.name})")]
    if not out_csv.exists() or out_csv.stat().st_mtime < start:
        return [row(b.figure, b.script, note=f"failed: exited 0 but wrote no {out_csv.name} (log {log.name})")]
    rows = read_csv(out_csv)
    if not rows:
        return [row(b.figure, b.script, note=f"failed: {out_csv.name} has no rows")]
    try:
        return b.adapt(b.figure, rows, out_csv)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:  # a CSV whose columns changed
        print(f"warning: could not read {out_csv.name} with its adapter ({e!r}); summarising it generically")
        return generic_rows(b.figure, rows, out_csv)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="the issue's sizes (long; mind the shared machine)")
    p.add_argument("--only", default="", help="comma-separated script names, e.g. model,fsdp")
    p.add_argument("--timeout", type=float, default=None, help="seconds per script (default 1800 quick, none full)")
    args = p.parse_args(argv)
    timeout = args.timeout or (None if args.full else 1800)
    only = {s.strip().removeprefix("bench_").removesuffix(".py") for s in args.only.split(",") if s.strip()}
    cuda = torch.cuda.is_available()

    log_dir = RESULTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    machine = machine_info()
    load_start = load_str()
    rows = []
    for b in BENCHES:
        if only and b.script.removeprefix("bench_").removesuffix(".py") not in only:
            continue
        if b.gpu_only and not cuda:
            continue
        rows += run_bench(b, args.full, timeout, log_dir)
    for r in rows:  # recompute met from ratio and target (adapters and scripts agree by construction)
        r["met"] = target_met(num(r.get("ratio")), r.get("target", "")) or r.get("met", "")

    load_end = load_str()
    gpu = machine["gpu"] if cuda else "none (GPU rows: not measured)"
    header = (f"date: {date}  \nmachine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
              f"GPU {gpu}  \nload average (1/5/15 min): {load_start} at start, {load_end} at end  \n"
              f"mode: {'full (issue sizes)' if args.full else 'quick (small sizes; --full for the issue sizes)'}  \n"
              f"ratio = ours / baseline measured in the same run (times: lower is better)")
    table = format_table(rows)
    print(f"\n{header}\n\n{table}")
    from shelf.files import atomic_write

    with atomic_write(RESULTS / "summary.md") as f:
        f.write(f"# Benchmarks\n\n{header}\n\n{table}\n")
    write_rows("summary", rows, {"date": date, "machine": machine, "load": f"{load_start} | {load_end}",
                                 "mode": "full" if args.full else "quick"}, RESULTS / "summary.csv")
    print(f"\nwrote {RESULTS / 'summary.md'} and {RESULTS / 'summary.csv'}")
    return rows


if __name__ == "__main__":
    main()
