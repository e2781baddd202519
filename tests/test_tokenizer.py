"""02_train_tokenizer.py and shelf.tokens.load_tokenizer / read_token_meta."""

from __future__ import annotations

import json
import random
import re
import sys

import numpy as np
import pytest
from tokenizers import Tokenizer, models, processors

import shelf.tokens
from shelf.errors import UserError
from shelf.fasta import read_fasta
from shelf.tokens import load_tokenizer, read_token_meta
from conftest import ROOT, load_script, main_as_user, run_script
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


# -----------------------------------------------------------------------------
# the three tokenizers, built in-process (02's builders) and through the script (run_script)

t02 = load_script("02_train_tokenizer.py")


def _random_dna(rng: random.Random, n: int, alphabet: str = "ACGT") -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _write_segments(run_dir, train: list[str], val: list[str]) -> None:
    """The layout 01_preprocess.py writes: segments/{train,val}.txt, one segment per line."""
    seg = run_dir / "segments"
    seg.mkdir(parents=True)
    (seg / "train.txt").write_text("\n".join(train) + "\n")
    (seg / "val.txt").write_text("\n".join(val) + "\n")


def _synthetic_segments(seed: int, n: int) -> list[str]:
    """Random DNA with planted repeats, so BPE has structure to find (and many near-tied pairs)."""
    rng = random.Random(seed)
    motifs = [_random_dna(rng, rng.randint(4, 12)) for _ in range(30)]
    segs = []
    for _ in range(n):
        parts, length = [], rng.randint(256, 1024)
        while sum(map(len, parts)) < length:
            parts.append(rng.choice(motifs) if rng.random() < 0.5 else _random_dna(rng, 8))
        segs.append("".join(parts)[:length])
    return segs


def test_kmer_model_card_example_and_vocab_order():
    tok = t02.kmer_tokenizer(6)
    enc = tok.encode("ATCCCGGNNTCGACACN")
    assert enc.tokens == ["<cls>", "ATCCCG", "G", "N", "N", "TCGACA", "C", "N"]
    vocab = tok.get_vocab()
    assert len(vocab) == tok.get_vocab_size() == 4104
    assert [vocab[t] for t in ["<pad>", "<mask>", "<cls>", "AAAAAA", "AAAAAT", "GGGGGG"]] == [0, 1, 2, 3, 4, 4098]
    assert [vocab[t] for t in "ATCGN"] == [4099, 4100, 4101, 4102, 4103]
    # lower case and IUPAC codes: same length, each odd code one N (nothing dropped)
    assert tok.encode("atcccgRYnntcgacacn").tokens == ["<cls>", "ATCCCG", "N", "N", "N", "N", "TCGACA", "C", "N"]


def test_char_vocab_is_dnafm_order():
    tok = t02.char_tokenizer()
    published = ["[PAD]", "[MASK]", "[CLS]", "[SEP]", "[UNK]", "A", "G", "C", "T", "U", "N", "[BOS]", "[EOS]"]
    vocab = tok.get_vocab()
    assert tok.get_vocab_size() == 16
    assert [vocab[t] for t in published] == list(range(13))
    enc = tok.encode("AGCTUN")
    assert enc.ids == [2, 5, 6, 7, 8, 9, 10, 3]  # [CLS] A G C T U N [SEP]
    assert tok.encode("agctunRY").tokens == ["[CLS]", "A", "G", "C", "T", "U", "N", "[UNK]", "[UNK]", "[SEP]"]


@pytest.fixture(scope="module")
def small_bpe():
    tok = t02.train_bpe_from_segments(_synthetic_segments(0, 200), vocab_size=128, min_frequency=2)
    return tok


@pytest.mark.parametrize("kind", ["bpe", "kmer", "char"])
def test_round_trip_case_unknowns_and_uint16(kind, small_bpe):
    tok = {"bpe": small_bpe, "kmer": t02.kmer_tokenizer(6), "char": t02.char_tokenizer()}[kind]
    rng = random.Random(1)
    seqs = [_random_dna(rng, rng.randint(1, 300)) for _ in range(50)]
    for seq in seqs:
        enc = tok.encode(seq)
        assert tok.decode(enc.ids) == seq  # ACGT-only: exact round trip, specials skipped
        assert tok.encode(seq.lower()).ids == enc.ids  # lower case = upper case
        assert max(enc.ids) < tok.get_vocab_size() <= 2**16  # fits uint16
    # N and IUPAC codes: every one becomes a token, none vanish
    seq = "ACGTNNRYKMACGT"
    unknown = {"bpe": ["<unk>"], "kmer": ["N"], "char": ["N", "[UNK]"]}[kind]
    tokens = tok.encode(seq).tokens
    assert sum(t in unknown for t in tokens) == 6
    body = [t for t in tokens if t in unknown or not t.startswith(("<", "["))]
    assert sum(1 if t in unknown else len(t) for t in body) == len(seq)


@pytest.mark.parametrize("kind", ["bpe", "kmer", "char"])
def test_hugging_face_loads_the_same_ids(kind, small_bpe, tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok = {"bpe": small_bpe, "kmer": t02.kmer_tokenizer(6), "char": t02.char_tokenizer()}[kind]
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path))
    rng = random.Random(2)
    seqs = [_random_dna(rng, rng.randint(1, 200)) for _ in range(20)] + ["ATCCCGGNNTCGACACN", "acgtRYn"]
    for seq in seqs:
        assert hf(seq)["input_ids"] == tok.encode(seq).ids
    assert hf.decode(tok.encode(seqs[0]).ids, skip_special_tokens=True) == seqs[0]


def _real_segments(fasta, seed: int = 0) -> list[str]:
    """Segments the way 01 cuts them (upper-case, split at anything not ACGT, 256–1024 bp pieces),
    written here so this test does not depend on 01_preprocess.py."""
    rng = random.Random(seed)
    segs = []
    for rec in read_fasta(fasta):
        for m in re.finditer("[ACGT]+", rec.sequence.upper()):
            run, i = m.group(), 0
            while len(run) - i >= 256:
                n = rng.randint(256, 1024)
                segs.append(run[i:i + n])
                i += n
    return segs


def test_bpe_on_real_dna_meta_and_token_files(shared_data, tmp_path):
    segs = _real_segments(shared_data / "genome" / "hg38_chr2_1-2333275.fa.gz")
    random.Random(1).shuffle(segs)
    val, train = segs[:150], segs[150:]  # ~2.2 Mbp train, ~95 kbp held out
    _write_segments(tmp_path, train, val)
    r = run_script("02_train_tokenizer.py", f"--run.out_dir={tmp_path}", "--tokenizer.sample_fraction=1.0")
    assert r.returncode == 0, r.stderr
    tok, sp = load_tokenizer(tmp_path / "tokenizer.json", ModelConfig(vocab_size=1024, pad_token_id=1))
    assert tok.get_vocab_size() == 1024 and (sp.cls, sp.pad, sp.sep, sp.unk, sp.mask) == (0, 1, 2, 3, 4)

    meta = read_token_meta(tmp_path / "tokens", tmp_path / "tokenizer.json")  # hash and sizes check out
    assert meta["splits"]["val"]["bp_per_token"] >= 4.0  # held-out human DNA (~4.3 expected)
    assert meta["bp_per_token"] >= 4.0
    for split, seqs in (("train", train), ("val", val)):
        ids = np.fromfile(tmp_path / "tokens" / f"{split}.bin", dtype=np.uint16)
        s = meta["splits"][split]
        assert (s["tokens"], s["segments"], s["bp"]) == (len(ids), len(seqs), sum(map(len, seqs)))
        # each segment wrapped <s> … </s>, concatenated: segment k is between the k-th <s> and </s>
        assert ids.max() < meta["vocab_size"] and (ids == 0).sum() == (ids == 2).sum() == len(seqs)
        first = ids[: int(np.argmax(ids == 2)) + 1]
        assert tok.decode(first.tolist()) == seqs[0] and first[0] == 0
    assert json.loads((tmp_path / "tokens" / "meta.json").read_text())["tokenizer_sha256"] == meta["tokenizer_sha256"]
    assert (tmp_path / "tokens" / "config.toml").is_file()

    # 03 must refuse token files made by another tokenizer, or files that do not match their counts
    other = tmp_path / "other.json"
    t02.char_tokenizer().save(str(other))
    with pytest.raises(UserError, match="another tokenizer"):
        read_token_meta(tmp_path / "tokens", other)
    with open(tmp_path / "tokens" / "val.bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(UserError, match="val.bin: expected"):
        read_token_meta(tmp_path / "tokens", tmp_path / "tokenizer.json")


def test_same_seed_same_files_other_seed_other_sample(tmp_path):
    segs = _synthetic_segments(3, 300)
    outputs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        run_dir = tmp_path / name
        _write_segments(run_dir, segs[50:], segs[:50])
        r = run_script("02_train_tokenizer.py", f"--run.out_dir={run_dir}", f"--run.seed={seed}",
                       "--tokenizer.vocab_size=256", "--tokenizer.sample_fraction=0.5",
                       "--tokenizer.encode_batch_size=64", env={"RAYON_NUM_THREADS": "2"})
        assert r.returncode == 0, r.stderr
        outputs[name] = [(run_dir / p).read_bytes() for p in ("tokenizer.json", "tokens/train.bin",
                                                              "tokens/val.bin", "tokens/meta.json")]
    assert outputs["a"] == outputs["b"]
    assert outputs["a"][0] != outputs["c"][0]  # the seed picks the training sample


@pytest.mark.parametrize("config,kind,vocab,wrap", [("agront_1b", "kmer", 4104, ("<cls>", None)),
                                                    ("dnafm_7b", "char", 16, ("[CLS]", "[SEP]"))])
def test_kmer_and_char_presets_write_token_files(tmp_path, config, kind, vocab, wrap):
    rng = random.Random(4)
    train = [_random_dna(rng, rng.randint(5, 60), "ACGTN") for _ in range(300)] + ["acgtRYacgt"]
    _write_segments(tmp_path, train, train[:20])
    r = run_script("02_train_tokenizer.py", f"--config={ROOT / 'configs' / (config + '.toml')}",
                   f"--run.out_dir={tmp_path}", "--tokenizer.encode_batch_size=32")
    assert r.returncode == 0, r.stderr
    tok, sp = load_tokenizer(tmp_path / "tokenizer.json", ModelConfig(vocab_size=vocab, pad_token_id=0))
    meta = read_token_meta(tmp_path / "tokens", tmp_path / "tokenizer.json")
    assert (meta["kind"], meta["vocab_size"], meta["pad_id"], meta["mask_id"]) == (kind, vocab, 0, 1)
    ids = np.fromfile(tmp_path / "tokens" / "train.bin", dtype=np.uint16).tolist()
    expected = [i for seg in train for i in tok.encode(seg).ids]
    assert ids == expected
    assert ids.count(tok.token_to_id(wrap[0])) == len(train)
    if wrap[1]:
        assert ids.count(tok.token_to_id(wrap[1])) == len(train)
    # no character dropped: bp counts every character, each non-special token covers >= 1 of them
    assert meta["splits"]["train"]["bp"] == sum(map(len, train))


def test_char_tokens_by_table_lookup_equal_the_tokenizers():
    t02 = load_script("02_train_tokenizer.py")
    tok = t02.char_tokenizer()
    by_table, by_tokenizers = t02.batch_encoder(tok, "char"), t02.batch_encoder(tok, "kmer")
    assert by_table is not by_tokenizers  # the fast path is taken for char tokens
    rng = random.Random(7)
    batch = [_random_dna(rng, rng.randint(1, 300), "ACGTNacgtnRYKMuU") for _ in range(200)]
    assert np.array_equal(by_table(batch), by_tokenizers(batch))


def test_char_table_refuses_a_tokenizer_it_cannot_reproduce(small_bpe):
    with pytest.raises(AssertionError, match="char tokenizer: 'AAACGT' is [1-5] tokens, not one a letter"):
        t02.batch_encoder(small_bpe, "char")  # BPE merges letters: a table of single letters would differ


def test_one_kmer_tokenizer_for_02_and_a_hugging_face_vocab_txt(tmp_path):
    from shelf.hf_keys import esm_vocab_tokenizer

    kmer = t02.kmer_tokenizer(6)
    vocab = [t for t, _ in sorted(kmer.get_vocab().items(), key=lambda item: item[1])]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    assert esm_vocab_tokenizer(tmp_path / "vocab.txt", eos=False).to_str() == kmer.to_str()


def test_missing_segments_is_one_line_error(tmp_path):
    r = run_script("02_train_tokenizer.py", f"--run.out_dir={tmp_path}")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"error: {tmp_path}/segments/train.txt: not found "
                                             "(run 01_preprocess.py with the same --config first)"]


def test_bpe_sample_is_capped_and_refused_when_it_cannot_fit(tmp_path, monkeypatch):
    segs = _synthetic_segments(5, 400)
    _write_segments(tmp_path, segs, segs[:5])
    train = tmp_path / "segments" / "train.txt"
    mean = sum(map(len, segs)) / len(segs)
    _, stats = t02.train_bpe(train, 64, 2, 1.0, 0, 128, max_train_mbp=0.02)  # 20 kbp of ~250 kbp
    assert stats["sampled_segments"] == int(0.02e6 / mean)
    assert abs(stats["sampled_bp"] - 0.02e6) < 0.25 * 0.02e6
    monkeypatch.setattr(shelf.tokens, "available_memory", lambda: 1_000_000)  # 1 MB free: refuse before training
    with pytest.raises(UserError, match="needs ~.* GiB but .* available; set --tokenizer.max_train_mbp="):
        t02.train_bpe(train, 64, 2, 1.0, 0, 128)


def run02_as_user(monkeypatch, capsys, run_dir, *args) -> tuple[int, str]:
    return main_as_user(monkeypatch, capsys, "02_train_tokenizer.py", t02.main, f"--run.out_dir={run_dir}", *args)


def test_binary_bytes_empty_val_and_an_unfinished_01_are_one_line(tmp_path, monkeypatch, capsys):
    segs = _synthetic_segments(6, 60)
    _write_segments(tmp_path, segs, segs[:5])
    seg = tmp_path / "segments"
    good = (seg / "train.txt").read_bytes()
    for bad, byte in ((b"AC\rGT", "0x0d"), (b"AC\x00\xffGT", "0x00")):  # a CR was an IndexError in BPE training
        (seg / "train.txt").write_bytes(b"ACGT\n" + bad + b"\n" + good)
        for kind in ("bpe", "char"):
            code, err = run02_as_user(monkeypatch, capsys, tmp_path, f"--tokenizer.kind={kind}",
                                      "--tokenizer.vocab_size=64", "--tokenizer.sample_fraction=1.0")
            assert code == 1 and err.startswith(f"error: {seg / 'train.txt'}:2: byte {byte} in a segment"), err
            assert err.count("\n") == 1
    (seg / "train.txt").write_bytes(good)
    (seg / "val.txt").write_bytes(b"")  # was exit 0 here, then a failed mmap in 03
    code, err = run02_as_user(monkeypatch, capsys, tmp_path, "--tokenizer.kind=char")
    assert code == 1 and err.startswith(f"error: {seg / 'val.txt'}: no segments") and err.count("\n") == 1
    (seg / "val.txt").write_text("\n".join(segs[:5]) + "\n")
    (seg / "ledger.json").write_text("{}")  # 01 streaming a genome list, not done (no stats.json yet)
    code, err = run02_as_user(monkeypatch, capsys, tmp_path, "--tokenizer.kind=char")
    assert code == 1 and "01_preprocess.py has not finished" in err and err.count("\n") == 1


def test_temp_files_of_a_killed_run_are_removed(tmp_path, monkeypatch):
    segs = _synthetic_segments(7, 40)
    _write_segments(tmp_path, segs, segs[:5])
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens" / ".train.bin.k1ll3d.tmp").write_bytes(b"\0" * 100)  # SIGKILL skips atomic_write's cleanup
    monkeypatch.setattr(sys, "argv", ["02_train_tokenizer.py", f"--run.out_dir={tmp_path}", "--tokenizer.kind=char"])
    t02.main()
    assert sorted(p.name for p in (tmp_path / "tokens").iterdir()) == ["config.toml", "meta.json", "train.bin",
                                                                      "val.bin"]
