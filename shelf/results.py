"""04's tables: results.csv (one row per run) and results.md (per task, beside the published figures)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from shelf.config import PROJECT_ROOT
from shelf.distributed import print0
from shelf.files import atomic_write
from shelf.plots import plot_mcc

REFERENCE_CSV = PROJECT_ROOT / "configs" / "reference_mcc.csv"  # published MCC: NT SOTA, TinyDNABERT


def read_commented_csv(path: Path) -> list[dict]:
    """A CSV whose leading '#' lines are comments (the citation of the figures in it)."""
    with open(path) as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def mean_sd(xs: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof 1; None with a single run)."""
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None)


def write_results(out: Path, rows: list[dict], tasks: list[str], infos: dict, inits: list[str]) -> None:
    # results.csv: one row per run, in plan order (task, init, seed): a rerun rewrites the same file
    cols = ["task", "init", "seed", "best_step", "val_mcc", "test_mcc", "test_accuracy", "test_f1", "n_test"]
    lines = [",".join(cols)]
    for r in rows:
        lines.append(",".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    with atomic_write(out / "results.csv") as f:
        f.write("\n".join(lines) + "\n")

    ref = {r["task"]: r for r in read_commented_csv(REFERENCE_CSV)}
    ours = {(t, i): mean_sd([r["test_mcc"] for r in rows if r["task"] == t and r["init"] == i])
            for t in tasks for i in inits}

    def fmt(ms):
        if ms is None:
            return "–"
        m, sd = ms
        return f"{m:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")

    def fref(t, col):
        return f"{float(ref[t][col]):.3f}" if t in ref else "–"

    n_seeds = len({r["seed"] for r in rows})
    md = ["# NT benchmark: test MCC",
          "",
          f"Ours: mean ± s.d. over {n_seeds} seed(s) (each seed: its own stratified validation split, head init and "
          "batch order; the best validation-MCC weights score the whole test split). TinyDNABERT: one run per task "
          "(ForestsKing/TinyDNABERT). NT SOTA: best model per task in Dalla-Torre et al., Nature Methods 2024. "
          "Published figures: configs/reference_mcc.csv.",
          "",
          "| task | ours scratch | ours pretrained | TinyDNABERT scratch | TinyDNABERT | NT SOTA |",
          "|---|---|---|---|---|---|"]
    for t in tasks:
        md.append(f"| {infos[t].display} | {fmt(ours.get((t, 'scratch')))} | {fmt(ours.get((t, 'pretrained')))} | "
                  f"{fref(t, 'tinydnabert_scratch')} | {fref(t, 'tinydnabert')} | {fref(t, 'nt_sota')} |")

    def col_mean(vals):
        vals = [v for v in vals if v is not None]
        return sum(vals) / len(vals) if vals else None

    mean = {i: col_mean([ours[(t, i)][0] for t in tasks if (t, i) in ours]) for i in inits}
    ref_tasks = [t for t in tasks if t in ref]
    rmean = {c: col_mean([float(ref[t][c]) for t in ref_tasks]) for c in ("tinydnabert_scratch", "tinydnabert", "nt_sota")}

    def f3(x):
        return "–" if x is None else f"{x:.3f}"

    md.append(f"| **mean** | {f3(mean.get('scratch'))} | {f3(mean.get('pretrained'))} | {f3(rmean['tinydnabert_scratch'])} "
              f"| {f3(rmean['tinydnabert'])} | {f3(rmean['nt_sota'])} |")

    # the two headline ratios TinyDNABERT reports, for ours and theirs over the same tasks
    def ratio(a, b):
        return None if a is None or b is None or b == 0 else a / b

    def pct(x, signed=False):
        return "–" if x is None else (f"{100 * x:+.1f}%" if signed else f"{100 * x:.1f}%")

    ours_ref = {i: col_mean([ours[(t, i)][0] for t in ref_tasks if (t, i) in ours]) for i in inits}
    g_ours = ratio(ours_ref.get("pretrained"), ours_ref.get("scratch"))
    g_tdb = ratio(rmean["tinydnabert"], rmean["tinydnabert_scratch"])
    md += ["",
           f"Headline ratios over the {len(ref_tasks)} task(s) with published figures"
           + ("" if ref_tasks else " (none of the tasks run has published figures)") + ":",
           "",
           "| | gain of pretraining over scratch | share of NT SOTA |",
           "|---|---|---|",
           f"| ours | {pct(None if g_ours is None else g_ours - 1, True)} | {pct(ratio(ours_ref.get('pretrained'), rmean['nt_sota']))} |",
           f"| TinyDNABERT | {pct(None if g_tdb is None else g_tdb - 1, True)} | {pct(ratio(rmean['tinydnabert'], rmean['nt_sota']))} |",
           ""]
    with atomic_write(out / "results.md") as f:
        f.write("\n".join(md))
    print0("\n".join(md[4:]))
    plot_mcc(out / "mcc.png", tasks, infos, inits, ours, ref)
    print0(f"wrote {out / 'results.csv'}, {out / 'results.md'}, {out / 'mcc.png'}")
