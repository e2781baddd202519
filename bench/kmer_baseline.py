"""
The scale bar for 04's test: a 4-mer-count logistic regression on an NT-format task.

    python bench/kmer_baseline.py                                   # ../shared/data/tasks/promoter_core
    python bench/kmer_baseline.py --task-dir DIR --k 4
    python bench/kmer_baseline.py --train-sizes 64,256,1024,0      # beside 04's label-efficiency table

For each label budget and seed it fits on exactly the training rows 04's run of the same (task, budget,
seed) trains on (04's split_rows and run_seed; the validation rows are left out and unused: C is fixed),
scores the whole test split with the same MCC, prints mean and per seed, and writes
bench/results/kmer_baseline.csv.
"""

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import matthews_corrcoef
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]
from benchlib import write_table  # noqa: E402
from conftest import load_script  # noqa: E402
from shelf.nt_tasks import TaskInfo, load_task  # noqa: E402

finetune = load_script("04_finetune_nt.py")  # its split_rows and run_seed: the rows 04 trains each run on


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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--task-dir", default=str(ROOT.parent / "shared" / "data" / "tasks" / "promoter_core"))
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--train-sizes", default="0", help="label budgets, as finetune.train_sizes (0 = all): 64,256,0")
    p.add_argument("--seeds", type=int, default=3, help="as finetune.num_seeds")
    p.add_argument("--seed", type=int, default=1337, help="as run.seed: the same rows as 04's runs")
    p.add_argument("--val-fraction", type=float, default=0.1, help="as finetune.val_fraction (held out, unused)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "kmer_baseline.csv"))
    args = p.parse_args()
    task_dir = Path(args.task_dir)
    data = load_task(task_dir, TaskInfo(task_dir.name, None, None, None))
    t0 = time.perf_counter()
    x_train, x_test = kmer_counts(data.train_x, args.k), kmer_counts(data.test_x, args.k)
    rows = []
    for size in map(int, args.train_sizes.split(",")):
        mccs = []
        for k in range(args.seeds):  # 04's training rows for this (task, budget, seed index): a paired comparison
            train_rows, _ = finetune.split_rows(data, args.val_fraction, size, finetune.run_seed(args.seed, task_dir.name, k))
            scaler = StandardScaler().fit(x_train[train_rows])
            clf = LogisticRegression(max_iter=2000, C=1.0).fit(scaler.transform(x_train[train_rows]),
                                                                data.train_y[train_rows])
            mccs.append(float(matthews_corrcoef(data.test_y, clf.predict(scaler.transform(x_test)))))
        rows.append({"task": task_dir.name, "model": f"{args.k}-mer counts + logistic regression",
                     "train_size": size, "n_train": len(train_rows), "n_test": len(data.test_y),
                     "test_mcc_mean": round(float(np.mean(mccs)), 4),
                     "test_mcc_sd": round(float(np.std(mccs, ddof=1)), 4) if len(mccs) > 1 else "",
                     "test_mcc_seeds": " ".join(f"{m:.4f}" for m in mccs)})
        print(f"{task_dir.name}: {len(train_rows):,} labels: test MCC {np.mean(mccs):.4f} (seeds {rows[-1]['test_mcc_seeds']})")
    print(f"{time.perf_counter() - t0:.1f} s")
    write_table(args.out, rows)


if __name__ == "__main__":
    main()
