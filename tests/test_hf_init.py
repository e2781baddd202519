"""04's init "hf:<org>/<name>@<commit>": a published ESM checkpoint fetched from a hub at a pinned commit and
fine-tuned beside scratch. The hub is tests/conftest.py's server on 127.0.0.1 (files at <repo>/resolve/<commit>/,
the file list at api/models/<repo>/tree/<commit>); the checkpoint is a tiny random EsmForMaskedLM (untied decoder,
NT v1's 6-mer vocab.txt), its config.json written by transformers, its weights as pytorch_model.bin.

Run: OMP_NUM_THREADS=1 python -m pytest tests/test_hf_init.py -q   (CPU, ~15 s)
"""

import hashlib
import json
import math

import pytest
import torch

from conftest import ROOT, main_as_user, run_script
from model import MaskedLM
from shelf import hf_hub
from shelf.config import load_config
from shelf.errors import ConfigError
from test_esm import NT_VOCAB, SEQS
from test_finetune import TINY, char_tokenizer, ft, read_csv, write_task

transformers = pytest.importorskip("transformers")
REPO, COMMIT = "InstaDeepAI/tiny-nt", "0123456789abcdef0123456789abcdef01234567"
INIT, LABEL = f"hf:{REPO}@{COMMIT}", "hf:tiny-nt@0123456"
DEMO = str(ROOT / "configs" / "demo.toml")


def publish(root, **config):
    """A tiny NT v1-shaped EsmForMaskedLM, served as the hub serves it; -> the model. `config` overrides its
    EsmConfig. The file list gives the weights' sha256 as the hub does for files in git LFS."""
    torch.manual_seed(0)
    hf = transformers.EsmForMaskedLM(transformers.EsmConfig(**{
        "vocab_size": len(NT_VOCAB), "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
        "intermediate_size": 64, "max_position_embeddings": 66, "pad_token_id": 1, "mask_token_id": 2,
        "position_embedding_type": "absolute", "emb_layer_norm_before": False, "tie_word_embeddings": False,
        "attn_implementation": "eager", **config})).eval()
    folder = root / REPO / "resolve" / COMMIT
    hf.config.save_pretrained(folder)  # config.json; the weights as NT v1 publishes them: pytorch_model.bin
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")  # (transformers 5 saves safetensors only)
    (folder / "vocab.txt").write_text("\n".join(NT_VOCAB) + "\n")
    tree = [{"type": "file", "path": p.name, "size": p.stat().st_size,
             **({"lfs": {"oid": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}}
                if p.suffix == ".bin" else {})} for p in sorted(folder.iterdir())]
    (root / "api" / "models" / REPO / "tree").mkdir(parents=True)
    (root / "api" / "models" / REPO / "tree" / COMMIT).write_text(json.dumps(tree))
    return hf


def args(tmp_path, server, *more):
    write_task(tmp_path / "tasks" / "motif", 60, 21)
    return ["--config", DEMO, *TINY, f"--run.out_dir={tmp_path / 'run'}", "--finetune.benchmark=local",
            f"--finetune.data_dir={tmp_path / 'tasks'}", "--finetune.tasks=[motif]", f"--finetune.hub_url={server.url}",
            f"--finetune.hf_dir={tmp_path / 'hf'}", "--finetune.num_seeds=1", "--finetune.batch_size=8",
            "--finetune.max_steps=6", "--finetune.warmup_steps=1", "--finetune.eval_interval=3", "--finetune.lr=3e-3",
            *more]


def test_hf_init_is_fetched_resumed_loaded_exactly_and_fine_tuned(tmp_path, http_server):
    hf = publish(http_server.root)
    weights = f"{REPO}/resolve/{COMMIT}/pytorch_model.bin"
    http_server.cut_after[weights] = 5000  # the connection drops mid-file once: the .part resumes from there
    char_tokenizer(tmp_path / "run" / "tokenizer.json")  # scratch's: the run's own tokenizer and [model]
    r = run_script("04_finetune_nt.py", *args(tmp_path, http_server, f"--finetune.inits=[scratch,{INIT}]",
                                              "--finetune.train_sizes=[8,0]"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert [rng for name, rng in http_server.requests if name == weights] == [None, "bytes=5000-"]

    # its own row in results.csv, column in results.md (a finite MCC), folder without ':' or '/'
    out = tmp_path / "run" / "finetune"
    assert [(x["init"], x["train_size"]) for x in read_csv(out / "results.csv")] == [
        (init, size) for init in ("scratch", INIT) for size in ("8", "0")]
    assert (out / "motif" / f"hf-InstaDeepAI--tiny-nt@{COMMIT}" / "labels-all" / "seed-0" / "metrics.json").is_file()
    table = [[c.strip() for c in line.strip("|").split("|")] for line in (out / "results.md").read_text().splitlines()
             if line.startswith("| task |") or line.startswith("| motif |")]
    header, row = table[0], table[1]  # table 1: test MCC with all labels
    assert f"probe: {LABEL}" in header and math.isfinite(mcc := float(row[header.index(f"fine-tuned {LABEL}")]))
    assert -1 <= mcc <= 1 and (out / "mcc_vs_labels.png").stat().st_size > 1000

    # what 04 loaded computes what transformers computes: same token ids, same logits
    cfg, tok, pad_id, state = hf_hub.load(tmp_path / "hf" / REPO / COMMIT)
    ours = MaskedLM(cfg).eval()
    ours.load_state_dict(state, strict=True)
    esm_tokenizer = transformers.EsmTokenizer(str(tmp_path / "hf" / REPO / COMMIT / "vocab.txt"))
    batch = esm_tokenizer(SEQS, padding=True, return_tensors="pt")
    unpadded = [[i for i in ids if i != pad_id] for ids in batch["input_ids"].tolist()]
    assert [e.ids for e in tok.encode_batch(SEQS)] == unpadded
    with torch.no_grad():
        ref, got = hf(**batch).logits, ours(batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert (got[real] - ref[real]).abs().max().item() <= 1e-5


def run_04(monkeypatch, capsys, *argv):
    return main_as_user(monkeypatch, capsys, "04_finetune_nt.py", ft.main, *argv)


@pytest.mark.parametrize("breakage, expected", [
    ("corrupt", "pytorch_model.bin: sha256 mismatch (expected "),
    ("nt-v2", "config.json: position_embedding_type = 'rotary'"),
    ("no-vocab", f"{INIT} has no vocab.txt"),
    ("not-on-hub", f"/api/models/{REPO}/tree/{COMMIT}: HTTP 404"),
])
def test_bad_checkpoint_exits_1_with_one_line(tmp_path, http_server, monkeypatch, capsys, breakage, expected):
    if breakage != "not-on-hub":
        publish(http_server.root, **({"position_embedding_type": "rotary"} if breakage == "nt-v2" else {}))
    served = http_server.root / REPO / "resolve" / COMMIT
    if breakage == "corrupt":  # one byte changed on the server, the file list's sha256 kept
        data = bytearray((served / "pytorch_model.bin").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (served / "pytorch_model.bin").write_bytes(bytes(data))
    if breakage == "no-vocab":
        tree = http_server.root / "api" / "models" / REPO / "tree" / COMMIT
        tree.write_text(json.dumps([f for f in json.loads(tree.read_text()) if f["path"] != "vocab.txt"]))
    code, err = run_04(monkeypatch, capsys, *args(tmp_path, http_server, f"--finetune.inits=[{INIT}]"))
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert expected in lines[0]
    cache = tmp_path / "hf" / REPO / COMMIT
    assert not (cache / "pytorch_model.bin").exists() and not (cache / "pytorch_model.bin.part").exists()
    if breakage == "nt-v2":  # refused from config.json, before the weights' download
        assert not any(name.endswith("pytorch_model.bin") for name, _ in http_server.requests)


@pytest.mark.parametrize("init", [f"hf:{REPO}@main", f"hf:{REPO}@{COMMIT[:7]}", f"hf:{REPO}", f"hf:../x@{COMMIT}"])
def test_unpinned_or_malformed_hf_init_is_a_config_error(monkeypatch, capsys, init):
    with pytest.raises(ConfigError, match=r"finetune\.inits = .*the full 40-hex commit"):
        load_config(["--config", DEMO, f"--finetune.inits=[scratch,{init}]"])
    code, err = run_04(monkeypatch, capsys, "--config", DEMO, f"--finetune.inits=[{init}]")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "finetune.inits" in lines[0] and "History page" in lines[0], err
