"""03_pretrain.py: masking, schedule, one process / DDP / FSDP2 agreement, exact resume, checkpoints,
--dry-run, refusals, and a short run on real DNA."""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shelf.checkpoint import complete_checkpoints
from shelf.files import file_hash
from conftest import ROOT, SCRIPT_ENV, load_script, run_script
from model import MaskedLM, ModelConfig


pretrain = load_script("03_pretrain.py")


def make_token_run_dir(run_dir: Path, n_train: int = 160, n_val: int = 24, vocab_size: int = 48, seed: int = 0) -> Path:
    """The part of a run dir 03 reads, as 02 writes it: tokenizer.json (BPE, RoBERTa specials, <s> … </s>)
    and tokens/{train,val}.bin (flat uint16) + tokens/meta.json. The DNA repeats a few motifs with
    mutations, so there is something to learn."""
    rng = random.Random(seed)
    motifs = ["".join(rng.choice("ACGT") for _ in range(12)) for _ in range(6)]

    def segment() -> str:
        s = "".join(rng.choice(motifs) for _ in range(rng.randint(5, 10)))
        return "".join(c if rng.random() > 0.05 else rng.choice("ACGT") for c in s)

    train_segs, val_segs = [segment() for _ in range(n_train)], [segment() for _ in range(n_val)]
    tok = load_script("02_train_tokenizer.py").train_bpe_from_segments(train_segs, vocab_size, min_frequency=0)
    run_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(run_dir / "tokenizer.json"))
    (run_dir / "tokens").mkdir(exist_ok=True)
    splits = {}
    for split, segs in (("train", train_segs), ("val", val_segs)):
        ids = np.concatenate([np.array(e.ids, dtype=np.uint16) for e in tok.encode_batch(segs)])
        ids.tofile(run_dir / "tokens" / f"{split}.bin")
        splits[split] = {"tokens": int(len(ids)), "segments": len(segs), "bp": sum(map(len, segs))}
    meta = {"kind": "bpe", "vocab_size": tok.get_vocab_size(), "dtype": "uint16", "pad_id": 1, "mask_id": 4,
            "special_ids": [0, 1, 2, 3, 4], "splits": splits,
            "bp_per_token": splits["train"]["bp"] / splits["train"]["tokens"],
            "tokenizer_sha256": file_hash(run_dir / "tokenizer.json")}
    (run_dir / "tokens" / "meta.json").write_text(json.dumps(meta, indent=2))
    return run_dir


# a tiny model and run: every test below trains it for a few steps in a few seconds
TINY = ["--run.device=cpu", "--model.vocab_size=48", "--model.pad_token_id=1", "--model.hidden_size=32",
        "--model.num_layers=2", "--model.num_heads=2", "--model.ffn_size=64", "--model.max_seq_len=32",
        "--pretrain.seq_len=32", "--pretrain.warmup_steps=2", "--pretrain.lr=3e-3", "--pretrain.log_interval=1",
        "--pretrain.eval_interval=3", "--pretrain.eval_batches=2", "--pretrain.ckpt_interval=3"]


def tiny_args(run_dir: Path, *extra: str, steps: int = 6, batch: int = 4, dropout: float = 0.0) -> list[str]:
    return ["--config", str(ROOT / "configs" / "demo.toml"), f"--run.out_dir={run_dir}", *TINY,
            f"--pretrain.max_steps={steps}", f"--pretrain.batch_size={batch}", f"--model.dropout={dropout}",
            f"--model.attention_dropout={dropout}", *extra]


# One thread per process: on a small shared machine, torch's default threads fight each other (10x slower).


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pretrain_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_script("03_pretrain.py", *args, timeout=timeout)


def torchrun(*args: str, nproc: int = 2, timeout: float = 300, script: Path = ROOT / "03_pretrain.py"
             ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           str(script), *args], cwd=ROOT, env=SCRIPT_ENV, capture_output=True, text=True,
                          timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def read_log(run_dir: Path) -> list[dict]:
    with open(run_dir / "pretrain_log.csv", newline="") as f:
        return list(csv.DictReader(f))


def train_losses(run_dir: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["loss"]) for r in read_log(run_dir) if r["loss"]}


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "final" / "model.pt", weights_only=True)


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory) -> Path:
    return make_token_run_dir(tmp_path_factory.mktemp("tokens") / "run")


def fresh_run_dir(tokens_dir: Path, tmp_path: Path, name: str) -> Path:
    """A run dir holding only 02's outputs (copied from the module's fixture)."""
    run_dir = tmp_path / name
    run_dir.mkdir()
    shutil.copy(tokens_dir / "tokenizer.json", run_dir)
    shutil.copytree(tokens_dir / "tokens", run_dir / "tokens")
    return run_dir


# -----------------------------------------------------------------------------
# pieces: masking, data order, schedule


def test_masking_80_10_10_never_specials_static_shape_and_same_on_any_rank_split():
    special = [0, 1, 2, 3, 4]
    masker = pretrain.Masker(40, special, mask_id=4, mask_prob=0.15, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 40, (64, 256), generator=g)
    ids[:, ::16] = 0  # <s> / </s> in the stream: never targets
    ids[:, 8::16] = 2
    inputs, positions, labels = masker(ids, seed=123, global_rows=64, rows=slice(0, 64))
    assert positions.shape == labels.shape == (64, round(0.15 * 256))  # static: K per row, whatever the data
    assert all(len(set(row)) == positions.shape[1] for row in positions.tolist())  # K distinct positions
    target = torch.zeros_like(ids, dtype=torch.bool).scatter(1, positions, labels != -100)  # (B, T)
    assert not target[ids < 5].any(), "a special token was masked"
    assert torch.equal(labels[labels != -100], ids.gather(1, positions)[labels != -100])
    assert torch.equal(inputs[~target], ids[~target]), "a non-target token was changed"
    share = target.sum().item() / (ids >= 5).sum().item()  # BERT: 15% of the non-special tokens on average
    assert abs(share - 0.15) < 0.005
    n = target.sum().item()
    masked = (inputs[target] == 4).sum().item() / n
    kept = (inputs[target] == ids[target]).sum().item() / n
    assert abs(masked - 0.8) < 0.03 and abs(kept - 0.1 - 0.1 / 35) < 0.03  # a random token may equal the original
    assert (inputs[target] >= 5).sum().item() / n == pytest.approx(0.2, abs=0.03)  # random + kept: real tokens only
    # rank r of 4, holding rows [16r, 16r+16), sees exactly what one process holding all 64 rows sees
    for r in range(4):
        rows = slice(16 * r, 16 * r + 16)
        part = masker(ids[rows], seed=123, global_rows=64, rows=rows)
        assert all(torch.equal(a, b[rows]) for a, b in zip(part, (inputs, positions, labels)))
    assert not torch.equal(masker(ids, seed=124, global_rows=64, rows=slice(0, 64))[1], positions)  # per seed


def test_block_stream_epochs_are_permutations_and_position_resumes(tmp_path):
    np.arange(10 * 8, dtype=np.uint16).tofile(tmp_path / "t.bin")
    s = pretrain.BlockStream(tmp_path / "t.bin", 8, seed=1)
    assert s.n_blocks == 10
    epoch0 = np.concatenate([s.take(3) for _ in range(3)])  # 9 of 10 blocks; the 10th waits for epoch 1
    assert len(set(epoch0.tolist())) == 9 and s.epoch == 0
    later = [s.take(3) for _ in range(3)]
    assert s.epoch == 1
    resumed = pretrain.BlockStream(tmp_path / "t.bin", 8, seed=1)
    resumed.epoch, resumed.index = 0, 9
    assert all(np.array_equal(resumed.take(3), x) for x in later)
    x = s.read(np.array([2, 0]), torch.device("cpu"))
    assert x.dtype == torch.int64 and x.tolist() == [list(range(16, 24)), list(range(0, 8))]


def test_lr_is_linear_warmup_then_linear_decay():
    from shelf.config import PretrainConfig
    pc = PretrainConfig(lr=1e-3, min_lr=1e-5, warmup_steps=10, max_steps=110)
    lrs = [pretrain.lr_at(s, pc) for s in range(110)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-3)
    assert lrs[60] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert pretrain.lr_at(110, pc) == pytest.approx(1e-5)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11])) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_no_weight_decay_on_biases_and_norms():
    cfg = ModelConfig(vocab_size=16, hidden_size=32, num_layers=1, num_heads=2, ffn_size=64, max_seq_len=16)
    from shelf.config import PretrainConfig
    opt = pretrain.configure_optimizer(MaskedLM(cfg), PretrainConfig(weight_decay=0.1), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=48, hidden_size=64, num_layers=2, num_heads=4, ffn_size=128, max_seq_len=32,
                      dropout=0.0, attention_dropout=0.0)
    from shelf.config import PretrainConfig
    net = MaskedLM(cfg)
    opt = pretrain.configure_optimizer(net, PretrainConfig(lr=3e-3, weight_decay=0.0), torch.device("cpu"))
    masker = pretrain.Masker(48, [0, 1, 2, 3, 4], 4, 0.3, torch.device("cpu"))
    ids = torch.randint(5, 48, (4, 32), generator=torch.Generator().manual_seed(0))
    inputs, positions, labels = masker(ids, seed=7, global_rows=4, rows=slice(0, 4))
    losses = []
    for _ in range(150):
        loss = pretrain.mlm_loss(net(inputs, positions=positions), labels) / (labels != -100).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[0] > 3.0 and losses[-1] < 0.05, (losses[0], losses[-1])


# -----------------------------------------------------------------------------
# one process vs DDP vs FSDP2 (gloo, 2 processes): same global batch, same losses and weights


@pytest.fixture(scope="module")
def single_run(tokens_dir, tmp_path_factory) -> Path:
    """6 steps in one process, global batch 4, no dropout (dropout streams differ per rank by design)."""
    run_dir = fresh_run_dir(tokens_dir, tmp_path_factory.mktemp("single"), "run")
    ok(pretrain_script(*tiny_args(run_dir, batch=4)))
    return run_dir


def assert_same_run(a: Path, b: Path, tol: float) -> None:
    la, lb = train_losses(a), train_losses(b)
    assert list(la) == list(range(1, 7)) and list(lb) == list(la)
    assert max(abs(la[s] - lb[s]) for s in la) < tol, (la, lb)
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < tol


def test_ddp_two_processes_match_one_process(single_run, tokens_dir, tmp_path):
    run_dir = fresh_run_dir(tokens_dir, tmp_path, "ddp")
    out = ok(torchrun(*tiny_args(run_dir, "--pretrain.parallel=ddp", batch=2)))  # 2 ranks x 2 = 4
    assert "2 x cpu (DDP)" in out.stdout
    assert_same_run(single_run, run_dir, 1e-5)  # guards against gloo summing instead of averaging (pytorch#162338)


def test_fsdp_two_processes_match_one_process_and_its_checkpoint_loads_on_one(single_run, tokens_dir, tmp_path):
    run_dir = fresh_run_dir(tokens_dir, tmp_path, "fsdp")
    # 2 ranks x 1 row x 2 accumulated micro-batches = the same global batch of 4
    # (with activation checkpointing, as the big presets run: it recomputes, so it changes no number)
    out = ok(torchrun(*tiny_args(run_dir, "--pretrain.parallel=fsdp", "--pretrain.grad_accum=2",
                                 "--pretrain.activation_checkpointing=true", batch=1)))
    assert "2 x cpu (FSDP2)" in out.stdout
    assert_same_run(single_run, run_dir, 1e-4)
    step3 = run_dir / "checkpoints" / "step-3"
    assert (step3 / ".metadata").is_file() and (step3 / "rng-rank1.pt").is_file()  # a sharded DCP checkpoint
    final = MaskedLM(ModelConfig(vocab_size=48, hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, max_seq_len=32))
    final.load_state_dict(final_weights(run_dir))  # the gathered final weights: the plain, complete state dict

    # the step-3 checkpoint written by 2 ranks, resumed by 1 process (batch 4): steps 4-6 as before
    one = tmp_path / "fsdp_on_one"
    shutil.copytree(run_dir, one)
    shutil.rmtree(one / "checkpoints" / "step-6")
    shutil.rmtree(one / "final")
    out = ok(pretrain_script(*tiny_args(one, "--pretrain.parallel=fsdp", batch=4), "--resume"))
    assert "resumed from" in out.stdout and "written by 2 processes" in out.stdout
    assert_same_run(run_dir, one, 1e-4)


def test_meta_device_init_and_activation_checkpointing_change_nothing(single_run, tokens_dir, tmp_path):
    run_dir = fresh_run_dir(tokens_dir, tmp_path, "meta_ac")
    ok(pretrain_script(*tiny_args(run_dir, "--pretrain.meta_init=true", "--pretrain.activation_checkpointing=true",
                                  batch=4)))
    assert_same_run(single_run, run_dir, 1e-6)  # same seed -> same initial weights; recomputation is exact


# -----------------------------------------------------------------------------
# exact resume: N steps, stop, resume N more == 2N straight, bit for bit (weights and logged losses)


def assert_identical_runs(a: Path, b: Path) -> None:
    log_a, log_b = read_log(a), read_log(b)
    steps = [int(r["step"]) for r in log_b if r["loss"]]
    assert steps == list(range(1, 7)), "resumed log must hold each step once"
    assert [r["loss"] for r in log_a if r["loss"]] == [r["loss"] for r in log_b if r["loss"]]
    assert [r["val_loss"] for r in log_a if r["val_loss"]] == [r["val_loss"] for r in log_b if r["val_loss"]]
    wa, wb = final_weights(a), final_weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_exact_resume_one_process_and_a_nan_stops_cleanly(tokens_dir, tmp_path):
    # dropout on: the resumed run must also restore the RNG that drives it
    straight = fresh_run_dir(tokens_dir, tmp_path, "straight")
    ok(pretrain_script(*tiny_args(straight, dropout=0.1)))
    stopped = fresh_run_dir(tokens_dir, tmp_path, "stopped")
    out = ok(pretrain_script(*tiny_args(stopped, "--pretrain.stop_at=3", dropout=0.1)))
    assert "stopped at step 3" in out.stdout and not (stopped / "final").exists()
    assert complete_checkpoints(stopped / "checkpoints") == [stopped / "checkpoints" / "step-3"]

    # a resume with an absurd lr blows up: one line naming the step and the last good checkpoint, exit 1
    out = pretrain_script(*tiny_args(stopped, "--pretrain.lr=1e30", dropout=0.1), "--resume")
    assert out.returncode == 1, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: step [45]: loss .* not finite; .*step-3 .*", last), last
    assert "Traceback" not in out.stderr and not (stopped / "final").exists()
    assert complete_checkpoints(stopped / "checkpoints") == [stopped / "checkpoints" / "step-3"]

    # ... and left nothing behind: resuming properly gives the straight run, bit for bit
    ok(pretrain_script(*tiny_args(stopped, dropout=0.1), "--resume"))
    assert_identical_runs(straight, stopped)


def test_exact_resume_ddp(tokens_dir, tmp_path):
    straight = fresh_run_dir(tokens_dir, tmp_path, "straight")
    accum = "--pretrain.grad_accum=2"  # DDP's no_sync path too
    ok(torchrun(*tiny_args(straight, accum, batch=2, dropout=0.1)))
    # "stop" after step 3: the run dir as it was then (step-3 checkpoint, and a log that ran ahead of it)
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-6")
    shutil.rmtree(resumed / "final")
    out = ok(torchrun(*tiny_args(resumed, accum, batch=2, dropout=0.1), "--resume"))
    assert "resumed from" in out.stdout and "not bit-exact" not in out.stdout
    assert_identical_runs(straight, resumed)


# -----------------------------------------------------------------------------
# checkpoints survive crashes; failures stop with one line


def test_interrupted_checkpoint_write_leaves_previous_loadable(tmp_path, monkeypatch):
    from shelf.distributed import World
    import shelf.checkpoint
    cfg = ModelConfig(vocab_size=16, hidden_size=32, num_layers=1, num_heads=2, ffn_size=64, max_seq_len=16)
    net = MaskedLM(cfg)
    from shelf.config import PretrainConfig
    opt = pretrain.configure_optimizer(net, PretrainConfig(), torch.device("cpu"))
    d, ckpt = World(), tmp_path / "checkpoints"
    extra = {"step": 2, "data": {"epoch": 0, "index": 8}, "config": {}, "world_size": 1}
    pretrain.save_checkpoint(ckpt, 2, net, opt, extra, d, sharded=False, keep=3)
    saved = {k: v.clone() for k, v in net.state_dict().items()}

    def crash(obj, path):  # the process dies half-way through writing state.pt
        Path(path).write_bytes(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt
    monkeypatch.setattr(shelf.checkpoint, "atomic_torch_save", crash)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        pretrain.save_checkpoint(ckpt, 4, net, opt, {**extra, "step": 4}, d, sharded=False, keep=3)
    monkeypatch.undo()
    assert (ckpt / "step-4.tmp").exists() and not (ckpt / "step-4").exists()
    assert complete_checkpoints(ckpt) == [ckpt / "step-2"]
    fresh = MaskedLM(cfg)
    fresh_opt = pretrain.configure_optimizer(fresh, PretrainConfig(), torch.device("cpu"))
    extra_loaded = pretrain.load_checkpoint(ckpt / "step-2", fresh, fresh_opt, d, sharded=False)
    assert extra_loaded["step"] == 2 and extra_loaded["data"] == {"epoch": 0, "index": 8}
    assert all(torch.equal(fresh.state_dict()[k], saved[k]) for k in saved)
    # the next successful save clears the debris and keeps only the last `keep`
    for step in (6, 8):
        pretrain.save_checkpoint(ckpt, step, net, opt, {**extra, "step": step}, d, sharded=False, keep=2)
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-6", "step-8"]


def test_token_files_of_another_tokenizer_are_refused(tokens_dir, tmp_path):
    run_dir = fresh_run_dir(tokens_dir, tmp_path, "run")
    tok = json.loads((run_dir / "tokenizer.json").read_text())
    (run_dir / "tokenizer.json").write_text(json.dumps(tok, indent=1))  # same tokens, other bytes: other sha256
    out = pretrain_script(*tiny_args(run_dir))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("error: ") and "another tokenizer" in out.stderr
    assert "Traceback" not in out.stderr and not (run_dir / "checkpoints").exists()


# -----------------------------------------------------------------------------
# --dry-run: the plan for the big presets, in seconds, on the meta device


@pytest.mark.parametrize("preset, billions", [("dnafm_7b", (7.0, 7.5)), ("agront_1b", (0.95, 1.05))])
def test_dry_run_big_presets(preset, billions):
    out = ok(pretrain_script("--config", str(ROOT / "configs" / f"{preset}.toml"), "--dry-run"))
    text = out.stdout
    n_params = int(re.match(rf"{preset}: ([\d,]+) parameters", text).group(1).replace(",", ""))
    assert billions[0] < n_params / 1e9 < billions[1]
    assert "FLOPs per token" in text and "tokens per step" in text and "FSDP2 over" in text
    assert "activations, checkpointing on" in text and "activations, checkpointing off" in text
    assert "fits in H100's 80 GB <- configured" in text  # the configured plan fits
    assert "GPU-hours" in text


# -----------------------------------------------------------------------------
# on real DNA: 01 -> 02 -> 03 on a 2.3 Mbp slice of hg38 chr2, a small model, a few hundred steps


def test_real_dna_beats_the_most_frequent_token(shared_data, tmp_path):
    run_dir = tmp_path / "run"
    common = ["--config", str(ROOT / "configs" / "demo.toml"), f"--run.out_dir={run_dir}"]
    slice_ = shared_data / "genome" / "hg38_chr2_1-2333275.fa.gz"
    ok(run_script("01_preprocess.py", *common, f"--preprocess.sources=['{slice_}']", "--preprocess.val_fraction=0.05"))
    ok(run_script("02_train_tokenizer.py", *common, "--tokenizer.vocab_size=256", "--tokenizer.sample_fraction=1.0"))
    ok(pretrain_script(*common, "--model.vocab_size=256", "--model.hidden_size=64", "--model.num_layers=2",
                       "--model.num_heads=4", "--model.ffn_size=256", "--model.max_seq_len=64", "--model.dropout=0.0",
                       "--model.attention_dropout=0.0", "--pretrain.seq_len=64", "--pretrain.batch_size=32",
                       "--pretrain.max_steps=200", "--pretrain.warmup_steps=20", "--pretrain.lr=3e-3",
                       "--pretrain.eval_interval=100", "--pretrain.eval_batches=8", "--pretrain.ckpt_interval=100",
                       "--pretrain.log_interval=20"))
    log = read_log(run_dir)
    evals = [r for r in log if r["val_loss"]]
    assert [int(r["step"]) for r in evals] == [100, 200]
    first, last = evals[0], evals[-1]
    assert float(last["val_loss"]) < float(first["val_loss"])
    # ~10% vs ~2.5% at 200 steps: the model uses the context, not just token frequencies
    assert float(last["val_acc"]) > 2 * float(last["val_const_acc"]), last
    assert len([r for r in log if r["loss"]]) == 10 and (run_dir / "loss.png").stat().st_size > 10_000
    weights = final_weights(run_dir)
    model = MaskedLM(ModelConfig(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, ffn_size=256,
                                 max_seq_len=64))
    model.load_state_dict(weights)  # the contract with 04: a plain, complete, fp32 MaskedLM state dict
    assert all(v.dtype == torch.float32 for v in weights.values())
    assert (run_dir / "config.toml").is_file() and (run_dir / "final" / "config.toml").is_file()


def test_resume_with_another_model_shape_is_one_line_not_a_traceback(tmp_path):
    """The [model] saved with a checkpoint is compared before any weight is loaded (a shape mismatch
    used to end in set_state_dict's traceback)."""
    from shelf.checkpoint import load_checkpoint, save_checkpoint
    from shelf.config import PretrainConfig
    from shelf.distributed import World
    from shelf.errors import UserError
    small = ModelConfig(vocab_size=16, hidden_size=32, num_layers=1, num_heads=2, ffn_size=64, max_seq_len=16)
    wide = ModelConfig(vocab_size=16, hidden_size=64, num_layers=1, num_heads=2, ffn_size=64, max_seq_len=16)
    net = MaskedLM(small)
    opt = pretrain.configure_optimizer(net, PretrainConfig(), torch.device("cpu"))
    extra = {"step": 2, "data": {"epoch": 0, "index": 0}, "config": {"model": vars(small).copy()}}
    path = save_checkpoint(tmp_path / "checkpoints", 2, net, opt, extra, World(), sharded=False, keep=3)
    other = MaskedLM(wide)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(UserError, match="another \\[model\\] config"):
        load_checkpoint(path, other, pretrain.configure_optimizer(other, PretrainConfig(), torch.device("cpu")),
                        World(), sharded=False, model_config=wide)
    assert all(torch.equal(other.state_dict()[k], before[k]) for k in before)  # nothing was touched
    assert load_checkpoint(path, net, opt, World(), sharded=False, model_config=small)["step"] == 2
    # a checkpoint of older code lacks the [model] keys added since: they take their defaults and it resumes
    older = {k: v for k, v in vars(small).items() if k not in ("tie_word_embeddings", "token_dropout", "mask_token_id")}
    extra["config"]["model"] = older
    path = save_checkpoint(tmp_path / "checkpoints", 3, net, opt, extra | {"step": 3}, World(), sharded=False, keep=3)
    assert load_checkpoint(path, net, opt, World(), sharded=False, model_config=small)["step"] == 3
    with pytest.raises(UserError, match="another \\[model\\] config"):  # ... but not with a non-default one
        load_checkpoint(path, net, opt, World(), sharded=False,
                        model_config=dataclasses.replace(small, tie_word_embeddings=False))


LEAVE = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from shelf.distributed import setup_distributed, teardown_distributed
world, out = setup_distributed("cpu"), Path({out!r})
try:
    if world.rank == 0:  # rank 0 still busy (writing the final weights) when rank 1 is done
        time.sleep(2)
        (out / "rank0-busy-until-here").touch()
    if {fail}:
        raise RuntimeError("a rank's error")
finally:
    teardown_distributed()
    (out / f"rank{{world.rank}}-left-seeing-{{int((out / 'rank0-busy-until-here').exists())}}").touch()
"""


@pytest.mark.parametrize("fail", [False, True])
def test_ranks_leave_the_process_group_together_after_success_and_at_once_after_an_error(tmp_path, fail):
    # the CI failure it prevents: rank 1 tearing gloo down while rank 0 still wrote its files got SIGABRT
    script = tmp_path / "leave.py"
    script.write_text(LEAVE.format(root=str(ROOT), out=str(tmp_path), fail=fail))
    torchrun(script=script, timeout=120)
    # success: rank 1 waits for rank 0 before it leaves; an error: it leaves at once (a barrier could hang)
    assert (tmp_path / f"rank1-left-seeing-{int(not fail)}").exists(), sorted(p.name for p in tmp_path.iterdir())
