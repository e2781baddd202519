"""Tests for model.py: sizes, Hugging Face equivalence, attention/position properties, init.

Run: python -m pytest tests/test_model.py -q   (CPU, a few seconds)
"""

import math

import pytest
import torch
import torch.nn.functional as F

from model import (
    MaskedLM, ModelConfig, SequenceClassifier, apply_rope, flops_per_token, mlm_loss, num_parameters, rope_cos_sin,
)
from shelf.hf_keys import hf_to_ours, ours_to_hf

TINY = ModelConfig()  # tinydnabert: the defaults
AGRONT_1B = ModelConfig(vocab_size=4104, pad_token_id=0, hidden_size=1500, num_layers=40, num_heads=20,
                        ffn_size=5120, max_seq_len=1024, position_embedding="learned", type_vocab_size=0,
                        norm_position="pre", mlp="gelu")
DNAFM_7B = ModelConfig(vocab_size=16, pad_token_id=0, hidden_size=4352, num_layers=32, num_heads=32,
                       ffn_size=11584, max_seq_len=4000, position_embedding="rope", type_vocab_size=0,
                       norm_position="pre", mlp="swiglu", bias=True)


def small(**kw):
    """A small config for fast behavioural tests (eval mode -> dropout is off anyway)."""
    base = dict(vocab_size=50, pad_token_id=1, hidden_size=32, num_layers=2, num_heads=4, ffn_size=64,
                max_seq_len=40)
    base.update(kw)
    return ModelConfig(**base)


# every architecture combination the presets use (and their crossings)
VARIANTS = [
    dict(position_embedding="learned", norm_position="post", mlp="gelu"),  # RoBERTa
    dict(position_embedding="learned", norm_position="pre", mlp="gelu", type_vocab_size=0),  # ESM / AgroNT
    dict(position_embedding="rope", norm_position="pre", mlp="swiglu", type_vocab_size=0),  # DNA FM
    dict(position_embedding="rope", norm_position="post", mlp="gelu", bias=False),
]


def meta_model(cfg):
    with torch.device("meta"):
        return MaskedLM(cfg)


# --- parameter counts ---------------------------------------------------------------------------

def test_tinydnabert_parameter_count():
    m = MaskedLM(TINY)
    assert num_parameters(m) == 19_968_512
    assert num_parameters(m.encoder.wte) + num_parameters(m.encoder.wpe) + num_parameters(m.encoder.wtt) \
        + num_parameters(m.encoder.ln_emb) == 789_504
    assert all(num_parameters(b) == 3_152_384 for b in m.encoder.blocks)
    assert num_parameters(m.lm_head) == 264_704


def test_agront_1b_parameter_count():
    m = meta_model(AGRONT_1B)
    assert m.encoder.wpe.weight.shape == (1024 + 0 + 1, 1500)
    n = num_parameters(m)
    assert abs(n - 0.99e9) / 0.99e9 < 0.03, n


def test_dnafm_7b_parameter_count():
    m = meta_model(DNAFM_7B)
    C, L, Fs, V = 4352, 32, 11584, 16
    # independent shape formula (bias=True): attention qkv+proj, SwiGLU (2 up + 1 down), 2 LayerNorms
    per_layer = (4 * C * C + 4 * C) + (2 * C * Fs + 2 * Fs) + (Fs * C + C) + 2 * 2 * C
    expected = V * C + L * per_layer + 2 * C + (C * C + C + 2 * C + V)  # emb, blocks, final LN, MLM head
    n = num_parameters(m)
    assert abs(n - expected) / expected < 0.01, (n, expected)
    assert 7.2e9 < n < 7.4e9
    assert m.encoder.wpe is None and m.encoder.wtt is None


def test_flops_per_token_matches_6n_plus_attention():
    # for tinydnabert, N_matmul = all params minus embeddings/biases/norms, plus the tied decoder once
    C, L, Fs, V, T = 512, 6, 2048, 1024, 512
    n_matmul = L * (4 * C * C + 2 * C * Fs) + C * C + V * C
    assert flops_per_token(TINY, T) == 6 * n_matmul + 12 * L * C * T
    assert flops_per_token(DNAFM_7B, 4000) > 6 * 7e9


# --- Hugging Face equivalence ---------------------------------------------------------------------

transformers = pytest.importorskip("transformers")


def hf_config(num_labels=2):
    return transformers.RobertaConfig(
        vocab_size=1024, hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048,
        max_position_embeddings=514, pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=2,
        layer_norm_eps=1e-5, hidden_act="gelu", num_labels=num_labels, attn_implementation="eager")


@torch.no_grad()
def perturb(model):
    """Random values everywhere (biases, LayerNorms too), so no mapping error hides behind a zero or a one."""
    torch.manual_seed(0)
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.05)


def padded_batch(vocab=1024, pad=1, lengths=(37, 20, 5), seed=1):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.full((len(lengths), T), pad, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(5, vocab, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = 0, 2  # <s> ... </s>
        mask[i, :n] = 1
    return ids, mask


def test_hf_roberta_mlm_to_ours_same_logits():
    torch.manual_seed(0)
    hf = transformers.RobertaForMaskedLM(hf_config()).eval()
    perturb(hf)
    ours = MaskedLM(TINY).eval()
    ours.load_state_dict(hf_to_ours(hf.state_dict(), "roberta"), strict=True)
    ids, mask = padded_batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask)
        unpadded = ours(ids[:1], None)  # row 0 has no padding: no mask needed
    real = mask.bool()
    assert got.shape == ref.shape == (3, 37, 1024)
    assert (got[real] - ref[real]).abs().max() <= 1e-5
    assert (unpadded[0] - ref[0]).abs().max() <= 1e-5


def test_ours_to_hf_roberta_mlm_strict_load_same_logits():
    torch.manual_seed(0)
    ours = MaskedLM(TINY).eval()
    perturb(ours)
    hf = transformers.RobertaForMaskedLM(hf_config()).eval()
    result = hf.load_state_dict(ours_to_hf(ours.state_dict(), "roberta"), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # the tie survives in HF: decoder weight is the word embedding matrix
    assert torch.equal(hf.lm_head.decoder.weight, ours.encoder.wte.weight)
    ids, mask = padded_batch(seed=2)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask)
    real = mask.bool()
    assert (got[real] - ref[real]).abs().max() <= 1e-5


def test_state_dict_roundtrip_is_identity():
    ours = MaskedLM(small())
    sd = ours.state_dict()
    back = hf_to_ours(ours_to_hf(sd, "roberta"), "roberta")
    assert sorted(back) == sorted(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_hf_sequence_classifier_same_logits_and_loss():
    torch.manual_seed(0)
    hf = transformers.RobertaForSequenceClassification(hf_config(num_labels=3)).eval()
    perturb(hf)
    ours = SequenceClassifier(TINY, num_labels=3).eval()
    ours.load_state_dict(hf_to_ours(hf.state_dict(), "roberta"), strict=True)
    ids, mask = padded_batch(seed=3)
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, labels=labels)
        logits = ours(ids, mask)
        loss = F.cross_entropy(logits, labels)
    assert logits.shape == (3, 3)
    assert (logits - ref.logits).abs().max() <= 1e-5
    assert abs(loss.item() - ref.loss.item()) <= 1e-5


# --- fine-tuning init from a pretrained MaskedLM ----------------------------------------------------

def test_load_encoder_from_mlm():
    cfg = small()
    mlm = MaskedLM(cfg)
    perturb(mlm)
    clf = SequenceClassifier(cfg, num_labels=2)
    # DDP / torch.compile prefixes are tolerated
    clf.load_encoder_from_mlm({"module." + k: v for k, v in mlm.state_dict().items()})  # strict: raises otherwise
    for k, v in mlm.encoder.state_dict().items():
        assert torch.equal(clf.encoder.state_dict()[k], v), k
    partial = {k: v for k, v in mlm.state_dict().items() if "blocks.1." not in k}
    with pytest.raises(RuntimeError, match="blocks.1"):
        SequenceClassifier(cfg, 2).load_encoder_from_mlm(partial)
    with pytest.raises(ValueError, match="encoder"):
        clf.load_encoder_from_mlm({"lm_head.bias": torch.zeros(50)})


# --- behaviour ------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_attention_is_bidirectional(variant):
    torch.manual_seed(0)
    m = MaskedLM(small(**variant)).eval()
    ids = torch.randint(5, 50, (1, 12))
    changed = ids.clone()
    changed[0, 10] = 5 if ids[0, 10] != 5 else 6
    with torch.no_grad():
        a = m(ids)
        b = m(changed)
    assert (a[0, 2] - b[0, 2]).abs().max() > 1e-4  # an earlier position sees a later token


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_invariance(variant):
    torch.manual_seed(0)
    cfg = small(**variant)
    m = MaskedLM(cfg).eval()
    ids = torch.randint(5, 50, (2, 10))
    padded = torch.cat([ids, torch.full((2, 7), cfg.pad_token_id)], dim=1)
    mask = (padded != cfg.pad_token_id).long()
    # a second row of a different length in the same batch must not disturb the first
    padded[1, 4:] = cfg.pad_token_id
    mask[1, 4:] = 0
    with torch.no_grad():
        ref = m(ids)
        ref_short = m(ids[1:, :4])
        got = m(padded, mask)
    assert (got[0, :10] - ref[0]).abs().max() < 1e-5
    assert (got[1, :4] - ref_short[0]).abs().max() < 1e-5
    assert torch.isfinite(got).all()


def test_rope_score_depends_only_on_relative_position():
    torch.manual_seed(0)
    hs = 16
    cos, sin = rope_cos_sin(64, hs, 10000.0, "cpu")
    q, k = torch.randn(hs), torch.randn(hs)

    def score(m, n):
        qm = apply_rope(q.view(1, 1, 1, hs), cos[m:m + 1], sin[m:m + 1]).flatten()
        kn = apply_rope(k.view(1, 1, 1, hs), cos[n:n + 1], sin[n:n + 1]).flatten()
        return (qm @ kn).item()

    for m, n, shift in [(3, 7, 10), (20, 2, 31), (5, 5, 50)]:
        assert abs(score(m, n) - score(m + shift, n + shift)) < 1e-4
    assert abs(score(3, 7) - score(3, 30)) > 1e-3  # but it does depend on the distance
    # rotation keeps norms, and position 0 is the identity
    assert torch.allclose(apply_rope(q.view(1, 1, 1, hs), cos[:1], sin[:1]).flatten(), q)


@pytest.mark.parametrize("variant", VARIANTS[:3])
def test_logits_at_positions_and_loss(variant):
    torch.manual_seed(0)
    m = MaskedLM(small(**variant)).eval()
    ids, mask = padded_batch(vocab=50, lengths=(16, 11), seed=4)
    positions = torch.tensor([[3, 0, 15], [10, 2, 5]])  # (B, K): K positions per row, any order
    labels = ids.gather(1, positions).masked_fill(torch.tensor([[False, True, False], [False, False, False]]), -100)
    with torch.no_grad():
        full = m(ids, mask)
        logits = m(ids, mask, positions=positions)
    assert full.shape == (2, 16, 50) and logits.shape == (2, 3, 50)
    assert torch.allclose(logits, full.gather(1, positions[..., None].expand(-1, -1, 50)), atol=1e-6)
    ref = F.cross_entropy(logits.view(-1, 50), labels.view(-1), ignore_index=-100, reduction="sum")
    assert torch.allclose(mlm_loss(logits, labels), ref, atol=1e-5)
    # a batch without any target gives a zero (not NaN) loss sum
    assert mlm_loss(logits, torch.full_like(labels, -100)).item() == 0.0


def test_training_step_reduces_loss_and_reaches_all_params():
    torch.manual_seed(0)
    m = MaskedLM(small(position_embedding="rope", norm_position="pre", mlp="swiglu", dropout=0.0,
                       attention_dropout=0.0))
    ids = torch.randint(5, 50, (4, 16))
    labels = torch.where(torch.rand(ids.shape) < 0.5, ids, -100)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = mlm_loss(m(ids), labels) / (labels != -100).sum()
        opt.zero_grad()
        loss.backward()
        if not losses:
            no_grad = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
            assert no_grad == [], no_grad
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] and math.isfinite(losses[-1])


def test_dropout_only_in_training():
    torch.manual_seed(0)
    m = MaskedLM(small(dropout=0.1, attention_dropout=0.1))
    ids, mask = padded_batch(vocab=50, lengths=(12, 7), seed=5)
    a = m.train()(ids, mask)
    b = m(ids, mask)
    assert (a - b).abs().max() > 1e-4  # hidden and attention dropout are active
    with torch.no_grad():
        c = m.eval()(ids, mask)
        d = m(ids, mask)
    assert torch.equal(c, d)


def test_too_long_sequence_raises():
    m = MaskedLM(small(max_seq_len=8))
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.randint(5, 50, (1, 9)))


# --- meta-device construction -------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS[:3])
def test_meta_init(variant):
    cfg = small(hidden_size=64, ffn_size=256, vocab_size=300, **variant)
    m = meta_model(cfg)
    assert m.encoder.wte.weight.is_meta
    m.to_empty(device="cpu")
    torch.manual_seed(0)
    m.init_weights()
    for n, p in m.named_parameters():
        assert torch.isfinite(p).all(), n
    # tied: one Parameter, the decoder reads the embedding's storage, counted once
    assert m.decoder_weight is m.encoder.wte.weight
    assert m.decoder_weight.data_ptr() == m.encoder.wte.weight.data_ptr()
    assert not any("decoder" in k for k in m.state_dict())
    assert num_parameters(m) == num_parameters(MaskedLM(cfg))
    # statistics of the documented scheme
    w = m.encoder.blocks[0].attn.qkv.weight
    assert abs(w.std().item() - cfg.init_std) < 0.1 * cfg.init_std and abs(w.mean().item()) < 2e-3
    assert torch.all(m.encoder.wte.weight[cfg.pad_token_id] == 0)
    assert torch.all(m.lm_head.bias == 0) and torch.all(m.lm_head.layer_norm.weight == 1)
    if cfg.bias:
        assert torch.all(m.encoder.blocks[1].mlp.fc2.bias == 0)
    # and it runs; changing the embedding changes the decoder too
    ids = torch.randint(5, 300, (2, 8))
    with torch.no_grad():
        a = m.eval()(ids)
        m.encoder.wte.weight[7] += torch.randn(cfg.hidden_size)  # (a constant would vanish: LN output sums to 0)
        b = m(ids)
    assert torch.isfinite(a).all()
    assert (a[..., 7] - b[..., 7]).abs().max() > 1e-3


# --- config validation ----------------------------------------------------------------------------

@pytest.mark.parametrize("kw, field", [
    (dict(hidden_size=100, num_heads=8), "hidden_size"),
    (dict(position_embedding="alibi"), "position_embedding"),
    (dict(norm_position="sandwich"), "norm_position"),
    (dict(mlp="relu"), "mlp"),
    (dict(pad_token_id=1024), "pad_token_id"),
    (dict(type_vocab_size=-1), "type_vocab_size"),
    (dict(dropout=1.0), "dropout"),
    (dict(num_layers=0), "num_layers"),
    (dict(hidden_size=24, num_heads=8, position_embedding="rope"), "num_heads"),  # head size 3 is odd
    (dict(token_dropout=True), "mask_token_id"),  # ESM's token dropout needs the mask id
])
def test_config_validation(kw, field):
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field}="):
        ModelConfig(**kw)


def test_sequence_classifier_rejects_one_label():
    with pytest.raises(ValueError, match="num_labels"):
        SequenceClassifier(small(), num_labels=1)


@pytest.mark.parametrize("variant", VARIANTS[:3])
def test_packed_mlm_forward_and_loss_is_one_graph(variant):
    """No host sync and no data-dependent shape in a packed training step's forward + loss: torch.compile traces
    it as one graph with no break, so the whole model compiles (and a GPU can run steps ahead of the CPU)."""
    torch.manual_seed(0)
    m = MaskedLM(small(token_dropout=True, mask_token_id=4, **variant)).train()  # dropout on, as in training
    ids = torch.randint(5, 50, (2, 32))
    positions = torch.rand(2, 32).topk(5, dim=1).indices  # (B, K), as 03's Masker draws them
    labels = ids.gather(1, positions)

    def step(ids, positions, labels):
        return mlm_loss(m(ids, positions=positions), labels) / (labels != -100).sum()
    explained = torch._dynamo.explain(step)(ids, positions, labels)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
