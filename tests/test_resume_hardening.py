"""03's checkpoints under attack and accident: a corrupt newest checkpoint (resume from the previous one, exactly),
a crafted torch.distributed.checkpoint .metadata (never unpickled), non-finite state (never saved), another
tokenizer or a max_steps already passed (refused in one line), a killed run's temp files (removed), the logged
loss after a resume mid log interval (exact), and token files over 4 GiB."""

from __future__ import annotations

import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.utils._pytree import tree_leaves

from shelf.checkpoint import SUMS, complete_checkpoints, hash_files, load_checkpoint, save_checkpoint
from shelf.config import PretrainConfig
from shelf.distributed import World
from shelf.errors import UserError
from shelf.files import file_hash
from model import MaskedLM, ModelConfig, mlm_loss
from test_pretrain import (final_weights, fresh_run_dir, make_token_run_dir, ok, one_thread, pretrain, pretrain_script,
                           read_log, tiny_args, tokens_dir)

assert one_thread and tokens_dir  # fixtures, used by name

TIMING = ("tokens_per_s", "mfu", "mem_gb")


def args(run_dir: Path, *extra: str) -> list[str]:
    """Log rows every 2 steps, checkpoints every 3: step-3 is in the middle of a log interval. Dropout on: a
    resume must restore its RNG."""
    return tiny_args(run_dir, "--pretrain.log_interval=2", *extra, dropout=0.1)


@pytest.fixture(scope="module")
def straight(tokens_dir, tmp_path_factory) -> Path:
    """6 steps uninterrupted: checkpoints step-3 and step-6."""
    run_dir = fresh_run_dir(tokens_dir, tmp_path_factory.mktemp("straight"), "run")
    ok(pretrain_script(*args(run_dir)))
    return run_dir


def killed_after_step_3(straight: Path, tmp_path: Path) -> Path:
    """The run dir as a crash during steps 4-6 leaves it: step-3 and step-6 (to corrupt, or not there), no final/."""
    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    shutil.rmtree(run_dir / "final")
    return run_dir


def log_rows(run_dir: Path) -> list[dict]:  # every column but the timings
    return [{k: v for k, v in row.items() if k not in TIMING} for row in read_log(run_dir)]


def one_line_error(out: subprocess.CompletedProcess, code: int, *words: str) -> str:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == code and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert lines[-1].startswith("error: ") and all(w in lines[-1] for w in words), lines[-1]
    assert sum(line.startswith("error: ") for line in lines) == 1
    return lines[-1]


@pytest.mark.parametrize("damage", ["none", "truncated", "zero-length", "flipped byte"])
def test_resume_after_a_kill_or_from_a_corrupt_newest_checkpoint_is_exact(straight, tmp_path, damage):
    run_dir = killed_after_step_3(straight, tmp_path)
    state = run_dir / "checkpoints" / "step-6" / "state.pt"
    data = bytearray(state.read_bytes())
    if damage == "none":  # killed before step-6 was complete
        shutil.rmtree(state.parent)
    elif damage == "flipped byte":
        data[len(data) // 2] ^= 0xFF
        state.write_bytes(data)
    else:
        state.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    out = ok(pretrain_script(*args(run_dir), "--resume"))
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning: ")]
    assert "Traceback" not in out.stderr and len(warnings) == (damage != "none"), out.stderr
    if warnings:
        assert warnings[0].startswith(f"warning: {state.parent}: state.pt corrupt") and warnings[0].endswith("step-3")
    assert f"resumed from {state.parent.with_name('step-3')} (step 3" in out.stdout
    assert log_rows(run_dir) == log_rows(straight)  # the row at step 4: the mean of steps 3 and 4, as uninterrupted
    wa, wb = final_weights(straight), final_weights(run_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (run_dir / "final" / "meta.json").read_bytes() == (straight / "final" / "meta.json").read_bytes()
    assert subprocess.run(["sha256sum", "--quiet", "-c", SUMS], cwd=state.parent).returncode == 0  # by hand, too


class Boom:  # a pickle that runs code when loaded: it creates the file `marker`
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def to_dcp(ckpt: Path) -> None:
    """Turn a one-process checkpoint into the torch.distributed.checkpoint layout that FSDP writes."""
    state = torch.load(ckpt / "state.pt", weights_only=True)
    (ckpt / "state.pt").unlink()
    dcp.save(state, checkpoint_id=ckpt)
    (ckpt / SUMS).write_text("".join(f"{sha}  {name}\n" for name, sha in hash_files(ckpt, World()).items()))


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # dcp in one process, as intended
def test_a_crafted_dcp_metadata_is_never_unpickled(straight, tmp_path):
    run_dir = killed_after_step_3(straight, tmp_path)
    step3, step6, marker = run_dir / "checkpoints" / "step-3", run_dir / "checkpoints" / "step-6", tmp_path / "pwned"
    to_dcp(step3)
    to_dcp(step6)
    (step6 / ".metadata").write_bytes(pickle.dumps(Boom(marker)))
    out = ok(pretrain_script(*args(run_dir), "--resume"))
    assert not marker.exists() and "Traceback" not in out.stderr
    assert f"warning: {step6}: .metadata corrupt" in out.stderr and f"resumed from {step3}" in out.stdout
    wa, wb = final_weights(straight), final_weights(run_dir)  # step-3 in the dcp layout resumed exactly
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # loaded directly: refused too, and a checkpoint with no intact one beside it is a one-line error
    to_dcp(step6)
    (step6 / ".metadata").write_bytes(pickle.dumps(Boom(marker)))
    net = MaskedLM(ModelConfig(**torch.load(step3 / "meta.pt", weights_only=True)["config"]["model"]))
    opt = pretrain.configure_optimizer(net, PretrainConfig(), torch.device("cpu"))
    with pytest.raises(UserError, match=r"\.metadata corrupt"):
        load_checkpoint(step6, net, opt, World(), sharded=False)
    shutil.rmtree(step3)
    out = pretrain_script(*args(run_dir), "--resume")
    one_line_error(out, 1, "step-6: .metadata corrupt", "--restart")
    assert not marker.exists()


@pytest.mark.parametrize("where", ["weights", "optimizer state"])
def test_state_that_is_not_finite_is_never_saved(tmp_path, where):
    net = MaskedLM(ModelConfig(vocab_size=16, hidden_size=32, num_layers=1, num_heads=2, ffn_size=64, max_seq_len=16))
    opt = pretrain.configure_optimizer(net, PretrainConfig(), torch.device("cpu"))
    mlm_loss(net(torch.randint(5, 16, (2, 16))), torch.randint(5, 16, (2, 16))).backward()
    opt.step()
    ckpt, extra = tmp_path / "checkpoints", {"step": 2, "data": {"epoch": 0, "index": 0}, "config": {}}
    save_checkpoint(ckpt, 2, net, opt, extra, World(), sharded=False, keep=3)
    with torch.no_grad():
        (net.encoder.wte.weight if where == "weights" else next(iter(opt.state.values()))["exp_avg_sq"])[0, 0] = np.inf
    with pytest.raises(UserError, match=rf"step 4: .* not finite; not saved. Last good checkpoint: {ckpt}/step-2 "):
        save_checkpoint(ckpt, 4, net, opt, {**extra, "step": 4}, World(), sharded=False, keep=3)
    assert [p.name for p in ckpt.iterdir()] == ["step-2"]


def test_a_huge_lr_stops_with_every_checkpoint_finite_and_names_one(straight, tmp_path):
    run_dir = killed_after_step_3(straight, tmp_path)
    shutil.rmtree(run_dir / "checkpoints" / "step-6")
    out = pretrain_script(*args(run_dir, "--pretrain.lr=1e30", "--pretrain.ckpt_interval=1"), "--resume")
    line = one_line_error(out, 1, "not finite", "Last good checkpoint: ")
    named = Path(line.split("Last good checkpoint: ")[1].split()[0])
    assert named in complete_checkpoints(run_dir / "checkpoints")
    for ckpt in complete_checkpoints(run_dir / "checkpoints"):
        state = torch.load(ckpt / "state.pt", weights_only=True)
        assert all(torch.isfinite(t).all() for t in tree_leaves(state) if torch.is_tensor(t) and t.is_floating_point())


def test_resume_with_another_tokenizer_or_past_max_steps_is_refused_and_changes_nothing(straight, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    files = ["pretrain_log.csv", "config.toml", "final/model.pt", "final/meta.json", "checkpoints/step-6/meta.pt"]
    before = {name: (run_dir / name).read_bytes() for name in files}
    out = pretrain_script(*args(run_dir, "--pretrain.max_steps=4"), "--resume")
    one_line_error(out, 2, "pretrain.max_steps = 4", "step-6")
    make_token_run_dir(run_dir, seed=1)  # another tokenizer, and token files that match it
    one_line_error(pretrain_script(*args(run_dir), "--resume"), 1, "step-6", "another tokenizer.json")
    assert all((run_dir / name).read_bytes() == data for name, data in before.items())


def test_a_killed_runs_temp_files_are_removed_and_final_meta_names_the_tokenizer(straight, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    leftovers = [run_dir / "checkpoints" / "step-9.tmp" / "state.pt", run_dir / "final" / ".model.pt.x1y2.tmp"]
    for path in leftovers:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
    ok(pretrain_script(*args(run_dir), "--resume"))  # at max_steps: nothing to train
    assert not leftovers[0].parent.exists() and not leftovers[1].exists()
    assert (run_dir / "final" / "model.pt").read_bytes() == (straight / "final" / "model.pt").read_bytes()
    meta = (run_dir / "final" / "meta.json").read_text()
    assert '"step": 6' in meta and file_hash(run_dir / "tokenizer.json") in meta


def test_a_token_file_over_4_gib_reads_the_right_rows_past_4_gib(tmp_path):
    path, seq_len, size = tmp_path / "train.bin", 4096, 5 * 2**30
    block = np.arange(1, seq_len + 1, dtype=np.uint16).tobytes()
    with open(path, "wb") as f:  # sparse: 5 GiB of zeros that take no disk, and two blocks of 1, 2, 3, ...
        f.truncate(size)
        for offset in (2**32, size - len(block)):  # the block at byte 4 GiB, and the last one
            f.seek(offset)
            f.write(block)
    stream = pretrain.BlockStream(path, seq_len, seed=0)
    assert stream.n_blocks == size // len(block)
    at_4_gib = 2**32 // len(block)
    rows = stream.read(np.array([at_4_gib, stream.n_blocks - 1, at_4_gib - 1]), torch.device("cpu"))
    assert rows[0].tolist() == rows[1].tolist() == list(range(1, seq_len + 1)) and not rows[2].any()
