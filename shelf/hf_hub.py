"""04's init "hf:<org>/<name>@<commit>": a published Hugging Face ESM checkpoint (Nucleotide Transformer v1, AgroNT)
at a pinned commit. fetch() downloads it from <hub_url>/<repo>/resolve/<commit>/ into <hf_dir>/<repo>/<commit>/,
resumably, each weight file's sha256 checked against the hub's file list (<hub_url>/api/models/<repo>/tree/<commit>:
[{"path", "size", "lfs": {"oid": <sha256>, "size"}}, ...]); load() turns it into our classes (shelf/hf_keys.py).
Nothing downloaded is run: no code files are fetched; the weights are read with torch.load(weights_only=True)."""

import json
from pathlib import Path

import torch

from shelf.errors import UserError
from shelf.files import download
from shelf.hf_keys import esm_model_config, esm_vocab_tokenizer, hf_to_ours

WEIGHTS, INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"


def read_json(path: Path, expected: str, kind: type = dict):
    try:
        obj = json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e}); expected {expected}")
    if not isinstance(obj, kind):
        raise UserError(f"{path}: expected {expected}, got a JSON {type(obj).__name__}")
    return obj


def model_config(folder: Path):
    """config.json as our ModelConfig; an ESM that model.py does not compute (NT v2) is refused in one line."""
    return esm_model_config(read_json(folder / "config.json", "a Hugging Face EsmConfig"), str(folder / "config.json"))


def weight_files(folder: Path) -> list[str]:
    """pytorch_model.bin, or the shards its index names (a sharded checkpoint, as NT 2.5B's)."""
    if not (folder / INDEX).is_file():
        return [WEIGHTS]
    weight_map = read_json(folder / INDEX, '{"weight_map": {tensor name: shard file}}').get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{folder / INDEX}: no \"weight_map\" of tensor names to shard files")
    return sorted(set(weight_map.values()))


def checkpoint_dir(hf_dir: str, init: str) -> Path:
    """Where an hf: init's files live: <hf_dir>/<org>/<name>/<commit>/."""
    repo, commit = init.removeprefix("hf:").rsplit("@", 1)  # checked by FinetuneConfig: org/name@<40 hex>
    return Path(hf_dir) / repo / commit


def fetch(hub_url: str, hf_dir: str, init: str) -> None:
    """Download an hf: init's files into checkpoint_dir, unless verified already. The commit pins every byte."""
    repo, commit = init.removeprefix("hf:").rsplit("@", 1)
    folder, hub_url = checkpoint_dir(hf_dir, init), hub_url.rstrip("/")

    def get(name: str, sha256: str | None = None) -> Path:
        return download(f"{hub_url}/{repo}/resolve/{commit}/{name}", folder / name, sha256=sha256)

    listing = download(f"{hub_url}/api/models/{repo}/tree/{commit}", folder / "tree.json")
    files = {f.get("path"): f for f in read_json(listing, "the hub's file list", list) if isinstance(f, dict)}
    for name in ("config.json", "vocab.txt"):
        if name not in files:
            raise UserError(f"{listing}: {init} has no {name}; expected an ESM checkpoint (NT v1, AgroNT)")
        get(name)
    model_config(folder)  # NT v2 (rotary positions) is refused before its weights are downloaded
    if "tokenizer_config.json" in files:  # its eos_token says whether EsmTokenizer ends a sequence with <eos>
        get("tokenizer_config.json")
    if WEIGHTS not in files:  # sharded: the index names the shards
        if INDEX not in files:
            raise UserError(f"{listing}: {init} has no {WEIGHTS} nor {INDEX}; 04 reads PyTorch weights only")
        get(INDEX)
    for name in weight_files(folder):
        sha256 = (files.get(name, {}).get("lfs") or {}).get("oid")
        if not sha256:  # the hub keeps weights in git LFS, and lists each one's sha256
            raise UserError(f"{listing}: no lfs.oid (sha256) for {name}, so it cannot be verified")
        get(name, sha256)


def load(folder: Path):
    """A fetched checkpoint -> (ModelConfig, tokenizer, pad id, our MaskedLM state_dict)."""
    cfg = model_config(folder)
    tok_cfg, vocab = folder / "tokenizer_config.json", folder / "vocab.txt"
    eos = not tok_cfg.is_file() or read_json(tok_cfg, "a tokenizer config").get("eos_token", "<eos>") is not None
    tok = esm_vocab_tokenizer(vocab, eos)  # eos_token null (AgroNT): no <eos> at the end, as EsmTokenizer
    if tok.get_vocab_size() > cfg.vocab_size or tok.token_to_id("<pad>") != cfg.pad_token_id:
        raise UserError(f"{vocab}: {tok.get_vocab_size():,} tokens, <pad> = {tok.token_to_id('<pad>')}; config.json: "
                        f"vocab_size {cfg.vocab_size:,}, pad_token_id {cfg.pad_token_id}: not one checkpoint's")
    state = {}
    for name in weight_files(folder):
        try:  # weights_only: tensors and plain containers, never code from the download
            state |= torch.load(folder / name, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"{folder / name}: not a loadable state_dict ({str(e).splitlines()[0][:200]})")
    try:
        return cfg, tok, cfg.pad_token_id, hf_to_ours(state, "esm", cfg.tie_word_embeddings)
    except KeyError as e:
        raise UserError(f"{folder}: {e.args[0]}; expected the weights of an EsmForMaskedLM")
