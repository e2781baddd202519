"""
The scale bar for 04's test: 04's k-mer count baseline (finetune.kmer) alone, on an NT-format task.

    python bench/kmer_baseline.py                                   # ../shared/data/tasks/promoter_core
    python bench/kmer_baseline.py --task-dir DIR --k 4
    python bench/kmer_baseline.py --train-sizes 64,256,1024,0      # beside 04's label-efficiency table

One k-mer baseline, not two: this runs 04's own code (kmer_counts, and linear_probe on them) on the rows of 04's run
of the same (task, budget, seed) (04's split_rows and run_seed): fitted on its training rows, C picked by MCC on its
validation rows, the whole test split scored once. So each seed's MCC is the kmer_test_mcc of 04's results.csv
(run with the same run.seed, finetune.kmer and finetune.val_fraction, either init). It prints mean and per seed,
and writes bench/results/kmer_baseline.csv.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]
from benchlib import write_table  # noqa: E402
from conftest import load_script  # noqa: E402
from shelf.nt_tasks import TaskInfo, load_task  # noqa: E402

finetune = load_script("04_finetune_nt.py")  # its split_rows, run_seed, Examples, kmer_counts and linear_probe


def kmer_baseline(data, k: int, size: int, seed: int, val_fraction: float) -> dict:
    """The k-mer baseline of 04's run with budget `size` and run seed `seed` (04's run_seed of the task and seed
    index), fitted as 04's finetune() fits it. -> kmer_val_mcc, kmer_C, kmer_test_mcc, n_train"""
    train, val = (finetune.Examples(None, data.train_y[rows], [data.train_x[i] for i in rows])
                  for rows in finetune.split_rows(data, val_fraction, size, seed))
    test = finetune.Examples(None, data.test_y, data.test_x)  # no token ids: the k-mer counts read the sequences
    fit = finetune.linear_probe("kmer", lambda e: finetune.kmer_counts(e.seqs, k), train, val, test)
    return fit | {"n_train": len(train.y)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--task-dir", default=str(ROOT.parent / "shared" / "data" / "tasks" / "promoter_core"))
    p.add_argument("--k", type=int, default=4, help="as finetune.kmer")
    p.add_argument("--train-sizes", default="0", help="label budgets, as finetune.train_sizes (0 = all): 64,256,0")
    p.add_argument("--seeds", type=int, default=3, help="as finetune.num_seeds")
    p.add_argument("--seed", type=int, default=1337, help="as run.seed: the same rows as 04's runs")
    p.add_argument("--val-fraction", type=float, default=0.1, help="as finetune.val_fraction (C is picked on them)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "kmer_baseline.csv"))
    args = p.parse_args()
    task_dir = Path(args.task_dir)
    data = load_task(task_dir, TaskInfo(task_dir.name, None, None, None))
    t0 = time.perf_counter()
    rows = []
    for size in map(int, args.train_sizes.split(",")):
        # 04's runs of this (task, budget), one per seed index: a paired comparison
        fits = [kmer_baseline(data, args.k, size, finetune.run_seed(args.seed, task_dir.name, i), args.val_fraction)
                for i in range(args.seeds)]
        mccs = [f["kmer_test_mcc"] for f in fits]
        rows.append({"task": task_dir.name, "model": f"{args.k}-mer counts + logistic regression",
                     "train_size": size, "n_train": fits[0]["n_train"], "n_test": len(data.test_y),
                     "test_mcc_mean": round(float(np.mean(mccs)), 4),
                     "test_mcc_sd": round(float(np.std(mccs, ddof=1)), 4) if len(mccs) > 1 else "",
                     "test_mcc_seeds": " ".join(f"{m:.4f}" for m in mccs),
                     "C_seeds": " ".join(str(f["kmer_C"]) for f in fits)})
        print(f"{task_dir.name}: {fits[0]['n_train']:,} labels: test MCC {np.mean(mccs):.4f} "
              f"(seeds {rows[-1]['test_mcc_seeds']}; C {rows[-1]['C_seeds']})")
    print(f"{time.perf_counter() - t0:.1f} s")
    write_table(args.out, rows)


if __name__ == "__main__":
    main()
