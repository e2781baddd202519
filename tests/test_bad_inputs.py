"""Every script against a catalogue of bad inputs, as an adversarial user would feed them.

For each case: no traceback; a non-zero exit with exactly one `error:` line that names the file, line or
key; and every output already in the run folder byte-identical afterwards (nothing is lost). Recoverable
inputs (a corrupt newest checkpoint beside an older good one) give one `warning:` line and carry on.
"""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, run_script

DEMO = str(ROOT / "configs" / "demo.toml")
SMALL = ["--model.hidden_size=32", "--model.num_layers=1", "--model.num_heads=2", "--model.ffn_size=64"]
PRETRAIN = ["--pretrain.max_steps=4", "--pretrain.warmup_steps=1", "--pretrain.eval_interval=2",
            "--pretrain.ckpt_interval=2", "--pretrain.eval_batches=1", "--pretrain.batch_size=4"]
FINETUNE = ["--finetune.num_seeds=1", "--finetune.max_steps=2", "--finetune.eval_interval=2",
            "--finetune.probe=false", "--finetune.tasks=[promoter_synth]"]


def step(script: str, run: Path, *args: str):
    return run_script(script, "--config", DEMO, f"--run.out_dir={run}", *SMALL, *args)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A complete tiny demo run: segments, tokenizer and tokens, two checkpoints, final weights, fine-tuning."""
    run = tmp_path_factory.mktemp("finished") / "run"
    for script, args in [("01_preprocess.py", []), ("02_train_tokenizer.py", []), ("03_pretrain.py", PRETRAIN),
                         ("04_finetune_nt.py", FINETUNE)]:
        r = step(script, run, *args)
        assert r.returncode == 0, f"{script}: {r.stderr[-2000:]}"
    return run


def snapshot(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


def write_task(folder: Path, train: str, test: str | None = None) -> Path:
    """A local NT-format task `folder/t/`; -> the data_dir to pass to 04."""
    (folder / "t").mkdir(parents=True)
    (folder / "t" / "train.fna").write_text(train)
    if test is not None:
        (folder / "t" / "test.fna").write_text(test)
    return folder


GOOD_TASK = "".join(f">s{i}|{i % 2}\n{'ACGT' * 10 if i % 2 else 'TTGCA' * 8}\n" for i in range(40))
LOCAL = ["--finetune.benchmark=local", "--finetune.tasks=[t]", "--finetune.inits=[scratch]",
         "--finetune.num_seeds=1", "--finetune.max_steps=2", "--finetune.probe=false"]


def make(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
    return path


def overwrite(path: Path, data: str | bytes) -> list[str]:  # a run's own file broken: no extra arguments
    make(path, data)
    return []


def truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def replace_tokenizer(run: Path) -> None:
    """Another valid tokenizer.json of the same size in place: the ids of A and C swapped."""
    tok = json.loads((run / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["A"], vocab["C"] = vocab["C"], vocab["A"]
    (run / "tokenizer.json").write_text(json.dumps(tok))


# (id, script, mutate(run, tmp) -> extra args, what the one error line must name)
CASES = [
    # configuration values: out of range, NaN, negative
    ("lr-nan", "03_pretrain.py", lambda run, tmp: ["--pretrain.lr=nan"], "pretrain.lr"),
    ("beta1-1.5", "03_pretrain.py", lambda run, tmp: ["--pretrain.beta1=1.5"], "pretrain.beta1"),
    ("eps-negative", "03_pretrain.py", lambda run, tmp: ["--pretrain.eps=-1e-8"], "pretrain.eps"),
    ("weight-decay-negative", "04_finetune_nt.py", lambda run, tmp: ["--finetune.weight_decay=-0.1"],
     "finetune.weight_decay"),
    ("ft-lr-nan", "04_finetune_nt.py", lambda run, tmp: ["--finetune.lr=nan"], "finetune.lr"),
    ("kmer-9", "04_finetune_nt.py", lambda run, tmp: ["--finetune.kmer=9"], "finetune.kmer = 9: expected 0"),
    ("vocab-negative", "02_train_tokenizer.py", lambda run, tmp: ["--tokenizer.vocab_size=-5"], "tokenizer.vocab_size"),
    ("min-frequency-negative", "02_train_tokenizer.py", lambda run, tmp: ["--tokenizer.min_frequency=-1"],
     "tokenizer.min_frequency"),
    ("encode-batch-negative", "02_train_tokenizer.py", lambda run, tmp: ["--tokenizer.encode_batch_size=-3"],
     "tokenizer.encode_batch_size"),
    ("min-len-zero", "01_preprocess.py", lambda run, tmp: ["--preprocess.min_len=0"], "preprocess.min_len"),
    ("unknown-key", "03_pretrain.py", lambda run, tmp: ["--pretrain.lrr=1"], "pretrain.lrr"),
    ("config-not-toml", "01_preprocess.py",
     lambda run, tmp: ["--config", str(make(tmp / "bad.toml", "[run\n"))], "bad.toml"),
    # input files
    ("source-is-directory", "01_preprocess.py", lambda run, tmp: [f"--preprocess.sources=[{tmp}]"], "input"),
    ("out-dir-is-a-file", "01_preprocess.py",
     lambda run, tmp: [f"--run.out_dir={make(tmp / 'f', 'x')}"], "f"),
    ("tokens-meta-wrong-shape", "03_pretrain.py",
     lambda run, tmp: overwrite(run / "tokens" / "meta.json", "[1, 2]"), "meta.json"),
    ("tokens-meta-splits-wrong-shape", "03_pretrain.py",
     lambda run, tmp: overwrite(run / "tokens" / "meta.json", json.dumps(
         {**json.loads((run / "tokens" / "meta.json").read_text()), "splits": [1]})), "meta.json"),
    ("label-overflow", "04_finetune_nt.py",
     lambda run, tmp: [f"--finetune.data_dir={write_task(tmp, '>a|99999999999999999999' + chr(10) + 'ACGT' + chr(10), '')}",
                       *LOCAL], "train.fna:1"),
    ("task-without-test", "04_finetune_nt.py",
     lambda run, tmp: [f"--finetune.data_dir={write_task(tmp, GOOD_TASK)}", *LOCAL], "test.fna"),
    ("weights-not-a-state-dict", "04_finetune_nt.py",
     lambda run, tmp: [f"--finetune.pretrained={make(tmp / 'w.pt', b'junk')}"], "w.pt"),
    ("tokenizer-replaced-after-pretraining", "04_finetune_nt.py",
     lambda run, tmp: replace_tokenizer(run) or ["--finetune.inits=[pretrained]"], "tokenizer"),
    ("segments-with-binary-bytes", "02_train_tokenizer.py",
     lambda run, tmp: overwrite(run / "segments" / "train.txt", b"ACGT\rAC\x00GT\n" * 50), "train.txt:1"),
    ("empty-val-segments", "02_train_tokenizer.py", lambda run, tmp: overwrite(run / "segments" / "val.txt", ""),
     "val.txt"),
    # checkpoints
    ("resume-past-max-steps", "03_pretrain.py", lambda run, tmp: [*PRETRAIN, "--resume", "--pretrain.max_steps=2"],
     "max_steps"),
    ("resume-every-checkpoint-corrupt", "03_pretrain.py",
     lambda run, tmp: [truncate(p, 0.5) for p in run.glob("checkpoints/step-*/state.pt")] and [*PRETRAIN, "--resume"],
     "--restart"),
]


@pytest.mark.parametrize("case, script, mutate, names", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_loses_nothing(finished_run, tmp_path, case, script, mutate, names):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = snapshot(run)
    scratch = tmp_path / "input"
    scratch.mkdir()
    args = mutate(run, scratch)
    touched = {k for k, v in snapshot(run).items() if before.get(k) != v}  # the file the case broke on purpose
    r = step(script, run, *args)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode != 0 and len(errors) == 1, (r.returncode, r.stderr[-3000:])
    assert names in errors[0], errors[0]
    after = snapshot(run)
    lost = [k for k, v in before.items() if k not in touched and after.get(k) != v]
    assert not lost, f"changed or removed by a failed run: {lost}"


@pytest.mark.parametrize("damage", [lambda p: truncate(p, 0.5), lambda p: truncate(p, 0.0), flip_bytes],
                         ids=["truncated", "zero-length", "flipped-bytes"])
def test_corrupt_newest_checkpoint_is_one_warning_and_the_same_weights(finished_run, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    weights = (run / "final" / "model.pt").read_bytes()
    damage(run / "checkpoints" / "step-4" / "state.pt")
    r = step("03_pretrain.py", run, *PRETRAIN, "--resume")
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(warnings) == 1 and "step-4" in warnings[0] and "step-2" in warnings[0], warnings
    assert (run / "final" / "model.pt").read_bytes() == weights  # steps 3-4 again, bit-exact
