"""
Reading what 02_train_tokenizer.py wrote: tokenizer.json (any kind) and tokens/meta.json.

load_tokenizer finds the special tokens by role (pad, mask, cls, sep, unk) so that 03 and 04 never
hard-code an id; read_token_meta refuses token files made by another tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from model import ModelConfig
from shelf.errors import UserError
from shelf.files import file_hash


# The special tokens of each kind, by role. The ids are fixed by 02 (bpe: <s>=0 <pad>=1 </s>=2
# <unk>=3 <mask>=4, RoBERTa's order; kmer: <pad>=0 <mask>=1 <cls>=2; char: [PAD]=0 [MASK]=1 [CLS]=2
# [SEP]=3 [UNK]=4), but readers look them up by name so a hand-made tokenizer.json works too.
_SPECIAL_NAMES = {
    "pad": ("<pad>", "[PAD]"),
    "mask": ("<mask>", "[MASK]"),
    "cls": ("<s>", "<cls>", "[CLS]"),  # sequence start; fine-tuning classifies from this position
    "sep": ("</s>", "[SEP]"),  # sequence end (kmer has none)
    "unk": ("<unk>", "[UNK]"),  # kmer has none: every character maps to A C G T or N
}


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    mask: int
    cls: int
    sep: int | None
    unk: int | None
    all: tuple[int, ...]  # every special token's id, sorted: never masked, never a random replacement


def load_tokenizer(path: str | Path, model_cfg: ModelConfig | None = None):
    """Load a tokenizer.json written by 02_train_tokenizer.py -> (tokenizers.Tokenizer, SpecialIds).

    `tok.encode(seq).ids` already carries the kind's wrapping (<s> … </s>, <cls> …, [CLS] … [SEP]).
    With `model_cfg`, raises UserError unless the tokenizer fits the model: every id < vocab_size and
    the tokenizer's pad id == model.pad_token_id (the bug TinyDNABERT had: pad 3 vs 1).
    """
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: tokenizer not found (run 02_train_tokenizer.py first)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a plain Exception on bad JSON
        raise UserError(f"{path}: not a readable tokenizer.json ({str(e).splitlines()[0] if str(e) else e})")
    vocab = tok.get_vocab(with_added_tokens=True)
    ids = {role: next((vocab[n] for n in names if n in vocab), None) for role, names in _SPECIAL_NAMES.items()}
    for role in ("pad", "mask", "cls"):
        if ids[role] is None:
            raise UserError(f"{path}: tokenizer has no {role} token (one of {', '.join(_SPECIAL_NAMES[role])})")
    special = sorted(i for i, t in tok.get_added_tokens_decoder().items() if t.special)
    special = tuple(sorted(set(special) | {i for i in ids.values() if i is not None}))
    sp = SpecialIds(pad=ids["pad"], mask=ids["mask"], cls=ids["cls"], sep=ids["sep"], unk=ids["unk"], all=special)
    if model_cfg is not None:
        n = tok.get_vocab_size(with_added_tokens=True)
        if n > model_cfg.vocab_size:
            raise UserError(f"{path}: tokenizer has {n:,} tokens but model.vocab_size = {model_cfg.vocab_size:,}; "
                            f"set --model.vocab_size={n}")
        if sp.pad != model_cfg.pad_token_id:
            raise UserError(f"{path}: tokenizer pad id is {sp.pad} but model.pad_token_id = "
                            f"{model_cfg.pad_token_id}; set --model.pad_token_id={sp.pad}")
    return tok, sp


def read_token_meta(tokens_dir: str | Path, tokenizer_path: str | Path) -> dict:
    """Read tokens/meta.json and check it belongs to `tokenizer_path` and to the .bin files beside it.

    Raises UserError (one line, file named) when meta.json is missing or unreadable, when its
    tokenizer_sha256 is not the sha256 of tokenizer_path (token files made by another tokenizer),
    or when a split's token count does not match its .bin file size (uint16 = 2 bytes per token).
    """
    tokens_dir = Path(tokens_dir)
    meta_path = tokens_dir / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise UserError(f"{meta_path}: not found (run 02_train_tokenizer.py first)")
    except (OSError, ValueError) as e:
        raise UserError(f"{meta_path}: not readable JSON ({e})")
    splits = meta.get("splits") if isinstance(meta, dict) else None
    if not (isinstance(splits, dict) and all(isinstance(c, dict) for c in splits.values())):
        raise UserError(f"{meta_path}: expected 02's object with \"splits\": {{split: {{\"tokens\": n, ...}}}}; "
                        "re-run 02_train_tokenizer.py")
    if not Path(tokenizer_path).is_file():
        raise UserError(f"{tokenizer_path}: tokenizer not found (run 02_train_tokenizer.py first)")
    sha = file_hash(tokenizer_path)
    if meta.get("tokenizer_sha256") != sha:
        raise UserError(f"{meta_path}: token files were made with another tokenizer than {tokenizer_path} "
                        f"(sha256 {str(meta.get('tokenizer_sha256'))[:12]}… vs {sha[:12]}…); re-run 02_train_tokenizer.py")
    for split, counts in splits.items():
        bin_path = tokens_dir / f"{split}.bin"
        size = bin_path.stat().st_size if bin_path.is_file() else None
        if size != 2 * counts.get("tokens", -1):
            raise UserError(f"{bin_path}: expected {counts.get('tokens')} uint16 tokens from meta.json, "
                            f"file has {'no file' if size is None else f'{size:,} bytes'}; re-run 02_train_tokenizer.py")
    return meta
