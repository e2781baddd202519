"""
One bidirectional Transformer encoder for every preset, written out by hand.

    tinydnabert  RoBERTa: post-LayerNorm, learned pad-aware positions, token types, GELU
    agront_1b    ESM-like: pre-LayerNorm, learned pad-aware positions, GELU
    dnafm_7b     DNA FM / AIDO: pre-LayerNorm, RoPE, SwiGLU

Classes: Encoder, MaskedLM (pretraining), SequenceClassifier (fine-tuning); ModelConfig (the [model]
config section) lives in common.py with the other sections and is re-exported here.
Helpers: num_parameters, flops_per_token, hf_roberta_to_ours / ours_to_hf_roberta (weight renames,
so a test can prove MaskedLM computes exactly what Hugging Face's RobertaForMaskedLM computes).

Big models are built without memory on the meta device, then materialised and initialised once:

    with torch.device("meta"):
        model = MaskedLM(cfg)
    model.to_empty(device="cuda")
    model.init_weights()

This file deliberately does not import `transformers`.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import ModelConfig  # the [model] section of the config: a plain dataclass, defined with the others


# -----------------------------------------------------------------------------
# Rotary position embedding (RoFormer / GPT-NeoX "rotate-half" convention).
# Each head's vector is split in two halves (x1, x2); pair i = (x1[i], x2[i]) is rotated by angle
# pos * theta^(-2i/hs). Rotating q and k by their own positions makes q.k depend on (m - n) only.
# cos/sin are recomputed every forward (T x hs/2 numbers: negligible next to the matmuls), so there is
# no buffer to move, cast to bf16, or re-create after building on the meta device.

def rope_cos_sin(seq_len, head_size, theta, device):
    inv_freq = 1.0 / theta ** (torch.arange(0, head_size, 2, device=device, dtype=torch.float32) / head_size)
    t = torch.arange(seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)  # (T, hs/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, hs): same angle for x1[i] and x2[i]
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    # x: (B, nh, T, hs); cos, sin: (T, hs), broadcast over batch and heads
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


# -----------------------------------------------------------------------------
# The blocks

class SelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.nh, self.hs = cfg.num_heads, cfg.head_size
        # one fused (C -> 3C) matmul for q, k, v: one kernel launch instead of three on GPU (nanoGPT's
        # c_attn); on CPU fused and separate measured the same (tinydnabert shape, fwd+bwd).
        # Rows [0:C) are q, [C:2C) k, [2C:3C) v (the HF mapping below cats/splits along dim 0).
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.bias)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.bias)
        self.attention_dropout = cfg.attention_dropout
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, attn_mask, rope):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        # (B, T, C) -> (B, nh, T, hs)
        q = q.view(B, T, self.nh, self.hs).transpose(1, 2)
        k = k.view(B, T, self.nh, self.hs).transpose(1, 2)
        v = v.view(B, T, self.nh, self.hs).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        # bidirectional: no causal mask. attn_mask is None (no padding: lets SDPA pick flash attention)
        # or a boolean (B, 1, 1, T) key mask, True = real token that may be attended to.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attention_dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads: (B, T, C)
        return self.drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        # SwiGLU (Megatron layout): fc1 makes [a, g] in one matmul, out = fc2(silu(a) * g).
        # Its fc1 is twice as wide, so an ffn_size F costs 3*C*F weights instead of 2*C*F.
        self.fc1 = nn.Linear(cfg.hidden_size, (2 if self.swiglu else 1) * cfg.ffn_size, bias=cfg.bias)
        self.fc2 = nn.Linear(cfg.ffn_size, cfg.hidden_size, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        h = self.fc1(x)  # (B, T, F) or (B, T, 2F)
        if self.swiglu:
            a, g = h.chunk(2, dim=-1)
            h = F.silu(a) * g
        else:
            h = F.gelu(h)  # exact erf GELU, as RoBERTa's "gelu"
        return self.drop(self.fc2(h))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.pre = cfg.norm_position == "pre"
        self.attn = SelfAttention(cfg)
        self.ln_attn = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        self.ln_mlp = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x, attn_mask=None, rope=None):
        if self.pre:  # ESM / GPT-2: normalise the branch input, keep a clean residual stream
            x = x + self.attn(self.ln_attn(x), attn_mask, rope)
            x = x + self.mlp(self.ln_mlp(x))
        else:  # BERT / RoBERTa: normalise after adding the residual
            x = self.ln_attn(x + self.attn(x, attn_mask, rope))
            x = self.ln_mlp(x + self.mlp(x))
        return x


# -----------------------------------------------------------------------------
# Encoder: embeddings + blocks

class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        C = cfg.hidden_size
        self.wte = nn.Embedding(cfg.vocab_size, C, padding_idx=cfg.pad_token_id)
        # RoBERTa/ESM positions start at pad_token_id + 1 (pad tokens get position pad_token_id,
        # whose row is zero), so the table needs max_seq_len + pad_token_id + 1 rows: 514 for RoBERTa.
        self.wpe = (nn.Embedding(cfg.max_seq_len + cfg.pad_token_id + 1, C, padding_idx=cfg.pad_token_id)
                    if cfg.position_embedding == "learned" else None)
        # we never pass token types, so like HF (all-zero token_type_ids) only row 0 is ever used
        self.wtt = nn.Embedding(cfg.type_vocab_size, C) if cfg.type_vocab_size > 0 else None
        # post-LN (RoBERTa) normalises the embeddings; pre-LN (ESM) instead normalises after the last block
        self.ln_emb = nn.LayerNorm(C, eps=cfg.layer_norm_eps) if cfg.norm_position == "post" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
        self.ln_f = nn.LayerNorm(C, eps=cfg.layer_norm_eps) if cfg.norm_position == "pre" else None

    def forward(self, input_ids, attention_mask=None):
        B, T = input_ids.shape
        cfg = self.cfg
        if T > cfg.max_seq_len:
            raise ValueError(f"sequence length {T} > max_seq_len={cfg.max_seq_len}")
        if attention_mask is None:
            attention_mask = input_ids != cfg.pad_token_id
        key_mask = attention_mask.bool()  # (B, T)

        x = self.wte(input_ids)  # (B, T, C)
        if self.wtt is not None:
            x = x + self.wtt.weight[0]
        if self.wpe is not None:
            # HF create_position_ids_from_input_ids: real tokens count up from pad_token_id + 1,
            # pads get pad_token_id. Right-padding thus never moves a real token's position.
            not_pad = (input_ids != cfg.pad_token_id).long()
            pos = torch.cumsum(not_pad, dim=1) * not_pad + cfg.pad_token_id  # (B, T)
            x = x + self.wpe(pos)
        if self.ln_emb is not None:
            x = self.ln_emb(x)
        x = self.drop(x)

        rope = None
        if cfg.position_embedding == "rope":
            rope = rope_cos_sin(T, cfg.head_size, cfg.rope_theta, input_ids.device)  # 2 x (T, hs)
        # Without padding (packed pretraining blocks) drop the mask: SDPA can then use flash attention.
        # This is one host sync per forward; it sits outside the blocks, so per-block compile is unaffected.
        attn_mask = None if bool(key_mask.all()) else key_mask[:, None, None, :]  # (B, 1, 1, T)
        for block in self.blocks:
            x = block(x, attn_mask, rope)
        if self.ln_f is not None:
            x = self.ln_f(x)
        return x  # (B, T, C)


# -----------------------------------------------------------------------------
# Initialisation, shared by both models

@torch.no_grad()
def _init_module(module, std):
    """Hugging Face's BERT/RoBERTa scheme: N(0, std) for Linear and Embedding weights, zero biases,
    LayerNorm = identity, and the padding_idx row of an embedding zeroed."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.padding_idx is not None:
            module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class LMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder. The decoder weight is the word-embedding matrix itself
    (passed into forward, never stored here), so the tie cannot break: not by to_empty(), not by
    load_state_dict(), not by FSDP. Only the decoder bias belongs to the head."""

    def __init__(self, cfg):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.bias)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h, decoder_weight):
        # h: (..., C) -> logits (..., V)
        h = self.layer_norm(F.gelu(self.dense(h)))
        return F.linear(h, decoder_weight, self.bias)


class MaskedLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.lm_head = LMHead(cfg)
        self.init_weights()  # free on the meta device

    @property
    def decoder_weight(self):
        return self.encoder.wte.weight  # tied: the one and only (V, C) matrix

    @torch.no_grad()
    def init_weights(self):
        """(Re)initialise every parameter in place; call after to_empty() when built on meta.
        There are no buffers (RoPE tables are computed per forward), and the decoder has no weight of
        its own, so nothing else needs re-creating or re-tying."""
        self.apply(lambda m: _init_module(m, self.cfg.init_std))
        nn.init.zeros_(self.lm_head.bias)

    def num_parameters(self, exclude_positions=False):
        return num_parameters(self, exclude_positions)

    def forward(self, input_ids, attention_mask=None, labels=None):
        """input_ids (B, T) long; labels (B, T) with -100 where there is no target.
        labels None  -> (logits (B, T, V), None)
        labels given -> (logits (N, V) for the N target positions in row-major order, mean CE loss).
        Only the target positions (~15%) go through the LM head: the (N, C) x (C, V) decoder is the
        biggest matmul of a small-hidden model, so this saves most of the head's work (cf. cramming)."""
        h = self.encoder(input_ids, attention_mask)  # (B, T, C)
        if labels is None:
            return self.lm_head(h, self.decoder_weight), None
        targets = labels != -100  # (B, T) bool
        logits = self.lm_head(h[targets], self.decoder_weight)  # (N, V)
        # sum / max(N, 1) == mean CE for N > 0, and 0 (not NaN) for a batch without targets
        loss = F.cross_entropy(logits.float(), labels[targets], reduction="sum") / targets.sum().clamp(min=1)
        return logits, loss


class ClassificationHead(nn.Module):
    """RoBERTa's head on the first token (<s> / CLS): dropout -> dense -> tanh -> dropout -> out_proj.
    (HF applies the dropout before the dense layer too; we follow HF exactly.)"""

    def __init__(self, cfg, num_labels, classifier_dropout):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = nn.Dropout(classifier_dropout)
        self.out_proj = nn.Linear(cfg.hidden_size, num_labels)

    def forward(self, h):
        x = self.dropout(h[:, 0, :])  # (B, C)
        x = self.dropout(torch.tanh(self.dense(x)))
        return self.out_proj(x)  # (B, num_labels)


class SequenceClassifier(nn.Module):
    def __init__(self, cfg, num_labels, classifier_dropout=0.1):
        super().__init__()
        if num_labels < 2:
            raise ValueError(f"num_labels={num_labels}: need at least 2 classes")
        self.cfg = cfg
        self.num_labels = num_labels
        self.encoder = Encoder(cfg)
        self.classifier = ClassificationHead(cfg, num_labels, classifier_dropout)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """Same scheme as MaskedLM.init_weights (this model has no tied weights)."""
        self.apply(lambda m: _init_module(m, self.cfg.init_std))

    def num_parameters(self, exclude_positions=False):
        return num_parameters(self, exclude_positions)

    def load_encoder_from_mlm(self, state_dict, strict=True):
        """Copy the `encoder.*` weights of a MaskedLM state dict (pretrained init for fine-tuning).
        `module.` (DDP) and `_orig_mod.` (torch.compile) prefixes are stripped; `lm_head.*` is ignored.
        Returns torch's (missing_keys, unexpected_keys) over the encoder; with strict=True (default) any
        missing or unexpected encoder key raises, so a half-loaded encoder can never pass silently."""
        enc = {}
        for k, v in state_dict.items():
            k = k.replace("_orig_mod.", "").removeprefix("module.")
            if k.startswith("encoder."):
                enc[k.removeprefix("encoder.")] = v
        if not enc:
            raise ValueError("state_dict has no 'encoder.*' keys: is it a MaskedLM state dict?")
        return self.encoder.load_state_dict(enc, strict=strict)

    def forward(self, input_ids, attention_mask=None, labels=None):
        h = self.encoder(input_ids, attention_mask)  # (B, T, C)
        logits = self.classifier(h)  # (B, num_labels)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return logits, loss


# -----------------------------------------------------------------------------
# Size and cost

def num_parameters(model, exclude_positions=False):
    """Trainable parameters, the tied embedding/decoder counted once (it is one Parameter).
    exclude_positions drops the learned position table, as nanoGPT reports."""
    n = sum(p.numel() for p in model.parameters())
    encoder = getattr(model, "encoder", model)
    if exclude_positions and getattr(encoder, "wpe", None) is not None:
        n -= encoder.wpe.weight.numel()
    return n


def flops_per_token(cfg, seq_len, head_fraction=1.0):
    """Training FLOPs per token (forward + backward), the PaLM / nanoGPT convention:

        6 * N_matmul + 12 * L * C * T

    N_matmul counts the weights that take part in a matmul per token (biases, norms and embedding
    lookups are ignored): per layer 4*C^2 (qkv + proj) + 2*C*F (GELU MLP) or 3*C*F (SwiGLU), plus the
    LM head's C^2 dense and its V*C decoder. The 6 is 2 (multiply-add) x 3 (forward + 2x backward).
    12*L*C*T is the attention scores and weighted sum (2 matmuls of T*C per token, x2 multiply-add,
    x3 forward+backward), full bidirectional attention, so no causal halving.
    head_fraction: fraction of tokens sent through the LM head; 1.0 (convention), or e.g. 0.15 to
    count what MaskedLM really computes when given labels."""
    C, L, F_, V = cfg.hidden_size, cfg.num_layers, cfg.ffn_size, cfg.vocab_size
    per_layer = 4 * C * C + (3 if cfg.mlp == "swiglu" else 2) * C * F_
    head = C * C + V * C
    return 6 * (L * per_layer + head_fraction * head) + 12 * L * C * seq_len


# -----------------------------------------------------------------------------
# Hugging Face RobertaForMaskedLM / RobertaForSequenceClassification <-> ours: pure key renames.
# Only the RoBERTa shape (post-LN, learned positions, GELU) has an HF counterpart.
#
#   roberta.embeddings.<X>                          encoder.<_HF_EMBEDDINGS[X]>   (wte, wpe, wtt, ln_emb)
#   roberta.encoder.layer.i.<X>                     encoder.blocks.i.<_HF_BLOCK[X]>
#   roberta.encoder.layer.i.attention.self.{query,key,value}.*
#                                                   encoder.blocks.i.attn.qkv.*  (cat / chunk on dim 0)
#   lm_head.{dense,layer_norm}.*, lm_head.bias      same names (lm_head.decoder.bias is lm_head.bias)
#   lm_head.decoder.weight                          none: it is encoder.wte.weight (tied)
#   classifier.{dense,out_proj}.*                   same names

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
