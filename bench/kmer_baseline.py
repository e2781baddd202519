"""
The scale bar for 04's test: a 4-mer-count logistic regression on an NT-format task.

    python bench/kmer_baseline.py                                   # ../shared/data/tasks/promoter_core
    python bench/kmer_baseline.py --task-dir DIR --k 4

Fits on the whole train split (no validation split: the regularisation is fixed), scores the whole
test split with the same sklearn metrics 04_finetune_nt.py reports, prints a table and writes
bench/results/kmer_baseline.csv.
"""

import argparse
import csv
import itertools
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from shelf.fasta import read_fasta  # noqa: E402


def kmer_counts(seqs: list[str], k: int) -> np.ndarray:
    """(N, 4^k) counts of every overlapping ACGT k-mer; k-mers with other letters are skipped."""
    index = {"".join(p): i for i, p in enumerate(itertools.product("ACGT", repeat=k))}
    X = np.zeros((len(seqs), len(index)), dtype=np.float32)
    for n, s in enumerate(seqs):
        s = s.upper()
        for i in range(len(s) - k + 1):
            j = index.get(s[i:i + k])
            if j is not None:
                X[n, j] += 1
    return X


def load(path: Path) -> tuple[list[str], np.ndarray]:
    recs = list(read_fasta(path))
    return [r.sequence for r in recs], np.array([int(r.header.rsplit("|", 1)[1]) for r in recs])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--task-dir", default=str(ROOT.parent / "shared" / "data" / "tasks" / "promoter_core"))
    p.add_argument("--k", type=int, default=4)
    args = p.parse_args()
    task_dir = Path(args.task_dir)
    (xs, y), (xt, yt) = load(task_dir / "train.fna"), load(task_dir / "test.fna")
    t0 = time.perf_counter()
    scaler = StandardScaler().fit(kmer_counts(xs, args.k))
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(scaler.transform(kmer_counts(xs, args.k)), y)
    pred = clf.predict(scaler.transform(kmer_counts(xt, args.k)))
    secs = time.perf_counter() - t0
    binary = len(set(y)) == 2
    row = {
        "task": task_dir.name, "model": f"{args.k}-mer counts + logistic regression",
        "n_train": len(y), "n_test": len(yt),
        "test_mcc": round(float(matthews_corrcoef(yt, pred)), 4),
        "accuracy": round(float(accuracy_score(yt, pred)), 4),
        "f1": round(float(f1_score(yt, pred, average="binary" if binary else "macro")), 4),
        "seconds": round(secs, 2),
    }
    for k, v in row.items():
        print(f"{k:>10}: {v}")
    out = ROOT / "bench" / "results" / "kmer_baseline.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        w.writeheader()
        w.writerow(row)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
