"""02_train_tokenizer.py and common.load_tokenizer / read_token_meta."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, processors

from common import UserError, load_tokenizer
from model import ModelConfig


def _roberta_order_tokenizer(path):
    """A minimal hand-made tokenizer with RoBERTa's special order, to test the loader alone."""
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", "A", "C", "G", "T"])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.save(str(path))
    return path


def test_load_tokenizer_special_ids_and_model_fit(tmp_path):
    path = _roberta_order_tokenizer(tmp_path / "tokenizer.json")
    tok, sp = load_tokenizer(path, ModelConfig(vocab_size=16, pad_token_id=1))
    assert (sp.cls, sp.pad, sp.sep, sp.unk, sp.mask) == (0, 1, 2, 3, 4)
    assert sp.all == (0, 1, 2, 3, 4)
    assert tok.encode("ACGT").ids == [0, 5, 6, 7, 8, 2]
    with pytest.raises(UserError, match="pad id is 1 but model.pad_token_id = 3"):
        load_tokenizer(path, ModelConfig(vocab_size=16, pad_token_id=3))
    with pytest.raises(UserError, match="9 tokens but model.vocab_size = 8"):
        load_tokenizer(path, ModelConfig(vocab_size=8, pad_token_id=1))
    with pytest.raises(UserError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="bad.json: not a readable tokenizer.json"):
        load_tokenizer(tmp_path / "bad.json")
