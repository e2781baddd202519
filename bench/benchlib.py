"""
Small helpers the bench scripts share: the row format, the machine description, GPU peak FLOP/s,
timing by interleaved rounds, and writing a CSV under bench/results/.

A row is a dict with the columns of ROW_FIELDS. `ratio` is ours / baseline for times (lower is
better) and `met` compares it with `target` ("<= 1.0", ">= 20", ...); a row that could not be
measured has ratio "" and says why in `note` ("not measured (no GPU)").
"""

import argparse
import csv
import functools
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # model.py, shelf/; conftest.py
import conftest  # noqa: E402
from shelf.files import atomic_write  # noqa: E402
from shelf.dry_run import gpu_spec  # noqa: E402

ROW_FIELDS = ("figure", "what", "baseline", "ours", "ratio", "target", "met", "note")


def two_sizes(doc: str, unit: str, large: float, small: float, what: str, extra: tuple) -> argparse.Namespace:
    """The command line of a peak-memory benchmark: a large size and a small one, the baseline its RSS is
    compared to (flat in size = streaming), and one more option `extra` = (flag, default, help)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument(f"--{unit}", type=float, default=large, help=f"size of the large {what}, {unit}")
    ap.add_argument(f"--small-{unit}", type=float, default=small, help=f"size of the small {what} (memory baseline)")
    flag, default, help_text = extra
    ap.add_argument(flag, type=type(default), default=default, help=help_text)
    return ap.parse_args()


def row(figure, what, baseline="", ours="", ratio=None, target="", note=""):
    """One table row; `met` is derived from ratio and target ("yes"/"no"/"" when unknown)."""
    r = "" if ratio is None else f"{ratio:.3f}"
    return dict(figure=str(figure), what=what, baseline=baseline, ours=ours, ratio=r, target=target,
                met=target_met(ratio, target), note=note)


def target_met(ratio, target):
    if ratio is None or not target:
        return ""
    op, _, value = target.partition(" ")
    try:
        value = float(value)
    except ValueError:
        return ""
    if op == "<=":
        return "yes" if ratio <= value else "no"
    if op == ">=":
        return "yes" if ratio >= value else "no"
    return ""


def load_str():
    """The 1/5/15-minute load averages: other people's work on a shared machine skews every time."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info():
    """What a reader needs to compare two tables: CPU, cores, torch, GPU."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "gpu": gpu, "python": platform.python_version()}


# tests/conftest.py's importer of numbered scripts (digit-leading names cannot be imported by name), e.g.
# 03_pretrain.py, to reuse its functions instead of writing them twice; cached: each loads once per process.
load_script = functools.cache(conftest.load_script)


def cuda_call(fn, *args, check=False, default=None):
    """torch.cuda.<fn>(*args): every torch.cuda call of a bench's GPU rows goes through here. check=True (the GPU
    rows' code on CPU, tiny: --check) still makes the call, so a test can mock it; without CUDA it gives `default`."""
    try:
        return getattr(torch.cuda, fn)(*args)
    except (AssertionError, RuntimeError):  # torch built without CUDA, or no GPU
        if not check:
            raise
        return default


def gpu_peak_tflops(override=0.0, check=False):
    """bf16 dense peak TFLOP/s of GPU 0 from shelf/dry_run.py's table (override > 0 wins); 0.0 when
    unknown, and MFU is then left out rather than guessed."""
    if override > 0:
        return override
    spec = gpu_spec(cuda_call("get_device_name", 0, check=check, default=""))
    return float(spec[0]) if spec else 0.0


def sync(device, check=False):
    if check or str(device).startswith("cuda"):
        cuda_call("synchronize", check=check)


def interleaved_times(steps, repeats, warmup, device="cpu", check=False):
    """Time each callable in `steps` (name -> fn) `repeats` times, interleaved round by round (the
    order rotating each round), after `warmup` untimed rounds. Interleaving makes load that other
    processes put on a shared machine fall on every contender alike.
    Returns name -> list of seconds, one per round (index r of every list = the same round)."""
    names = list(steps)
    for _ in range(warmup):
        for n in names:
            steps[n]()
    sync(device, check)
    times = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            sync(device, check)
            t0 = time.perf_counter()
            steps[n]()
            sync(device, check)
            times[n].append(time.perf_counter() - t0)
    return times


def paired_ratio(ours, base):
    """Median over rounds of ours/base, each ratio taken within one round (same load)."""
    return statistics.median(o / b for o, b in zip(ours, base))


def write_table(path, rows) -> None:
    """Rows (dicts with the same keys, in column order) -> a CSV at `path`, replaced atomically."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {path}")


def write_rows(name, rows, meta=None, path=None):
    """bench/results/<name>.csv (or `path`) with ROW_FIELDS (+ any extra keys), replaced atomically;
    `meta` goes first as "# key: value" comment lines. Returns the path."""
    fields = list(ROW_FIELDS) + sorted({k for r in rows for k in r} - set(ROW_FIELDS))
    path = Path(path) if path else RESULTS / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        if meta:  # comment lines before the header: date, machine, load
            for k, v in meta.items():
                f.write(f"# {k}: {v}\n")
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


def format_table(rows, fields=ROW_FIELDS):
    """A GitHub-markdown table (prints readably in a terminal too)."""
    fields = [f for f in fields if any(str(r.get(f, "")) for r in rows)]
    lines = ["| " + " | ".join(fields) + " |", "|" + "|".join("---" for _ in fields) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(f, "")).replace("|", "/") for f in fields) + " |")
    return "\n".join(lines)
