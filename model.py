"""
One bidirectional Transformer encoder for every preset, written out by hand (no `transformers`).

    tinydnabert  RoBERTa: post-LayerNorm, learned pad-aware positions, token types, GELU
    agront_1b    ESM-like: pre-LayerNorm, learned pad-aware positions, GELU (published NT v1 / AgroNT
                 checkpoints: + an untied decoder, some + token dropout; shelf/hf_keys.py maps them)
    dnafm_7b     DNA FM / AIDO: pre-LayerNorm, RoPE, SwiGLU

Read top to bottom: ModelConfig (the [model] config section) -> rotary positions -> SelfAttention,
MLP, Block -> Encoder -> MaskedLM (pretraining: the LM head and the loss at the masked positions) ->
SequenceClassifier (fine-tuning: the classifier head on the first token) -> the training recipe 03 and
04 share (AdamW groups, the learning rate as a function of the step) -> size and FLOPs.

Big models are built without memory on the meta device, then materialised and initialised once:

    with torch.device("meta"):
        model = MaskedLM(cfg)
    model.to_empty(device="cuda")
    model.init_weights()
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    """The [model] section of a config. The defaults are tinydnabert (TinyDNABERT's RoBERTa)."""
    vocab_size: int = 1024  # embedding rows: at least the tokenizer's vocabulary
    pad_token_id: int = 1  # the tokenizer's real pad id
    hidden_size: int = 512  # C, the width of every token's vector
    num_layers: int = 6  # Transformer blocks
    num_heads: int = 8  # attention heads; hidden_size / num_heads = head size
    ffn_size: int = 2048  # the MLP's inner width
    max_seq_len: int = 512  # tokens per sequence the model accepts
    position_embedding: str = "learned"  # "learned" (RoBERTa/ESM, pad-aware) | "rope"
    rope_theta: float = 10000.0  # RoPE's base: angles pos * theta^(-2i/head size)
    type_vocab_size: int = 2  # 0 = no token-type embeddings
    norm_position: str = "post"  # "post" (RoBERTa) | "pre" (ESM, AgroNT, DNA FM)
    mlp: str = "gelu"  # "gelu" (exact erf GELU) | "swiglu"
    bias: bool = True  # biases in linear layers
    dropout: float = 0.1  # hidden dropout
    attention_dropout: float = 0.1  # dropout on the attention weights
    layer_norm_eps: float = 1e-5  # LayerNorm's epsilon
    init_std: float = 0.02  # s.d. of the normal init of weights and embeddings
    tie_word_embeddings: bool = True  # LM decoder = the word embeddings; False: its own (V, C) matrix (NT, AgroNT)
    token_dropout: bool = False  # ESM's: <mask> embeddings zeroed, the rest rescaled, in training AND inference
    mask_token_id: int = -1  # the tokenizer's mask id; read by token_dropout only (-1 = not given)

    def __post_init__(self):  # every value is checked here, once, whoever builds the config
        def check(ok, field, msg):
            if not ok:
                raise ValueError(f"ModelConfig.{field}={getattr(self, field)!r}: {msg}")

        for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "ffn_size", "max_seq_len",
                      "rope_theta", "layer_norm_eps", "init_std"):
            check(getattr(self, field) > 0, field, "must be positive")
        check(0 <= self.pad_token_id < self.vocab_size, "pad_token_id", "must be in [0, vocab_size)")
        check(self.hidden_size % self.num_heads == 0, "hidden_size", f"must be divisible by num_heads={self.num_heads}")
        check(self.position_embedding in ("learned", "rope"), "position_embedding", "must be 'learned' or 'rope'")
        check(self.position_embedding != "rope" or self.head_size % 2 == 0, "num_heads",
              "RoPE needs an even head size (hidden_size / num_heads)")
        check(self.type_vocab_size >= 0, "type_vocab_size", "must be >= 0 (0 = none)")
        check(self.norm_position in ("post", "pre"), "norm_position", "must be 'post' or 'pre'")
        check(self.mlp in ("gelu", "swiglu"), "mlp", "must be 'gelu' or 'swiglu'")
        check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        check(0.0 <= self.attention_dropout < 1.0, "attention_dropout", "must be in [0, 1)")
        check(not self.token_dropout or 0 <= self.mask_token_id < self.vocab_size, "mask_token_id",
              "token_dropout needs the tokenizer's mask id, in [0, vocab_size)")

    @property
    def head_size(self):
        return self.hidden_size // self.num_heads


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
        # Rows [0:C) are q, [C:2C) k, [2C:3C) v (shelf/hf_keys.py cats/splits along dim 0).
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.bias)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.bias)
        self.attention_dropout = cfg.attention_dropout
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, attn_mask, rope):
        B, T, C = x.shape
        # one (B, T, 3C) matmul, split into q, k, v, each (B, T, C) -> (B, nh, T, hs)
        q, k, v = (t.view(B, T, self.nh, self.hs).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
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

def esm_token_dropout(x, is_mask, n_real):
    """ESM's token dropout (Hugging Face EsmEmbeddings, numerically): <mask> rows of the word embeddings
    x (B, T, C) become 0, and each row is scaled by (1 - 0.15 * 0.8) / (1 - its share of <mask> among its
    n_real real tokens): ESM trained with 12% of tokens masked, so an unmasked sequence at inference is
    scaled by 0.88. is_mask: (B, T) bool; n_real: (B,) or a number."""
    observed = is_mask.sum(-1).float() / n_real  # (B,)
    x = x.masked_fill(is_mask.unsqueeze(-1), 0.0)
    return (x * (1 - 0.15 * 0.8) / (1 - observed)[:, None, None]).to(x.dtype)


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
        """input_ids (B, T) -> hidden states (B, T, C). attention_mask (B, T), 1 = real token: give it for
        padded batches; None = every token is real (03's packed blocks). The caller knows which, so the
        model never inspects the data to find out: no host sync, one static graph under torch.compile."""
        B, T = input_ids.shape
        cfg = self.cfg
        if T > cfg.max_seq_len:
            raise ValueError(f"sequence length {T} > max_seq_len={cfg.max_seq_len}")
        key_mask = None if attention_mask is None else attention_mask.bool()  # (B, T)

        x = self.wte(input_ids)  # (B, T, C)
        if cfg.token_dropout:
            n_real = T if key_mask is None else key_mask.sum(-1)  # real tokens per row
            x = esm_token_dropout(x, input_ids == cfg.mask_token_id, n_real)
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
        # no mask lets SDPA pick flash attention; a padded batch masks its pad keys: (B, 1, 1, T)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        for block in self.blocks:
            x = block(x, attn_mask, rope)
        if self.ln_f is not None:
            x = self.ln_f(x)
        return x  # (B, T, C)


# -----------------------------------------------------------------------------
# The two models: an Encoder with a head. Both initialise the same way.

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
    elif isinstance(module, LMHead):  # its own parameter: the decoder bias
        nn.init.zeros_(module.bias)


class EncoderWithHead(nn.Module):
    @torch.no_grad()
    def init_weights(self):
        """(Re)initialise every parameter in place, e.g. after to_empty() on meta (there are no buffers)."""
        self.apply(lambda m: _init_module(m, self.cfg.init_std))


class LMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder. Tied (the default), the decoder weight is the word-embedding
    matrix itself (passed into forward, never stored here), so the tie cannot break: not by to_empty(),
    not by load_state_dict(), not by FSDP; only the decoder bias belongs to the head. Untied (NT, AgroNT),
    the head owns `decoder`, a bias-free (C -> V) Linear, as Hugging Face's EsmLMHead."""

    def __init__(self, cfg):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.bias)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        if not cfg.tie_word_embeddings:  # created only when untied: the tied model's parameters stay as they were
            self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, h, decoder_weight):
        # h: (..., C) -> logits (..., V)
        h = self.layer_norm(F.gelu(self.dense(h)))
        return F.linear(h, decoder_weight, self.bias)


class MaskedLM(EncoderWithHead):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.lm_head = LMHead(cfg)
        self.init_weights()  # free on the meta device

    @property
    def decoder_weight(self):  # (V, C); tied: the one and only (V, C) matrix
        return self.encoder.wte.weight if self.cfg.tie_word_embeddings else self.lm_head.decoder.weight

    def forward(self, input_ids, attention_mask=None, positions=None):
        """input_ids (B, T) -> logits (B, T, V); or, given positions (B, K), the logits at those positions
        only, (B, K, V). Pretraining asks for its K masked positions per row: the (C x V) decoder is the
        biggest matmul of a small-hidden model, and a fixed K keeps every shape static (cf. cramming)."""
        h = self.encoder(input_ids, attention_mask)  # (B, T, C)
        if positions is not None:
            h = h.gather(1, positions.unsqueeze(-1).expand(-1, -1, h.shape[-1]))  # (B, K, C)
        return self.lm_head(h, self.decoder_weight)


def mlm_loss(logits, labels):
    """Summed (not mean) cross-entropy over the targets, in fp32: logits (..., V), labels (...) with -100
    where there is no target. The caller divides by the number of targets of its whole batch."""
    return F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=-100, reduction="sum")


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


class SequenceClassifier(EncoderWithHead):
    def __init__(self, cfg, num_labels, classifier_dropout=0.1):
        super().__init__()
        if num_labels < 2:
            raise ValueError(f"num_labels={num_labels}: need at least 2 classes")
        self.cfg = cfg
        self.num_labels = num_labels
        self.encoder = Encoder(cfg)
        self.classifier = ClassificationHead(cfg, num_labels, classifier_dropout)
        self.init_weights()

    def load_encoder_from_mlm(self, state_dict):
        """Copy the `encoder.*` weights of a MaskedLM state dict (pretrained init for fine-tuning).
        `module.` (DDP) and `_orig_mod.` (torch.compile) prefixes are stripped; `lm_head.*` is ignored.
        Strict: a missing or unexpected encoder key raises, so a half-loaded encoder never passes silently."""
        enc = {}
        for k, v in state_dict.items():
            k = k.replace("_orig_mod.", "").removeprefix("module.")
            if k.startswith("encoder."):
                enc[k.removeprefix("encoder.")] = v
        if not enc:
            raise ValueError("state_dict has no 'encoder.*' keys: is it a MaskedLM state dict?")
        self.encoder.load_state_dict(enc)

    def forward(self, input_ids, attention_mask=None):
        """input_ids (B, T) -> class logits (B, num_labels), from the first token's hidden state."""
        return self.classifier(self.encoder(input_ids, attention_mask))


# -----------------------------------------------------------------------------
# The training recipe 03 (pretraining) and 04 (fine-tuning) share; `c` is a [pretrain] or [finetune] section

def lr_at(step, c):
    """Learning rate as a pure function of the step: linear warm-up over warmup_steps (step 0 already
    gets lr/warmup_steps), then linear decay to min_lr at max_steps (Hugging Face's linear schedule)."""
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    frac = (step - c.warmup_steps) / max(1, c.max_steps - c.warmup_steps)
    return c.min_lr + (c.lr - c.min_lr) * max(0.0, 1.0 - frac)


def configure_optimizer(net, c, device):
    """AdamW that decays the matrices (linear weights, embeddings) but not biases and LayerNorm weights
    (all 1-D), as RoBERTa / Hugging Face's no_decay = ["bias", "LayerNorm.weight"]."""
    params = [p for p in net.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": c.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = torch.device(device).type == "cuda"  # one kernel for the whole update; foreach elsewhere
    return torch.optim.AdamW(groups, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps,
                             fused=fused, foreach=None if fused else True)


# -----------------------------------------------------------------------------
# Size and cost

def num_parameters(model):
    """Trainable parameters, the tied embedding/decoder counted once (it is one Parameter)."""
    return sum(p.numel() for p in model.parameters())


def flops_per_token(cfg, seq_len, head_fraction=1.0):
    """Training FLOPs per token, forward + backward (PaLM / nanoGPT): 6 * N_matmul + 12 * L * C * T.
    N_matmul = weights in a matmul per token: per layer 4C^2 (qkv, proj) + 2CF (GELU) or 3CF (SwiGLU),
    plus the LM head's C^2 dense and VC decoder; 6 = 2 (multiply-add) x 3 (forward, 2x backward).
    12LCT: attention scores and weighted sum, bidirectional (no causal halving). head_fraction: share
    of tokens through the LM head (1.0 by convention; 0.15 = what pretraining computes, at its masked positions)."""
    C, L, F_, V = cfg.hidden_size, cfg.num_layers, cfg.ffn_size, cfg.vocab_size
    per_layer = 4 * C * C + (3 if cfg.mlp == "swiglu" else 2) * C * F_
    head = C * C + V * C
    return 6 * (L * per_layer + head_fraction * head) + 12 * L * C * seq_len
