"""Published ESM-family checkpoints (Nucleotide Transformer v1, AgroNT) in model.py: logits parity with
Hugging Face's EsmForMaskedLM for each flag (untied decoder, token dropout), and vocab.txt id equality.

Run: python -m pytest tests/test_esm.py -q   (CPU, a few seconds)
"""

import itertools

import pytest
import torch

from conftest import load_script
from model import MaskedLM, ModelConfig, esm_token_dropout, num_parameters
from shelf.errors import UserError
from shelf.hf_keys import esm_model_config, esm_vocab_tokenizer, hf_to_ours, ours_to_hf
from shelf.tokens import load_tokenizer

transformers = pytest.importorskip("transformers")
FLAGS = list(itertools.product([True, False], [False, True]))  # (tie_word_embeddings, token_dropout)


def esm_config(tie, token_dropout):  # a small NT v1-shaped config: pad 1, mask 2, eps 1e-12, dropout on
    return transformers.EsmConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=42, pad_token_id=1, mask_token_id=2, layer_norm_eps=1e-12,
        position_embedding_type="absolute", emb_layer_norm_before=False, token_dropout=token_dropout,
        tie_word_embeddings=tie, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
        attn_implementation="eager")


@torch.no_grad()
def perturb(model, seed=0):
    """Random values everywhere (biases, LayerNorms too), so no mapping error hides behind a zero or a one."""
    torch.manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.1)


def batch(lengths=(40, 23, 6), seed=1):
    """<cls> tokens ... right-padded with 1, some <mask> (2) tokens: 0, 3 and 1 per row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), 1, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(5, 40, (n,), generator=g)
        ids[i, 0] = 3
    ids[1, [2, 9, 20]] = 2
    ids[2, 4] = 2
    return ids, (ids != 1).long()


def logits_close(ours, hf, ids, mask):
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask)
    real = mask.bool()
    return (got[real] - ref[real]).abs().max().item()


@pytest.mark.parametrize("tie, token_dropout", FLAGS)
def test_hf_esm_to_ours_same_logits(tie, token_dropout):
    torch.manual_seed(0)
    hf = transformers.EsmForMaskedLM(esm_config(tie, token_dropout)).eval()
    perturb(hf)
    assert (hf.lm_head.decoder.weight is hf.esm.embeddings.word_embeddings.weight) == tie
    cfg = esm_model_config(hf.config.to_dict())
    assert (cfg.tie_word_embeddings, cfg.token_dropout, cfg.mask_token_id) == (tie, token_dropout, 2)
    assert cfg.max_seq_len == 40  # 42 positions - pad offset 2
    ours = MaskedLM(cfg).eval()
    ours.load_state_dict(hf_to_ours(hf.state_dict(), "esm", cfg.tie_word_embeddings), strict=True)
    assert logits_close(ours, hf, *batch()) <= 1e-5


@pytest.mark.parametrize("tie, token_dropout", FLAGS)
def test_ours_to_hf_esm_same_logits(tie, token_dropout):
    cfg = esm_model_config(esm_config(tie, token_dropout).to_dict())
    torch.manual_seed(0)
    ours = MaskedLM(cfg).eval()
    perturb(ours)
    assert any("decoder" in k for k in ours.state_dict()) != tie  # untied: lm_head.decoder.weight of its own
    hf = transformers.EsmForMaskedLM(esm_config(tie, token_dropout)).eval()
    result = hf.load_state_dict(ours_to_hf(ours.state_dict(), "esm"), strict=False)
    assert not result.unexpected_keys and all(k.startswith("esm.contact_head.") for k in result.missing_keys)
    assert logits_close(ours, hf, *batch(seed=2)) <= 1e-5
    back = hf_to_ours(ours_to_hf(ours.state_dict(), "esm"), "esm", tie)  # round trip: the identity
    assert sorted(back) == sorted(ours.state_dict())
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())


def test_untied_decoder_is_its_own_parameter():
    tied, untied = (esm_model_config(esm_config(tie, False).to_dict()) for tie in (True, False))
    with torch.device("meta"):
        m = MaskedLM(untied)
    m.to_empty(device="cpu")
    m.init_weights()
    assert m.decoder_weight is m.lm_head.decoder.weight and m.lm_head.decoder.bias is None
    assert num_parameters(m) == num_parameters(MaskedLM(tied)) + 40 * 32
    assert abs(m.decoder_weight.std().item() - 0.02) < 0.005


def test_token_dropout_scales_as_esm():
    """No <mask>: every embedding x 0.88 (ESM trained with 12% masked); pads do not count as tokens."""
    cfg = ModelConfig(vocab_size=40, pad_token_id=1, hidden_size=32, num_heads=4, num_layers=1, ffn_size=64,
                      max_seq_len=40, norm_position="pre", type_vocab_size=0, position_embedding="rope",
                      token_dropout=True, mask_token_id=2)
    m = MaskedLM(cfg).eval()
    ids = torch.tensor([[3, 7, 8, 9, 1, 1], [3, 2, 8, 9, 2, 6]])
    x = m.encoder.wte(ids)
    got = esm_token_dropout(x, ids == 2, (ids != 1).sum(-1))  # real tokens per row
    assert torch.allclose(got[0], x[0] * 0.88) and torch.all(got[1, [1, 4]] == 0)
    assert torch.allclose(got[1, [0, 2, 3, 5]], x[1, [0, 2, 3, 5]] * 0.88 / (1 - 2 / 6))


@pytest.mark.parametrize("bad, match", [
    (dict(position_embedding_type="rotary"), "position_embedding_type"),
    (dict(emb_layer_norm_before=True), "emb_layer_norm_before"),
])
def test_esm_config_refuses_what_model_py_cannot_run(bad, match):
    with pytest.raises(UserError, match=match):
        esm_model_config({**esm_config(True, False).to_dict(), **bad})


# --- vocab.txt: our tokenizer gives EsmTokenizer's ids ------------------------------------------------

KMERS = ["".join(p) for p in itertools.product("ATCG", repeat=6)]
NT_VOCAB = ["<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>"] + KMERS + list("ATCGN")  # NT v1: 4,107
AGRONT_VOCAB = ["<pad>", "<mask>", "<cls>"] + KMERS + list("ATCGN")  # AgroNT, 02's kmer kind: 4,104
SEQS = ["ATCCCGGNNTCGACACN",  # AgroNT's model card: <cls> ATCCCG G N N TCGACA C N
        "ACGTACGTACGTAC", "NNNNNNACGTNACGTAC", "GATTACA" * 9 + "TT", "A", "CCCCCCN", "TTAGGGTTAGG"]


@pytest.mark.parametrize("tokens", [NT_VOCAB, AGRONT_VOCAB], ids=["nt", "agront"])
def test_vocab_txt_ids_equal_esm_tokenizer(tmp_path, tokens):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n")
    # a vocab without <eos> needs eos_token=None (as the model card's <cls> ATCCCG ... C N): EsmTokenizer's
    # default would add "<eos>" as a new token, id 4,104, past the model's embedding table
    hf = transformers.EsmTokenizer(str(path), **({} if "<eos>" in tokens else dict(eos_token=None, unk_token=None)))
    ours = esm_vocab_tokenizer(path)
    for seq in SEQS:
        assert ours.encode(seq).ids == hf(seq)["input_ids"], seq
    assert ours.encode(SEQS[0]).tokens[:6] == ["<cls>", "ATCCCG", "G", "N", "N", "TCGACA"]
    assert ours.encode("acgtac").ids == ours.encode("ACGTAC").ids
    ours.save(str(tmp_path / "tokenizer.json"))  # as 03 / 04 read a run's tokenizer: specials found by name
    _, special = load_tokenizer(tmp_path / "tokenizer.json")
    assert (special.pad, special.mask, special.cls) == tuple(tokens.index(t) for t in ("<pad>", "<mask>", "<cls>"))
    no_eos = transformers.EsmTokenizer(str(path), eos_token=None, unk_token=None)
    assert esm_vocab_tokenizer(path, eos=False).encode(SEQS[2]).ids == no_eos(SEQS[2])["input_ids"]
    if tokens is AGRONT_VOCAB:  # 02's kmer tokenizer is this vocab, in this order: the same ids
        kmer = load_script("02_train_tokenizer.py").kmer_tokenizer(6)
        assert kmer.get_vocab() == {t: i for i, t in enumerate(tokens)}
        assert all(kmer.encode(s).ids == hf(s)["input_ids"] for s in SEQS)


def test_vocab_txt_refused_when_not_kmers(tmp_path):
    (tmp_path / "vocab.txt").write_text("<pad>\n<mask>\n<cls>\nL\nA\n")
    with pytest.raises(UserError, match="vocab.txt: no 'C' token"):
        esm_vocab_tokenizer(tmp_path / "vocab.txt")
