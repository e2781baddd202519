"""
Hugging Face RobertaForMaskedLM / RobertaForSequenceClassification <-> model.py: pure key renames.
Only the RoBERTa shape (post-LN, learned positions, GELU) has an HF counterpart. The tests use these
maps to prove MaskedLM computes exactly what HF computes; README shows how to export a checkpoint.

  roberta.embeddings.<X>                          encoder.<_HF_EMBEDDINGS[X]>   (wte, wpe, wtt, ln_emb)
  roberta.encoder.layer.i.<X>                     encoder.blocks.i.<_HF_BLOCK[X]>
  roberta.encoder.layer.i.attention.self.{query,key,value}.*
                                                  encoder.blocks.i.attn.qkv.*  (cat / chunk on dim 0)
  lm_head.{dense,layer_norm}.*, lm_head.bias      same names (lm_head.decoder.bias is lm_head.bias)
  lm_head.decoder.weight                          none: it is encoder.wte.weight (tied)
  classifier.{dense,out_proj}.*                   same names
"""

import torch
_HF_EMBEDDINGS = {
    "embeddings.word_embeddings.": "wte.",
    "embeddings.position_embeddings.": "wpe.",
    "embeddings.token_type_embeddings.": "wtt.",
    "embeddings.LayerNorm.": "ln_emb.",
}
_HF_BLOCK = {
    "attention.output.dense.": "attn.proj.",
    "attention.output.LayerNorm.": "ln_attn.",
    "intermediate.dense.": "mlp.fc1.",
    "output.dense.": "mlp.fc2.",
    "output.LayerNorm.": "ln_mlp.",
}
_QKV = ("query", "key", "value")  # our fused qkv rows, in this order


def _rename_prefix(key, table):
    for a, b in table.items():
        if key.startswith(a):
            return b + key.removeprefix(a)
    raise KeyError(f"no Hugging Face RoBERTa name for {key!r} (only the RoBERTa shape maps)")


def hf_roberta_to_ours(hf_state_dict):
    """HF RobertaForMaskedLM (or RobertaForSequenceClassification) state dict -> ours."""
    out, qkv = {}, {}
    for k, v in hf_state_dict.items():
        if k.endswith(("position_ids", "token_type_ids")) or k in ("lm_head.decoder.weight", "lm_head.decoder.bias"):
            continue  # HF buffers, and the tied decoder (weight = word embeddings, bias = lm_head.bias)
        if k.startswith("roberta.embeddings."):
            k = "encoder." + _rename_prefix(k.removeprefix("roberta."), _HF_EMBEDDINGS)
        elif k.startswith("roberta.encoder.layer."):
            i, rest = k.removeprefix("roberta.encoder.layer.").split(".", 1)
            if rest.startswith("attention.self."):  # attention.self.{query,key,value}.{weight,bias}
                which, param = rest.removeprefix("attention.self.").split(".")
                qkv.setdefault((i, param), {})[which] = v
                continue
            k = f"encoder.blocks.{i}." + _rename_prefix(rest, _HF_BLOCK)
        out[k] = v  # lm_head.* and classifier.* keep their names
    for (i, param), parts in qkv.items():
        out[f"encoder.blocks.{i}.attn.qkv.{param}"] = torch.cat([parts[n] for n in _QKV], dim=0)
    return out


def ours_to_hf_roberta(state_dict):
    """Our MaskedLM (or SequenceClassifier) state dict -> HF RobertaFor{MaskedLM,SequenceClassification}.
    Writes the tied lm_head.decoder.{weight,bias} too, so HF's load_state_dict(strict=True) passes."""
    inv_embeddings = {b: a for a, b in _HF_EMBEDDINGS.items()}
    inv_block = {b: a for a, b in _HF_BLOCK.items()}
    out = {}
    for k, v in state_dict.items():
        if k.startswith("encoder.blocks."):
            i, rest = k.removeprefix("encoder.blocks.").split(".", 1)
            if rest.startswith("attn.qkv."):  # split (3C, ...) back into query, key, value
                param = rest.removeprefix("attn.qkv.")
                for name, part in zip(_QKV, v.chunk(3, dim=0)):
                    out[f"roberta.encoder.layer.{i}.attention.self.{name}.{param}"] = part
                continue
            k = f"roberta.encoder.layer.{i}." + _rename_prefix(rest, inv_block)
        elif k.startswith("encoder."):
            k = "roberta." + _rename_prefix(k.removeprefix("encoder."), inv_embeddings)
        out[k] = v
    if "lm_head.bias" in out:
        out["lm_head.decoder.weight"] = out["roberta.embeddings.word_embeddings.weight"]
        out["lm_head.decoder.bias"] = out["lm_head.bias"]
    return out
