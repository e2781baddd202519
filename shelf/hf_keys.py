"""
Hugging Face checkpoints <-> model.py: weight names (pure renames), an ESM config.json as our ModelConfig,
and a k-mer vocab.txt as our tokenizer. Two families map: RoBERTa (tinydnabert's shape: post-LN) and ESM
(EsmForMaskedLM: Nucleotide Transformer v1, AgroNT: pre-LN, learned positions, GELU).

  HF (<p> = roberta. or esm.)                           ours
  <p>.<X> (the embeddings, ESM's last LayerNorm)        encoder.<_EMBEDDINGS[family][X]>: wte, wpe, wtt, ln_emb, ln_f
  <p>.encoder.layer.i.attention.self.{query,key,value}  encoder.blocks.i.attn.qkv  (cat / chunk on dim 0)
  <p>.encoder.layer.i.<X>                               encoder.blocks.i.<_BLOCK[family][X]>
  lm_head.*, classifier.*                               same names (RoBERTa's lm_head.decoder.bias is lm_head.bias)
  lm_head.decoder.weight                                tied: none (it is encoder.wte.weight); untied: same name
  esm.contact_head.* (protein contacts)                 none: dropped on import, not written on export
"""

from pathlib import Path

import torch

from model import ModelConfig
from shelf.errors import UserError
from shelf.tokens import kmer_tokenizer_of

_EMBEDDINGS = {"roberta": {"embeddings.word_embeddings.": "wte.", "embeddings.position_embeddings.": "wpe.",
                           "embeddings.token_type_embeddings.": "wtt.", "embeddings.LayerNorm.": "ln_emb."},
               "esm": {"embeddings.word_embeddings.": "wte.", "embeddings.position_embeddings.": "wpe.",
                       "encoder.emb_layer_norm_after.": "ln_f."}}
_BLOCK = {"roberta": {"attention.output.dense.": "attn.proj.", "attention.output.LayerNorm.": "ln_attn.",
                      "intermediate.dense.": "mlp.fc1.", "output.dense.": "mlp.fc2.", "output.LayerNorm.": "ln_mlp."},
          # ESM (pre-LN): attention.LayerNorm normalises the attention's input, the layer's LayerNorm the MLP's
          "esm": {"attention.output.dense.": "attn.proj.", "attention.LayerNorm.": "ln_attn.",
                  "intermediate.dense.": "mlp.fc1.", "output.dense.": "mlp.fc2.", "LayerNorm.": "ln_mlp."}}
_QKV = ("query", "key", "value")  # our fused qkv rows, in this order


def _rename_prefix(key, table, family):
    for a, b in table.items():
        if key.startswith(a):
            return b + key.removeprefix(a)
    raise KeyError(f"no Hugging Face {family} name for {key!r}")


def hf_to_ours(hf_state_dict, family, tie_word_embeddings=True):
    """HF {Roberta,Esm}For{MaskedLM,SequenceClassification} state dict -> ours. family: "roberta" | "esm"."""
    p = family + "."
    out = {}
    qkv = {}  # (layer, "weight" | "bias") -> {"query": tensor, "key": ..., "value": ...}
    for k, v in hf_state_dict.items():
        if (k.endswith(("position_ids", "token_type_ids")) or k.startswith("esm.contact_head.")
                or k == "lm_head.decoder.bias" or (k == "lm_head.decoder.weight" and tie_word_embeddings)):
            continue  # HF buffers, ESM's contact head, the tied decoder (= word embeddings; bias = lm_head.bias)
        if k.startswith(p + "encoder.layer."):
            i, rest = k.removeprefix(p + "encoder.layer.").split(".", 1)
            if rest.startswith("attention.self."):  # attention.self.{query,key,value}.{weight,bias}
                which, param = rest.removeprefix("attention.self.").split(".")
                qkv.setdefault((i, param), {})[which] = v
                continue
            k = f"encoder.blocks.{i}." + _rename_prefix(rest, _BLOCK[family], family)
        elif k.startswith(p):
            k = "encoder." + _rename_prefix(k.removeprefix(p), _EMBEDDINGS[family], family)
        out[k] = v  # lm_head.* and classifier.* keep their names
    for (i, param), parts in qkv.items():
        out[f"encoder.blocks.{i}.attn.qkv.{param}"] = torch.cat([parts[n] for n in _QKV], dim=0)
    return out


def ours_to_hf(state_dict, family):
    """Our MaskedLM (or SequenceClassifier) state dict -> HF. A tied model gets lm_head.decoder.weight (and
    RoBERTa's decoder bias) written too, so HF's load_state_dict(strict=True) passes (ESM: but for contact_head)."""
    inv_embeddings = {b: a for a, b in _EMBEDDINGS[family].items()}
    inv_block = {b: a for a, b in _BLOCK[family].items()}
    p = family + "."
    out = {}
    for k, v in state_dict.items():
        if k.startswith("encoder.blocks."):
            i, rest = k.removeprefix("encoder.blocks.").split(".", 1)
            if rest.startswith("attn.qkv."):  # split (3C, ...) back into query, key, value
                param = rest.removeprefix("attn.qkv.")
                for name, part in zip(_QKV, v.chunk(3, dim=0)):
                    out[f"{p}encoder.layer.{i}.attention.self.{name}.{param}"] = part
                continue
            k = f"{p}encoder.layer.{i}." + _rename_prefix(rest, inv_block, family)
        elif k.startswith("encoder."):
            k = p + _rename_prefix(k.removeprefix("encoder."), inv_embeddings, family)
        out[k] = v
    if "lm_head.bias" in out and "lm_head.decoder.weight" not in out:  # tied
        out["lm_head.decoder.weight"] = out[p + "embeddings.word_embeddings.weight"]
    if "lm_head.bias" in out and family == "roberta":
        out["lm_head.decoder.bias"] = out["lm_head.bias"]
    return out


def esm_model_config(c: dict, where="config.json") -> ModelConfig:
    """A Hugging Face EsmConfig (config.json, as a dict) -> our ModelConfig, or UserError for an ESM that
    model.py does not compute (NT v2's rotary positions and gated MLP, ESM-1b's embedding LayerNorm)."""
    for key, ours in (("position_embedding_type", "absolute"), ("emb_layer_norm_before", False),
                      ("is_folding_model", False), ("add_cross_attention", False)):
        if c.get(key, ours) != ours:
            raise UserError(f"{where}: {key} = {c[key]!r}; model.py runs ESM with {key} = {ours!r} only "
                            "(NT v1, AgroNT)")
    try:
        return ModelConfig(
            vocab_size=c["vocab_size"], pad_token_id=c["pad_token_id"], hidden_size=c["hidden_size"],
            num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"], ffn_size=c["intermediate_size"],
            max_seq_len=c["max_position_embeddings"] - c["pad_token_id"] - 1,  # positions start at pad + 1
            position_embedding="learned", type_vocab_size=0, norm_position="pre", mlp="gelu", bias=True,
            dropout=c.get("hidden_dropout_prob", 0.0), attention_dropout=c.get("attention_probs_dropout_prob", 0.0),
            layer_norm_eps=c.get("layer_norm_eps", 1e-12), init_std=c.get("initializer_range", 0.02),
            tie_word_embeddings=c.get("tie_word_embeddings", True), token_dropout=c.get("token_dropout", False),
            mask_token_id=c.get("mask_token_id") if c.get("mask_token_id") is not None else -1)
    except KeyError as e:
        raise UserError(f"{where}: no {e.args[0]!r}; expected a Hugging Face EsmConfig")
    except ValueError as e:
        raise UserError(f"{where}: {e}")


def esm_vocab_tokenizer(vocab_txt, eos=True):
    """An ESM k-mer vocab.txt (one token a line, id = line number; NT: <unk> <pad> <mask> <cls> <eos> <bos>, the
    4,096 6-mers, A T C G N) -> shelf.tokens' k-mer tokenizer (02's kmer kind: EsmTokenizer's ids); <eos> at the
    end if the vocab has one and `eos` (EsmTokenizer's default; False where tokenizer_config.json nulls eos_token)."""
    tokens = [line.strip() for line in Path(vocab_txt).read_text().splitlines()]
    ks = {len(t) for t in tokens if len(t) > 1 and not set(t) - set("ACGT")}
    if missing := [t for t in ("<pad>", "<mask>", "<cls>", *"ACGTN") if t not in tokens] or len(ks) != 1:
        raise UserError(f"{vocab_txt}: {f'no {missing[0]!r} token' if missing else f'k-mers of lengths {sorted(ks)}'}"
                        "; expected an ESM k-mer vocab.txt (<pad> <mask> <cls>, the k-mers of one k, A C G T N)")
    return kmer_tokenizer_of(tokens, ks.pop(), eos and "<eos>" in tokens)
