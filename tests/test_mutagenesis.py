"""Using a trained model: embeddings (shelf/inference.py) and in-silico mutagenesis (05_mutagenesis.py).

Run: python -m pytest tests/test_mutagenesis.py -q   (CPU; the motif test trains a tiny model through 02 and 03)
"""


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, load_script, run_script
from model import MaskedLM, ModelConfig
from shelf.demo_data import Grammar, promoter_example, splice_example
from shelf.errors import UserError
from shelf.inference import embed, load_run

tokenizers = load_script("02_train_tokenizer.py")
mutagenesis = load_script("05_mutagenesis.py")
SEQS = ["ACGTACGTTTGACCAGGTCAGATTACA", "GGGCGGTATAAAAG", "ACGTNACGTACGTACGTAGCTAGCTAGCTTTAAACCCGGGA", "T"]


def random_model(vocab_size, pad, hidden=32, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab_size, pad_token_id=pad, hidden_size=hidden, num_layers=2, num_heads=4,
                      ffn_size=64, max_seq_len=64, norm_position="pre", type_vocab_size=0)
    return MaskedLM(cfg).eval()


# --- embeddings -----------------------------------------------------------------------------------

def test_embed_shapes_and_pooled_independent_of_batch():
    tok, model = tokenizers.char_tokenizer(), random_model(16, 0)
    per_token, mask, pooled = embed(model, tok, SEQS, batch_size=3)  # 2 batches, each padded to its own longest
    T = len(SEQS[2]) + 2  # [CLS] ... [SEP]
    assert per_token.shape == (4, T, 32) and mask.shape == (4, T) and pooled.shape == (4, 32)
    assert mask.sum(1).tolist() == [len(s) + 2 for s in SEQS]
    assert torch.all(per_token[~mask] == 0)
    for i, s in enumerate(SEQS):  # alone, or with others of other lengths: the same embedding
        alone_tokens, _, alone = embed(model, tok, [s])
        assert (alone[0] - pooled[i]).abs().max() < 1e-5
        assert (alone_tokens[0] - per_token[i, :len(s) + 2]).abs().max() < 1e-5
    with torch.no_grad():  # pooled = the mean of the encoder's output over the real tokens
        h = model.encoder(torch.tensor([tok.encode(SEQS[1]).ids]))[0]
    assert (h.mean(0) - pooled[1]).abs().max() < 1e-5


def test_embed_refuses_too_long():
    with pytest.raises(UserError, match="sequence 2: 66 tokens > model.max_seq_len = 64"):
        embed(random_model(16, 0), tokenizers.char_tokenizer(), ["ACGT", "A" * 64])


# --- scores: exact for single nucleotides and 6-mers, the PLL window for BPE --------------------------

def masked_logp(model, ids, t):  # log p(. | ids with token t masked), straight from the model
    x = torch.tensor([ids[:t] + [1] + ids[t + 1:]])  # <mask> / [MASK] is id 1 in 02's kmer and char kinds
    with torch.no_grad():
        return F.log_softmax(model(x)[0, t], dim=-1)


def test_char_scores_are_masked_marginals():
    tok, model, seq = tokenizers.char_tokenizer(), random_model(16, 0), "ACGTNACGGT"
    scores = mutagenesis.score_sequence(model, tok, 1, seq)
    assert scores.shape == (4, 10) and np.isnan(scores[:, 4]).all()  # N: no reference to score against
    ids, vocab = tok.encode(seq).ids, tok.get_vocab()
    for i, ref in enumerate(seq):
        if ref != "N":
            logp = masked_logp(model, ids, i + 1)  # + 1: [CLS]
            for k, alt in enumerate("ACGT"):
                assert abs(scores[k, i] - (logp[vocab[alt]] - logp[vocab[ref]]).item()) < 1e-5


def test_kmer_scores_are_the_6mer_ratio():
    tok, model, seq = tokenizers.kmer_tokenizer(6), random_model(4104, 0, hidden=16), "ACGTACGGTCAATTGCAC"
    scores = mutagenesis.score_sequence(model, tok, 1, seq)
    ids, vocab = tok.encode(seq).ids, tok.get_vocab()
    for i, alt in [(0, "G"), (7, "A"), (17, "T")]:  # in the first, the second 6-mer, and the last 6-mer
        t, start = i // 6 + 1, i // 6 * 6
        mutant = seq[:i] + alt + seq[i + 1:]
        logp = masked_logp(model, ids, t)
        expected = logp[vocab[mutant[start:start + 6]]] - logp[vocab[seq[start:start + 6]]]
        assert abs(scores["ACGT".index(alt), i] - expected.item()) < 1e-5


def test_bpe_scores_finite():
    tok = tokenizers.train_bpe_from_segments([SEQS * 20], vocab_size=40, min_frequency=2)
    seq = SEQS[2].replace("N", "A")
    scores = mutagenesis.score_sequence(random_model(40, 1), tok, 4, seq)
    assert np.isfinite(scores).all() and (scores == 0).sum(0).tolist() == [1] * len(seq)


# --- 05 end to end on a tiny model trained by 02 and 03: planted motifs light up -------------------

def tiny_args(run):
    return ["--config", "configs/demo.toml", f"--run.out_dir={run}", "--tokenizer.kind=char",
            "--model.vocab_size=16", "--model.pad_token_id=0", "--model.hidden_size=64", "--model.num_layers=1",
            "--model.ffn_size=256", "--model.norm_position=pre", "--model.type_vocab_size=0", "--model.dropout=0.0",
            "--model.attention_dropout=0.0", "--pretrain.seq_len=102", "--pretrain.batch_size=32",
            "--pretrain.max_steps=800", "--pretrain.warmup_steps=30", "--pretrain.lr=4e-3",
            "--pretrain.eval_interval=800", "--pretrain.eval_batches=1", "--pretrain.ckpt_interval=800"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """02 + 03 on 4,000 fresh 100-bp windows of the demo grammar, one a segment (02: [CLS] w [SEP] = 102 tokens,
    03: one block each): core promoters and not, splice donors, acceptors and neither."""
    run = tmp_path_factory.mktemp("mutagenesis") / "run"
    g = Grammar(np.random.default_rng([11, 11]))  # not 05 --demo's sequences: those are rng(seed, "mutagenesis demo")
    windows = [promoter_example(g, int(g.rng.integers(2))) if k % 2 else splice_example(g, int(g.rng.integers(3)))
               for k in range(4000)]  # of a random class each
    (run / "segments").mkdir(parents=True)
    for split, part in (("train", windows[:3900]), ("val", windows[3900:])):
        (run / "segments" / f"{split}.txt").write_text("".join(w.tobytes().decode().upper() + "\n" for w in part))
    for script in ("02_train_tokenizer.py", "03_pretrain.py"):
        result = run_script(script, *tiny_args(run))
        assert result.returncode == 0, result.stderr[-2000:]
    return run


def test_mutagenesis_motifs_light_up(trained_run):
    result = run_script("05_mutagenesis.py", *tiny_args(trained_run), "--demo")
    assert result.returncode == 0, result.stderr[-2000:]
    out = trained_run / "mutagenesis"
    headers = [line[1:] for line in (out / "demo_sequences.fa").read_text().splitlines() if line.startswith(">")]
    rows = [line.split("\t") for line in (out / "mutations.tsv").read_text().splitlines()]
    assert rows[0] == ["seq", "pos", "ref", "alt", "score"] and len(rows) == 1 + 8 * 100 * 3
    assert len(list(out.glob("*.png"))) == 8 and (out / "config.toml").is_file() and (out / "inputs.json").is_file()
    motif = {(h.split()[0], p) for h in headers for first, last in mutagenesis.motif_spans(h)
             for p in range(first, last + 1)}  # the heatmaps box the same spans
    assert len(headers) == 8 and all(mutagenesis.motif_spans(h) for h in headers)
    for kind in ("promoter", "donor"):  # TATA box, Inr, CAAT box; splice donor GT[AG]AGT
        inside, outside = [[abs(float(r[4])) for r in rows[1:] if r[0].startswith(kind)
                            and ((r[0], int(r[1])) in motif) == want] for want in (True, False)]
        ratio = np.mean(inside) / np.mean(outside)
        print(f"{kind}: mean |score| inside motifs {np.mean(inside):.3f}, outside {np.mean(outside):.3f}: x{ratio:.2f}")
        assert ratio >= 2.0, kind
        assert f"{kind}: mean |score| inside the named motifs / outside = {ratio:.2f}x" in result.stdout  # 05 says it


def test_load_run_and_errors(trained_run, tmp_path):
    model, tok, special = load_run(trained_run)
    assert not model.training and special.mask == 1 and model.cfg.hidden_size == 64
    _, _, pooled = embed(model, tok, SEQS)
    assert pooled.shape == (4, 64) and torch.isfinite(pooled).all()
    with pytest.raises(UserError, match="final/model.pt: not found"):
        load_run(tmp_path)
    for args, message in [([], "usage"), (["missing.fa"], "missing.fa")]:
        result = run_script("05_mutagenesis.py", *tiny_args(trained_run), *args, cwd=ROOT)
        assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
