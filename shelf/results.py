"""04's outputs from the runs' metrics: results.csv (one row per run), results.md (test MCC per task: with all
training labels beside the published figures, then per label budget) and the plots."""

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path

from shelf.config import PROJECT_ROOT
from shelf.distributed import print0
from shelf.files import atomic_write
from shelf.plots import plot_mcc, plot_mcc_vs_labels

REFERENCE_CSV = PROJECT_ROOT / "configs" / "reference_mcc.csv"  # published MCC: NT SOTA, TinyDNABERT
CSV_COLUMNS = ["task", "init", "train_size", "n_train", "seed", "best_step", "val_mcc", "test_mcc", "probe_test_mcc",
               "kmer_test_mcc", "test_accuracy", "test_f1", "n_test"]
TITLES = {"demo": "Synthetic demo tasks", "local": "Local tasks", "revised": "NT benchmark (revised)",
          "original": "NT benchmark (original)"}
# the tables' columns: ours per init, fine-tuned and probed (the scratch init's probe reads a random encoder), the
# k-mer baseline, then the published figures (REFERENCE_CSV's columns)
FINETUNED = {"scratch": "fine-tuned scratch", "pretrained": "fine-tuned pretrained"}
PROBED = {"scratch": "probe: random encoder", "pretrained": "probe: pretrained"}
PUBLISHED = {"tinydnabert_scratch": "TinyDNABERT scratch", "tinydnabert": "TinyDNABERT", "nt_sota": "NT SOTA"}


def our_columns(rows: list[dict], k: int) -> dict[str, tuple[str, str]]:
    """-> header -> (column of results.csv, init): fine-tuned, then probed, per init (ours, then each hf: init run,
    named hf:<name>@<short commit>); then the k-mer baseline, from the first init's runs (every init's are the same)."""
    finetuned, probed = dict(FINETUNED), dict(PROBED)
    for init in dict.fromkeys(r["init"] for r in rows if r["init"].startswith("hf:")):
        repo, _, commit = init.rpartition("@")
        name = f"hf:{repo.rsplit('/', 1)[-1]}@{commit[:7]}"
        finetuned[init], probed[init] = f"fine-tuned {name}", f"probe: {name}"
    return ({h: ("test_mcc", i) for i, h in finetuned.items()} | {h: ("probe_test_mcc", i) for i, h in probed.items()}
            | {f"{k}-mer counts": ("kmer_test_mcc", rows[0]["init"])})


def read_commented_csv(path: Path) -> list[dict]:
    """A CSV whose leading '#' lines are comments (the citation of the figures in it)."""
    with open(path) as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def mean_sd(xs) -> tuple[float, float | None] | None:
    """(mean, sample s.d. or None for one value) of the xs that are not None (init not run, probe off), or None."""
    xs = [x for x in xs if x is not None]
    return (statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None) if xs else None


def fmt(ms) -> str:
    """(mean, s.d.) -> '0.620 ± 0.020'; a single number -> '0.620'; None -> '–'."""
    m, sd = ms if isinstance(ms, tuple) else (ms, None)
    return "–" if m is None else f"{m:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")


def md_table(header: list[str], body: list[list[str]]) -> list[str]:
    """A markdown table without the columns '–' in every row (probe off, init not run, no published figures)."""
    keep = [j for j in range(len(header)) if any(row[j] != "–" for row in body)]
    return ["| " + " | ".join(row[j] for j in keep) + " |" for row in [header, ["---"] * len(header), *body]]


def column_mean(values) -> float | None:
    means = [v[0] if isinstance(v, tuple) else v for v in values if v is not None]
    return statistics.fmean(means) if means else None


def headline_ratios(cols: dict[str, dict], ref_tasks: list[str]) -> list[str]:
    """The two ratios TinyDNABERT reports, ours and theirs over the same tasks (those with published figures)."""
    mean = {name: column_mean(col[t] for t in ref_tasks) for name, col in cols.items()}

    def pct(a, b, gain=False):  # a / b as a percentage; a gain is the ratio - 1, signed
        return "–" if a is None or not b else f"{100 * (a / b - 1):+.1f}%" if gain else f"{100 * a / b:.1f}%"

    body = [[name, pct(mean[pre], mean[scratch], gain=True), pct(mean[pre], mean["NT SOTA"])]
            for name, pre, scratch in (("ours", FINETUNED["pretrained"], FINETUNED["scratch"]),
                                       ("TinyDNABERT", "TinyDNABERT", "TinyDNABERT scratch"))]
    return [f"Headline ratios over the {len(ref_tasks)} task(s) with published figures:", "",
            *md_table(["", "gain of pretraining over scratch", "share of NT SOTA"], body), ""]


def label_efficiency(runs: dict, tasks: dict, budgets: list[int], ours: dict) -> list[str]:
    """Table 2: per task and label budget, our columns, the paired gain of pretraining after the fine-tuned ones."""
    header, body = list(ours), []
    after = sum(col == "test_mcc" for col, _ in ours.values())  # the fine-tuned columns come first
    for t in tasks:
        for b in budgets:
            n = next(r["n_train"] for _, i in ours.values() for r in runs[t, i, b])
            paired = {r["seed"]: r["test_mcc"] for r in runs[t, "scratch", b]}  # same seed: same labels and split
            gain = [r["test_mcc"] - paired[r["seed"]] for r in runs[t, "pretrained", b] if r["seed"] in paired]
            cells = [fmt(mean_sd(r.get(col) for r in runs[t, i, b])) for col, i in ours.values()]
            body.append([tasks[t].display, f"{n:,}" if b == n else f"all ({n:,})", *cells[:after], fmt(mean_sd(gain)),
                         *cells[after:]])
    return ["## Label efficiency: test MCC by number of training labels", "",
            *md_table(["task", "labels", *header[:after], "pretrained − scratch", *header[after:]], body), ""]


def curves(runs: dict, task: str, budgets: list[int], ours: dict) -> dict[str, list[tuple[int, list]]]:
    """mcc_vs_labels.png's lines for one task: header -> [(training labels, test MCC of each seed)] per budget."""
    lines = {h: [(rs[0]["n_train"], [r[col] for r in rs]) for b in budgets
                 if (rs := [r for r in runs[task, i, b] if r.get(col) is not None])] for h, (col, i) in ours.items()}
    return {h: points for h, points in lines.items() if points}  # none: not run


def intro(benchmark: str, probed: bool, k: int, published: bool) -> list[str]:
    """The title, what the numbers are and, for the demo, what they are not; k: the k-mer baseline's (0: not run)."""
    return [f"# {TITLES[benchmark]}: test MCC", "",
            *(["These are synthetic tasks (drawn from the demo genome's made-up grammar by shelf/demo_data.py), not "
               "the NT benchmark: they show that the pipeline works end to end, not how good a model is on real DNA.",
               ""] if benchmark == "demo" else []),
            "Fine-tuned: encoder and classification head trained on the task; the best validation-MCC weights score "
            "the whole test split. Cells: mean ± s.d. over seeds."
            + (" Probe: before any training, a logistic regression on the frozen encoder's features (final hidden "
               "states averaged over the real tokens, beside the first token's), its C picked by validation MCC; "
               "the random encoder is the scratch init, untrained." if probed else "")
            + (f" {k}-mer counts: a logistic regression on each sequence's counts of every overlapping {k}-mer, "
               "fitted on the same training rows, its C picked on the same validation split as the probe's: a strong "
               "non-neural baseline." if k else "")
            + (" TinyDNABERT: one run per task (ForestsKing/TinyDNABERT). NT SOTA: best model per task in "
               "Dalla-Torre et al., Nature Methods 2024. Published figures: configs/reference_mcc.csv."
               if published else ""), ""]


def limits(rows: list[dict], budgets: list[int], regressions: bool) -> str:
    """The comparison's limits, in numbers: seeds, budgets, the validation split, the test split."""
    def span(col):
        v = sorted({r[col] for r in rows})
        return f"{v[0]:,}" if len(v) == 1 else f"{v[0]:,}-{v[-1]:,}"

    picks = "the fine-tuned checkpoint" + (" and the logistic regressions' C" if regressions else "")
    return (f"Limits: {len({r['seed'] for r in rows})} seed(s) per cell, so the ± is a rough guide (none with one "
            f"seed); label budgets {', '.join(f'{b:,}' if b else 'all' for b in budgets)}. Per task, each seed's "
            f"validation split ({span('n_val')} sequences) is the same for every budget and both inits (a paired "
            f"comparison) and is used only to pick {picks}; each run scores the whole test split ({span('n_test')} "
            "sequences) once, and nothing is chosen on it.")


def write_results(out: Path, rows: list[dict], tasks: dict, benchmark: str, k: int) -> None:
    """results.csv, results.md, mcc.png and (more than one budget) mcc_vs_labels.png from the runs' metrics;
    `tasks`: each task, in order -> its TaskInfo (published facts); k: the k-mer baseline's (finetune.kmer)."""
    with atomic_write(out / "results.csv") as f:  # a row per run, in plan order: a rerun rewrites the same file
        table = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")  # None, missing: ""
        table.writeheader()
        table.writerows({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows)
    runs = defaultdict(list)  # (task, init, train size) -> its runs, one per seed
    for r in rows:
        runs[r["task"], r["init"], r["train_size"]].append(r)
    budgets = sorted({r["train_size"] for r in rows}, key=lambda b: b or math.inf)  # 0 (all labels) last
    ref = {r["task"]: r for r in read_commented_csv(REFERENCE_CSV)}
    ref_tasks = [t for t in tasks if t in ref]
    ours = our_columns(rows, k)  # header -> (column of results.csv, init)
    # table 1's columns, at the largest budget: header -> {task: (mean, s.d.) of ours or a published figure or None}
    cols = {h: {t: mean_sd(r.get(col) for r in runs[t, i, budgets[-1]]) for t in tasks} for h, (col, i) in ours.items()}
    cols |= {PUBLISHED[c]: {t: float(ref[t][c]) if t in ref else None for t in tasks} for c in PUBLISHED}
    heading = "all training labels" if budgets[-1] == 0 else f"{budgets[-1]:,} training labels (the largest budget)"
    table1 = [f"## Test MCC with {heading}", "",
              *md_table(["task", *cols], [[tasks[t].display, *(fmt(col[t]) for col in cols.values())] for t in tasks]
                        + [["**mean**", *(fmt(column_mean(col.values())) for col in cols.values())]]), ""]
    ratios = headline_ratios(cols, ref_tasks) if ref_tasks else []  # no published figures: no ratios
    table2 = label_efficiency(runs, tasks, budgets, ours) if len(budgets) > 1 else []
    probed, kmer = (any(r.get(col) is not None for r in rows) for col in ("probe_test_mcc", "kmer_test_mcc"))
    note = [limits(rows, budgets, probed or kmer), ""]
    with atomic_write(out / "results.md") as f:  # k = 0: the k-mer baseline not run
        f.write("\n".join(intro(benchmark, probed, kmer and k, bool(ref_tasks)) + table1 + ratios + table2 + note))
    plot_mcc(out / "mcc.png", [tasks[t].display for t in tasks],  # fine-tuned, the k-mer baseline, published
             {h: [col[t] for t in tasks] for h, col in cols.items() if not h.startswith("probe")})
    if len(budgets) > 1:
        plot_mcc_vs_labels(out / "mcc_vs_labels.png", {tasks[t].display: curves(runs, t, budgets, ours) for t in tasks})
    print0(f"wrote results.csv, results.md, mcc.png{', mcc_vs_labels.png' if len(budgets) > 1 else ''} in {out}\n")
    print0("\n".join(ratios + note + table1 + table2))  # the run ends with the label-efficiency table

