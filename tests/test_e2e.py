"""The demo pipeline end to end, as a new user runs it: 01 -> 02 -> 03 -> 04 on configs/demo.toml.

A shorter cut than `bash demo.sh` (fewer pretraining and fine-tuning steps, one seed) so it stays
within a couple of minutes on 2 cores, but every step runs for real and reads only what the step
before it wrote.
"""

import csv
import json

import numpy as np
import torch

from conftest import ROOT, run_script

DEMO = str(ROOT / "configs" / "demo.toml")


def _step(script, out_dir, *overrides):
    r = run_script(script, "--config", DEMO, f"--run.out_dir={out_dir}", *overrides, timeout=600)
    assert r.returncode == 0, f"{script} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    assert "\r" not in r.stdout + r.stderr, "progress bars redraw in a log file"  # stdout, stderr: pipes, no terminal
    return r.stdout


def test_demo_pipeline_end_to_end(tmp_path):
    out = tmp_path / "demo"

    # 01: a synthetic genome made offline, cut into segments
    _step("01_preprocess.py", out)
    train = (out / "segments" / "train.txt").read_text().split()
    val = (out / "segments" / "val.txt").read_text().split()
    assert len(train) > 1000 and len(val) > 10
    assert all(256 <= len(s) <= 1024 and set(s) <= set("ACGT") for s in train + val)
    stats = json.loads((out / "segments" / "stats.json").read_text())
    assert stats["bp_read"] == stats["bp_kept"] + stats["bp_dropped"] + stats["n_bp"] + stats["other_bp"]
    assert (out / "segments" / "segment_lengths.png").stat().st_size > 0

    # 02: BPE tokenizer + uint16 token files whose counts match meta.json
    _step("02_train_tokenizer.py", out)
    assert (out / "tokenizer.json").exists()
    meta = json.loads((out / "tokens" / "meta.json").read_text())
    tokens = np.fromfile(out / "tokens" / "train.bin", dtype=np.uint16)
    assert len(tokens) == meta["splits"]["train"]["tokens"] and tokens.max() < meta["vocab_size"]

    # 03: a short pretraining run: log, plot, a checkpoint and the final weights 04 loads
    _step("03_pretrain.py", out, "--pretrain.max_steps=40", "--pretrain.warmup_steps=4",
          "--pretrain.eval_interval=20", "--pretrain.ckpt_interval=20")
    with open(out / "pretrain_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and int(rows[-1]["step"]) == 40
    assert (out / "loss.png").stat().st_size > 0
    assert any((out / "checkpoints").glob("step-*"))
    weights = torch.load(out / "final" / "model.pt", weights_only=True)
    assert "encoder.wte.weight" in weights
    # running 03 again without --resume or --restart must not throw the checkpoints away
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    r = run_script("03_pretrain.py", "--config", DEMO, f"--run.out_dir={out}")
    assert r.returncode == 1 and "pass --resume to continue it or --restart" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == checkpoints
    assert (out / "final" / "model.pt").exists()

    # 04: both demo tasks, pretrained vs scratch, one seed: the table, the CSV and the plot
    _step("04_finetune_nt.py", out, f"--finetune.data_dir={tmp_path / 'nt_tasks'}", "--finetune.num_seeds=1",
          "--finetune.train_sizes=[0]", "--finetune.max_steps=30", "--finetune.warmup_steps=3",
          "--finetune.eval_interval=15")
    results_md = (out / "finetune" / "results.md").read_text()
    with open(out / "finetune" / "results.csv") as f:
        results = list(csv.DictReader(f))
    tasks = {r["task"] for r in results}
    assert len(tasks) == 2 and {r["init"] for r in results} == {"pretrained", "scratch"}
    assert len(results) == 4
    # one row per task (by its display name in configs/nt_tasks.csv), then the mean row
    display = {line.split(",")[1]: line.split(",")[2]
               for line in (ROOT / "configs" / "nt_tasks.csv").read_text().splitlines() if line.startswith("demo,")}
    assert set(display) == tasks
    for task in tasks:
        assert results_md.count(f"| {display[task]} |") == 1, display[task]
    assert "| **mean** |" in results_md
    assert (out / "finetune" / "mcc.png").stat().st_size > 0
    # the resolved config is saved beside every step's outputs
    for where in ("segments", "tokens", ".", "finetune"):
        assert (out / where / "config.toml").exists(), where
