"""The benchmark code runs (tiny shapes, no timed assertions): bench_model, bench_pretrain, bench_fsdp, run_all;
the GPU rows' code too, on CPU (--check) with torch.cuda's answers mocked as an H200's.

Run: python -m pytest tests/test_bench.py -q   (CPU, ~1 min)
"""

import importlib
import math
import re
import sys
import textwrap

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import bench_fsdp  # noqa: E402
import bench_model  # noqa: E402
import bench_pretrain  # noqa: E402
import benchlib  # noqa: E402
import run_all  # noqa: E402
from benchlib import ROW_FIELDS  # noqa: E402


def test_bench_model_tiny_gives_finite_ratios(tmp_path):
    out = tmp_path / "bench_model.csv"
    rows = bench_model.main(["--tiny", "--batch", "1", "--seq-len", "16", "--repeats", "2", "--warmup", "1",
                             "--threads", "1", "--out", str(out)])
    measured = [r for r in rows if r["ratio"]]
    assert len(measured) == 2  # ours (full logits) and ours (masked only), both against HF
    assert all(math.isfinite(float(r["ratio"])) and float(r["ratio"]) > 0 for r in measured)
    assert {r["target"] for r in measured} == {"<= 1.0", "<= 0.85"}
    assert all(r["met"] in ("yes", "no") for r in measured)
    if not torch.cuda.is_available():
        assert [r["note"] for r in rows if not r["ratio"]] == ["not measured (no GPU)"] * 2
    assert [r["what"] for r in run_all.read_csv(out)] == [r["what"] for r in rows]


def test_bench_model_compares_the_same_model():
    """Same weights and batch: HF and both of our loss paths agree in eval mode (else timing is moot)."""
    cfg = bench_model.ModelConfig(**bench_model.TINY)
    ours, hf = bench_model.build_models(cfg, "cpu", seed=0)
    batch = bench_model.masked_batch(cfg, 2, 16, seed=0)
    assert (batch[2] != -100).any() and (batch[0] == bench_model.MASK_ID).any()
    diff, loss = bench_model.check_same_loss(ours, hf, bench_model.loss_fns(ours, hf, batch, cfg.vocab_size))
    assert diff < 1e-5 and math.isfinite(loss)
    assert ours.training and hf.training  # back in train mode for the timing


def test_bench_fsdp_tiny_runs_the_fsdp_path(tmp_path, monkeypatch):
    # bench_fsdp sets RANK, WORLD_SIZE, ... for its 1-process group: setenv + delenv makes monkeypatch
    # remove them again afterwards, so later tests do not think they run under torchrun
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(k, "unset")
        monkeypatch.delenv(k)
    rows = bench_fsdp.main(["--tiny", "--out", str(tmp_path / "fsdp.csv")])
    assert len(rows) == 1 and "tok/s" in rows[0]["ours"] and "FSDP2" in rows[0]["what"]
    assert float(rows[0]["ours"].split()[0].replace(",", "")) > 0
    assert not torch.distributed.is_initialized()  # torn down


def as_h200(monkeypatch):
    """torch.cuda answers as on one H200 (the CPU build would raise): a --check run reaches the GPU rows' calls."""
    calls = []
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: calls.append("name") or "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *_: calls.append("mem") or 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *_: calls.append("sync"))
    return calls


def test_gpu_peak_tflops_looks_the_gpu_up(monkeypatch):
    as_h200(monkeypatch)
    assert benchlib.gpu_peak_tflops() == 989.0  # shelf/dry_run.py's table
    assert benchlib.gpu_peak_tflops(override=500.0) == 500.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Some Future GPU")
    assert benchlib.gpu_peak_tflops() == 0.0  # unknown: MFU left out, not guessed


@pytest.mark.parametrize("bench, argv", [
    (bench_model, ["--check", "--compile-backend=aot_eager", "--batch=1", "--seq-len=16", "--repeats=2",
                   "--warmup=1", "--threads=1"]),
    (bench_pretrain, ["--check", "--quick", "--warmup=1", "--threads=1"]),
    (bench_fsdp, ["--check"])])
def test_gpu_rows_run_on_cpu(bench, argv, tmp_path, monkeypatch):
    """Each bench's GPU rows, the very code a GPU runs (bf16, compile, MFU, memory note), on CPU at a tiny shape:
    a renamed function fails here, not only on a GPU."""
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):  # bench_fsdp's 1-process group
        monkeypatch.setenv(k, "unset")
        monkeypatch.delenv(k)
    calls = as_h200(monkeypatch)
    rows = bench.main(argv + ["--out", str(tmp_path / "out.csv")])
    gpu = [r for r in rows if "GPU" in r["what"] or "FSDP2" in r["what"]]
    assert gpu and all("NVIDIA H200" in r["note"] and "not a figure" in r["note"] and not r["target"] for r in gpu)
    for r in gpu:
        assert math.isfinite(float(r["ours"].split()[0].replace(",", ""))) and "tok/s" in r["ours"]
        mfu = re.search(r"MFU ([\d.]+)%", r["ours"]).group(1) if bench is bench_model else r["ratio"]  # else: ratio
        assert math.isfinite(float(mfu)) and "peak unknown" not in r["baseline"]
    assert {"name", "sync"} <= set(calls) and ("mem" in calls) == (bench is not bench_model)


def test_run_all_gpu_entries_are_valid_commands():
    """run_all drops flags a script's --help lacks; its GPU entries (skipped without CUDA) parse here instead."""
    gpu = [b for b in run_all.BENCHES if b.gpu_only]
    assert gpu
    for b in gpu:
        script = importlib.import_module(b.script.removesuffix(".py"))
        for argv in (b.quick, b.full):
            assert script.parse_args(argv).device == "cuda"


def test_run_all_survives_missing_and_failing_scripts(tmp_path, monkeypatch):
    results = tmp_path / "results"
    (tmp_path / "bench_fails.py").write_text("import sys\nsys.exit('boom: no data')\n")
    (tmp_path / "bench_ok.py").write_text(textwrap.dedent(f"""
        import csv, pathlib
        p = pathlib.Path({str(results)!r}) / "ok.csv"
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames={list(ROW_FIELDS)!r})
            w.writeheader()
            w.writerow(dict(figure="7", what="fake step", baseline="2 s", ours="1 s", ratio="0.500",
                            target="<= 1.0", met="", note=""))
    """))
    monkeypatch.setattr(run_all, "BENCH", tmp_path)
    monkeypatch.setattr(run_all, "RESULTS", results)
    monkeypatch.setattr(run_all, "BENCHES", [run_all.Bench("6", "bench_missing.py", "missing.csv"),
                                              run_all.Bench("8", "bench_fails.py", "fails.csv"),
                                              run_all.Bench("7", "bench_ok.py", "ok.csv")])
    rows = run_all.main([])
    by_fig = {r["figure"]: r for r in rows}
    assert "missing" in by_fig["6"]["note"]
    assert "failed (exit 1)" in by_fig["8"]["note"] and "boom: no data" in by_fig["8"]["note"]
    assert by_fig["7"]["ratio"] == "0.500" and by_fig["7"]["met"] == "yes"
    summary = run_all.read_csv(results / "summary.csv")
    assert [r["figure"] for r in summary] == ["6", "8", "7"]
    md = (results / "summary.md").read_text()
    assert "fake step" in md and "date:" in md and "load average" in md


def test_kmer_baseline_fits_on_04s_training_rows(tmp_path):
    """Each (budget, seed) is fitted on exactly the rows 04's run of the same (task, budget, seed) trains on, its C
    picked on that run's validation rows, so its MCC sits beside 04's label-efficiency table as a paired comparison."""
    import csv
    import subprocess

    import numpy as np
    from test_finetune import ft, write_task

    from shelf import nt_tasks

    write_task(tmp_path / "motif", 200, 60)
    out = tmp_path / "kmer.csv"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "kmer_baseline.py"), "--task-dir",
                             str(tmp_path / "motif"), "--train-sizes", "16,0", "--seeds", "2", "--out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    data = nt_tasks.load_task(tmp_path / "motif", nt_tasks.TaskInfo("motif", None, None, None))
    for row, size in zip(rows, (16, 0), strict=True):
        train_rows, val_rows = ft.split_rows(data, 0.1, size, ft.run_seed(1337, "motif", 1))
        assert int(row["n_train"]) == len(train_rows) == (size or len(data.train_y) - len(val_rows))
        seeds = [float(m) for m in row["test_mcc_seeds"].split()]
        assert len(seeds) == 2 and all(-1 <= m <= 1 for m in seeds)
        assert float(row["test_mcc_mean"]) == round(float(np.mean(seeds)), 4)
        assert all(float(c) in ft.PROBE_CS for c in row["C_seeds"].split())  # picked by validation MCC, as 04's
    assert float(rows[1]["test_mcc_mean"]) > 0.5  # GGGCCC in 4-mers: learnable with all 180 labels


def test_kmer_baseline_is_04s_kmer_column_on_promoter_core(tmp_path, shared_data):
    """One k-mer baseline, not two: the bench's number for a (task, budget, seed) is 04's kmer_test_mcc of that run,
    on a real task (human core promoters, 64 labels)."""
    import csv
    import json
    import subprocess

    from test_finetune import TINY, char_tokenizer

    from conftest import run_script

    tasks, run, out = shared_data / "tasks", tmp_path / "run", tmp_path / "kmer.csv"
    char_tokenizer(run / "tokenizer.json")  # 70 bp: 72 tokens
    r = run_script("04_finetune_nt.py", "--config", str(ROOT / "configs/demo.toml"), f"--run.out_dir={run}", *TINY,
                   "--model.max_seq_len=80", "--finetune.benchmark=local", f"--finetune.data_dir={tasks}",
                   "--finetune.tasks=[promoter_core]", "--finetune.inits=[scratch]", "--finetune.num_seeds=1",
                   "--finetune.train_sizes=[64]", "--finetune.max_steps=1", "--finetune.eval_interval=1",
                   "--finetune.probe=false", "--finetune.kmer=4", "--run.seed=1337", "--finetune.val_fraction=0.1")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((run / "finetune" / "promoter_core" / "scratch" / "labels-64" / "seed-0" / "metrics.json")
                   .read_text())
    bench = subprocess.run([sys.executable, str(ROOT / "bench" / "kmer_baseline.py"), "--task-dir",
                            str(tasks / "promoter_core"), "--k", "4", "--train-sizes", "64", "--seeds", "1",
                            "--seed", "1337", "--val-fraction", "0.1", "--out", str(out)],
                           capture_output=True, text=True)
    assert bench.returncode == 0, bench.stderr[-2000:]
    (row,) = csv.DictReader(out.open())
    print(f"promoter_core, 64 labels: 4-mer test MCC 04 {m['kmer_test_mcc']:.4f} (C {m['kmer_C']}), "
          f"bench {row['test_mcc_seeds']} (C {row['C_seeds']})")
    assert row["test_mcc_seeds"] == f"{m['kmer_test_mcc']:.4f}" and float(row["C_seeds"]) == m["kmer_C"]
    assert int(row["n_train"]) == m["n_train"] == 64 and int(row["n_test"]) == m["n_test"] == 1183
    assert 0.1 < m["kmer_test_mcc"] < 0.6  # a real signal from 64 labels, not a perfect one
    # and to the last bit, in this process: the bench's function on 04's run seed
    import kmer_baseline

    from shelf import nt_tasks

    data = nt_tasks.load_task(tasks / "promoter_core", nt_tasks.TaskInfo("promoter_core", None, None, None))
    fit = kmer_baseline.kmer_baseline(data, 4, 64, m["run_seed"], 0.1)
    assert {c: fit[c] for c in ("kmer_val_mcc", "kmer_C", "kmer_test_mcc")} == \
        {c: m[c] for c in ("kmer_val_mcc", "kmer_C", "kmer_test_mcc")}


def test_motif_oracle_counts_smoothing_and_motif_ratio(tmp_path):
    """bench/motif_oracle.py: p(base | k bases a side) from counts, smoothed toward k - 1's; a word that recurs in
    the genome stands out in 05's figure (mean |score| inside the header's motifs / outside), chance bases do not."""
    import subprocess

    import numpy as np

    import motif_oracle as oracle

    x = np.random.default_rng(0).integers(0, 4, 5000)
    x[100] = 4  # an N: no context spans it
    p0, p1 = np.exp(oracle.fit(x, 0))[0], np.exp(oracle.fit(x, 1))  # (4,), (16, 4)
    assert np.allclose(p0, np.bincount(x[x < 4], minlength=4) / (x < 4).sum())
    for left, right in [(0, 1), (2, 3), (3, 3)]:  # brute force: the middle bases of each (left, right) context
        middle = [x[i] for i in range(1, len(x) - 1) if (x[i - 1], x[i + 1]) == (left, right) and x[i] < 4]
        counts = np.bincount(middle, minlength=4)
        assert np.allclose(p1[left * 4 + right], (counts + 4 * p0) / (counts.sum() + 4))
    word = oracle.CODE[np.frombuffer(b"GATTACAGGC", np.uint8)]
    for at in range(200, 4800, 40):  # 115 copies
        x[at:at + 10] = word
    rng = np.random.default_rng(1)
    seqs = ["".join("ACGT"[b] for b in rng.integers(0, 4, 60)) for _ in range(4)]
    fasta = tmp_path / "w.fa"
    fasta.write_text("".join(f">word_{i} motifs=21-30\n{s[:20]}GATTACAGGC{s[30:]}\n" for i, s in enumerate(seqs)))
    assert oracle.ratios(oracle.fit(x, 3), 3, fasta)["word"] > 3  # known from context: every substitution unlikely
    assert 0.7 < oracle.ratios(oracle.fit(x, 0), 0, fasta)["word"] < 1.4  # composition alone: no contrast
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "motif_oracle.py"), "--k", "0,3"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.findall(r"k = (\d) .*: promoter (\d+\.\d+)x, donor (\d+\.\d+)x", result.stdout)
    assert [k for k, *_ in found] == ["0", "3"] and all(float(r) > 0 for _, *rs in found for r in rs)
