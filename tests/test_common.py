"""The shelf: config loading and errors, atomic writes, FASTA reading."""

import gzip
import random
import subprocess
import sys
import textwrap

import pytest

from shelf.config import DEFAULT_CONFIG, Config, config_to_toml, load_config, save_config
from shelf.errors import ConfigError, UserError
from shelf.fasta import read_fasta
from shelf.files import atomic_write
from conftest import ROOT, load_script
from model import MaskedLM

PRESETS = ["demo", "tinydnabert", "agront_1b", "dnafm_7b"]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_loads_and_round_trips(preset, tmp_path):
    cfg, _ = load_config(["--config", str(ROOT / "configs" / f"{preset}.toml")])
    assert cfg.run.name == preset
    # the resolved config written beside an output loads back to the same values
    path = save_config(cfg, tmp_path)
    again, _ = load_config(["--config", str(path)])
    assert again == cfg


def test_default_is_tinydnabert_and_matches_dataclass_defaults():
    cfg, flags = load_config([])
    assert DEFAULT_CONFIG.name == "tinydnabert.toml"
    assert cfg.run.name == "tinydnabert" and flags == set()
    # the dataclass defaults are the tinydnabert preset, so a key a preset omits means "as TinyDNABERT"
    assert cfg == Config()


def test_tinydnabert_preset_has_the_reference_shape():
    cfg, _ = load_config([])
    m = cfg.model
    assert (m.hidden_size, m.num_layers, m.num_heads, m.ffn_size, m.max_seq_len) == (512, 6, 8, 2048, 512)
    assert (cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency, cfg.tokenizer.sample_fraction) == (1024, 4, 0.1)
    assert (cfg.preprocess.min_len, cfg.preprocess.max_len) == (256, 1024)
    p = cfg.pretrain
    assert (p.lr, p.warmup_steps, p.max_steps, p.batch_size, p.weight_decay) == (1e-4, 20000, 200000, 128, 1e-5)


def test_cli_overrides_are_typed():
    cfg, flags = load_config(["--pretrain.lr=3e-4", "--pretrain.max_steps=7", "--pretrain.compile=true",
                              "--run.out_dir=out/x", "--finetune.tasks=[promoter_all, enhancers]",
                              "--preprocess.sources=[\"a.fa\", \"b.fa.gz\"]", "--resume"], flags=("--resume",))
    assert cfg.pretrain.lr == 3e-4 and cfg.pretrain.max_steps == 7 and cfg.pretrain.compile is True
    assert cfg.run.out_dir == "out/x"
    assert cfg.finetune.tasks == ["promoter_all", "enhancers"]
    assert cfg.preprocess.sources == ["a.fa", "b.fa.gz"]
    assert flags == {"--resume"}
    cfg, _ = load_config(["--pretrain.lr=1"])  # an integer where a float is expected is fine
    assert cfg.pretrain.lr == 1.0 and isinstance(cfg.pretrain.lr, float)


@pytest.mark.parametrize("argv, expected", [
    (["--pretrain.lrr=1e-4"], "unknown key 'pretrain.lrr': did you mean 'lr'? (--help lists the keys"),
    (["--pretrian.lr=1e-4"], "unknown section [pretrian]: did you mean 'pretrain'? (valid sections: run, preprocess"),
    (["--pretrain.max_steps=ten"], "--pretrain.max_steps: expected an integer, got 'ten'"),
    (["--pretrain.max_steps=1.5"], "expected an integer, got 1.5"),
    (["--pretrain.compile=yes"], "expected true or false"),
    (["--finetune.tasks=promoter_all"], "expected a list of str"),
    (["--model.hidden_size=100"], "hidden_size"),
    (["--bogus"], "unknown argument '--bogus'"),
    (["--config", "does/not/exist.toml"], "config file not found"),
])
def test_config_errors_name_the_key(argv, expected):
    with pytest.raises(ConfigError) as e:
        load_config(argv)
    assert expected in str(e.value)
    assert e.value.exit_code == 2


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nhidden_size = \"big\"\n")
    with pytest.raises(ConfigError, match=r"bad.toml: model.hidden_size: expected an integer"):
        load_config(["--config", str(bad)])
    bad.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(["--config", str(bad)])
    bad.write_text("[tokenizer]\nvocab = 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'tokenizer.vocab': did you mean 'vocab_size'\?"):
        load_config(["--config", str(bad)])


def test_config_error_from_a_script_is_one_line_exit_2(tmp_path):
    """What a user sees: one line on stderr, exit code 2, no traceback."""
    script = tmp_path / "s.py"
    script.write_text(textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(ROOT)!r})
        from shelf.config import load_config
        from shelf.errors import run_main
        run_main(lambda: load_config())
    """))
    r = subprocess.run([sys.executable, str(script), "--model.num_layerz=3"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("error: --model.num_layerz: unknown key 'model.num_layerz'")
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_config_model_builds(tmp_path):
    cfg, _ = load_config(["--config", str(ROOT / "configs" / "demo.toml")])
    model = MaskedLM(cfg.model)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert "[model]" in config_to_toml(cfg)


def test_atomic_writes_never_leave_half_a_file(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_write(target) as f:
        f.write("old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write("new, half-written")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]  # no temp file left behind
    with atomic_write(target, "w") as f:
        f.write("new\n")
    assert target.read_text() == "new\n"
    assert target.stat().st_mode & 0o644 == 0o644  # readable by others, like a plain open(), not mkstemp's 0600


def test_read_fasta_plain_and_gzip(tmp_path):
    text = ">seq1|0\r\nACGT\r\nacgn\r\n\r\n>seq 2 with spaces|1\nTTTT\n"
    plain = tmp_path / "a.fna"
    plain.write_text(text, newline="")
    gz = tmp_path / "a.fna.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    for path in (plain, gz):
        records = list(read_fasta(path))
        assert [(r.header, r.sequence, r.line) for r in records] == [
            ("seq1|0", "ACGTacgn", 1), ("seq 2 with spaces|1", "TTTT", 5)]


def test_read_fasta_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.fna"
    bad.write_text("\nACGT\n")
    with pytest.raises(UserError, match=r"bad.fna:2: expected a FASTA header"):
        list(read_fasta(bad))
    trunc = tmp_path / "trunc.fna.gz"
    rng = random.Random(0)
    body = b">a|1\n" + bytes(rng.choice(b"ACGT") for _ in range(40000))
    trunc.write_bytes(gzip.compress(body)[:2000])
    with pytest.raises(UserError, match=r"trunc.fna.gz: cannot read"):
        list(read_fasta(trunc))


def test_run_deterministic_reaches_torch(monkeypatch):
    """run.deterministic = true: torch's deterministic mode, cuDNN's, and cuBLAS's workspace setting, all set before
    any CUDA work (setup_distributed is the first thing 03 and 04 do on the device)."""
    import os

    import torch

    from shelf.distributed import setup_distributed
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cfg, _ = load_config(["--run.deterministic=true", "--run.device=cpu"])
    try:
        setup_distributed(cfg.run.device, cfg.run.deterministic)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:  # the rest of the test session runs with torch's defaults
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    setup_distributed("cpu")  # the default leaves torch alone
    assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ


@pytest.mark.parametrize("script, sections", [
    ("01_preprocess.py", ["run", "preprocess"]), ("02_train_tokenizer.py", ["run", "tokenizer"]),
    ("03_pretrain.py", ["run", "model", "pretrain"]), ("04_finetune_nt.py", ["run", "model", "finetune"]),
    ("05_mutagenesis.py", ["run"])])
def test_help_shows_the_scripts_own_keys_with_values_and_meanings(script, sections):
    r = subprocess.run([sys.executable, str(ROOT / script), "--config", str(ROOT / "configs" / "demo.toml"), "--help"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    doc = load_script(script).__doc__.strip().split("\n\n")
    assert r.stdout.startswith(doc[0]) and doc[1] in r.stdout  # what it does, then its run commands
    shown = [line[1:-1] for line in r.stdout.splitlines() if line.startswith("[") and line.endswith("]")]
    assert shown == sections
    # a known key: its value in the given config (demo: seed 1337, out_dir out/demo) and its meaning
    assert '--run.out_dir (str, "out/demo")  every script reads and writes inside this folder' in r.stdout


def test_unknown_key_suggests_the_close_one_and_space_form_parses():
    with pytest.raises(ConfigError, match=r"unknown key 'pretrain.lrr': did you mean 'lr'\?"):
        load_config(["--pretrain.lrr=1e-3"])
    with pytest.raises(ConfigError, match=r"unknown section \[pretrian\]: did you mean 'pretrain'\?"):
        load_config(["--pretrian.lr=1e-3"])
    spaced, _ = load_config(["--pretrain.lr", "1e-3", "--finetune.tasks", "[a,b]", "--resume"], flags=("--resume",))
    equals, _ = load_config(["--pretrain.lr=1e-3", "--finetune.tasks=[a,b]"])
    assert spaced == equals and spaced.pretrain.lr == 1e-3 and spaced.finetune.tasks == ["a", "b"]
    with pytest.raises(ConfigError, match="needs a value"):
        load_config(["--pretrain.lr"])


def test_dry_run_of_a_cpu_preset_says_so():
    r = subprocess.run([sys.executable, str(ROOT / "03_pretrain.py"), "--config", str(ROOT / "configs" / "demo.toml"),
                        "--dry-run"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith("run.device = 'cpu': this config trains on the CPU"), r.stdout


def test_progress_in_a_log_file_is_a_plain_line_every_30_s(monkeypatch, capsys):
    from shelf import progress
    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    lines = progress.StatusLines()  # what tqdm writes to when stderr is not a terminal
    for t in (1, 10, 31, 40, 62):
        clock[0] = t
        lines.write(f"\r{t} s ")  # a tqdm redraw
    lines.write("\r" + " " * 20 + "\r")  # a tqdm clear
    assert capsys.readouterr().err == "31 s\n62 s\n"
