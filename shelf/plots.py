"""Every PNG the pipeline draws, each saved atomically by save_png."""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from shelf.files import atomic_write

plt.switch_backend("Agg")  # files only, no display


def save_png(fig, path: Path, **kwargs) -> None:
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", **kwargs)
    plt.close(fig)


def plot_lengths(edges: list[int], counts: list[int], path: Path) -> None:
    """Bar chart of the length histogram; the dashed line is what uniform lengths alone would give."""
    e, c = np.array(edges), np.array(counts)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(e[:-1], c, width=np.diff(e), align="edge", color="tab:blue", edgecolor="white")
    ax.axhline(c.sum() / len(c), color="black", linestyle="--", linewidth=1, label="flat (uniform draws)")
    ax.set(xlabel="segment length (bp)", ylabel="segments per bin")
    ax.set_title(f"{int(c.sum()):,} segments, lengths {e[0]:,}-{e[-1] - 1:,} bp: uniform draws, "
                 "plus each stretch's shorter last piece", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def plot_losses(rows: list[dict], path: Path) -> None:
    """03's loss.png from pretrain_log.csv's rows: MLM loss and masked-token accuracy, each beside its baseline (the
    unigram loss of token frequencies, which a model must beat to have learned context; the most frequent token)."""
    train = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("loss")]
    val = [r for r in rows if r.get("val_loss")]  # "" in a training row
    fig, (ax, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax.plot(*zip(*train), label="train (masked tokens)", lw=1)
    if val:
        steps = [int(r["step"]) for r in val]
        ax.plot(steps, [float(r["val_loss"]) for r in val], "o-", label="validation")
        ax.axhline(float(val[-1]["val_unigram_loss"]), color="grey", ls="--", label="unigram (token frequencies)")
        ax_acc.plot(steps, [float(r["val_acc"]) for r in val], "o-", color="C1", label="validation")
        ax_acc.axhline(float(val[-1]["val_const_acc"]), color="grey", ls="--", label="most frequent token")
    ax.set(xlabel="step", ylabel="MLM loss (nats)", title="masked-LM loss")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="masked-token accuracy")
    for a in (ax, ax_acc):
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    save_png(fig, path, dpi=110)


# one colour per init (blue: pretrained, light: scratch or random), fine-tuned solid, probes and k-mers (green) dashed
COLORS = {"fine-tuned scratch": "#6baed6", "fine-tuned pretrained": "#08519c", "probe: random encoder": "#6baed6",
          "probe: pretrained": "#08519c", "TinyDNABERT scratch": "#fdae6b", "TinyDNABERT": "#e6550d",
          "NT SOTA": "#636363", **{f"{k}-mer counts": "#31a354" for k in range(1, 7)}}


def plot_mcc(path: Path, tasks: list[str], series: dict[str, list]) -> None:
    """mcc.png: grouped bars of test MCC per task; `series`: label -> per task (mean, s.d.), a published number,
    or None (not run: no bar). A series with nothing in it is left out."""
    series = {label: [v if isinstance(v, tuple) else (np.nan if v is None else v, None) for v in vals]
              for label, vals in series.items() if any(v is not None for v in vals)}
    x, w = np.arange(len(tasks)), 0.8 / len(series)  # bar positions, bar width
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(tasks) + 2), 4.5))
    for j, (label, vals) in enumerate(series.items()):
        sds = [v[1] for v in vals]  # error bars on our bars only: the published figures are single numbers
        ax.bar(x + (j - (len(series) - 1) / 2) * w, [v[0] for v in vals], w, label=label, color=COLORS.get(label),
               yerr=None if all(sd is None for sd in sds) else [sd or 0 for sd in sds], capsize=2,
               error_kw={"elinewidth": 0.8})
    ax.set_xticks(x, tasks, rotation=45, ha="right")
    ax.set_ylabel("test MCC (error bar: s.d. over seeds)")
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.0)
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=8, ncol=min(5, len(series)), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    save_png(fig, path, dpi=120, bbox_inches="tight")


def plot_mcc_vs_labels(path: Path, panels: dict[str, dict[str, list[tuple[int, list[float]]]]]) -> None:
    """mcc_vs_labels.png: a panel per task, test MCC against training labels (log scale). `panels`: task -> label ->
    [(labels, test MCC of each seed)]; fine-tuned: mean ± s.d. and a dot per seed; the others: dashed mean lines."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4), squeeze=False)
    for ax, (task, lines) in zip(axes[0], panels.items()):
        for label, points in lines.items():
            x, runs = [p[0] for p in points], [np.array(p[1]) for p in points]
            sd = [r.std(ddof=1) if len(r) > 1 else 0.0 for r in runs]
            baseline = not label.startswith("fine-tuned")  # a probe or the k-mer counts
            bars = ax.errorbar(x, [r.mean() for r in runs], yerr=None if baseline else sd, color=COLORS.get(label),
                               ls="--" if baseline else "-", marker="" if baseline else "o", capsize=3, label=label)
            if not baseline:  # every seed, a dot, in its line's colour (an hf: init's is matplotlib's next)
                ax.scatter(np.repeat(x, [len(r) for r in runs]), np.concatenate(runs), s=12, alpha=0.5,
                           color=bars.lines[0].get_color())
        ax.set(xscale="log", xlabel="training labels (log scale)", ylabel="test MCC", title=task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path, dpi=110)
