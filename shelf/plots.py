"""Every PNG the pipeline draws, each saved atomically by save_png."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from shelf.files import atomic_write  # noqa: E402


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
    ax.set_xlabel("segment length (bp)")
    ax.set_ylabel("segments per bin")
    ax.set_title(f"{int(c.sum()):,} segments, lengths {e[0]:,}-{e[-1] - 1:,} bp: uniform draws, "
                 "plus each stretch's shorter last piece", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def plot_losses(rows: list[dict], path: Path) -> None:
    """03's loss.png from pretrain_log.csv's rows: MLM loss (train, validation), masked-token accuracy."""
    train = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("loss") not in ("", None)]
    val = [(int(r["step"]), float(r["val_loss"]), float(r["val_acc"])) for r in rows
           if r.get("val_loss") not in ("", None)]
    fig, (ax, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax.plot(*zip(*train), label="train (masked tokens)", lw=1)
    if val:
        ax.plot([v[0] for v in val], [v[1] for v in val], "o-", label="validation")
        ax_acc.plot([v[0] for v in val], [v[2] for v in val], "o-", color="C1", label="validation")
        const = [float(r["val_const_acc"]) for r in rows if r.get("val_const_acc") not in ("", None)]
        ax_acc.axhline(const[-1], color="grey", ls="--", label="most frequent token")
    ax.set(xlabel="step", ylabel="MLM loss (nats)", title="masked-LM loss")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="masked-token accuracy")
    for a in (ax, ax_acc):
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    save_png(fig, path, dpi=110)


def plot_mcc(path: Path, tasks, infos, inits, ours, ref) -> None:

    series = [(f"ours {i}", [ours[(t, i)] for t in tasks], c) for i, c in (("scratch", "#9ecae1"), ("pretrained", "#08519c"))
              if i in inits]
    for col, label, c in (("tinydnabert_scratch", "TinyDNABERT scratch", "#fdae6b"),
                          ("tinydnabert", "TinyDNABERT", "#e6550d"), ("nt_sota", "NT SOTA", "#636363")):
        if any(t in ref for t in tasks):
            series.append((label, [(float(ref[t][col]), None) if t in ref else (float("nan"), None) for t in tasks], c))
    x = np.arange(len(tasks))
    w = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(tasks) + 2), 4.5))
    for j, (label, vals, c) in enumerate(series):
        sds = [v[1] for v in vals]  # error bars on our bars only: the published figures are single numbers
        ax.bar(x + (j - (len(series) - 1) / 2) * w, [v[0] for v in vals], w, label=label, color=c,
               yerr=None if all(sd is None for sd in sds) else [sd or 0 for sd in sds], capsize=2,
               error_kw={"elinewidth": 0.8})
    ax.set_xticks(x, [infos[t].display for t in tasks], rotation=45, ha="right")
    ax.set_ylabel("test MCC (error bar: s.d. over seeds)")
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.0)
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=8, ncol=min(5, len(series)), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    save_png(fig, path, dpi=120, bbox_inches="tight")
