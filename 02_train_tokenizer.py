"""
Step 2: build the run's tokenizer, then encode the whole corpus once into flat uint16 token files.

    python 02_train_tokenizer.py                                    # tinydnabert: BPE 1024, 1/10 sample
    python 02_train_tokenizer.py --config configs/demo.toml
    python 02_train_tokenizer.py --config configs/agront_1b.toml    # 6-mers: nothing to train
    python 02_train_tokenizer.py --config configs/dnafm_7b.toml     # single nucleotides

Three kinds (tokenizer.kind), each a `tokenizers.Tokenizer` saved as tokenizer.json (it loads in Hugging
Face too): bpe = merges learned from a seeded sample of the segments, <s> … </s> (tinydnabert); kmer =
non-overlapping 6-mers, <cls> … (AgroNT); char = one token per nucleotide, [CLS] … [SEP] (DNA FM 7B).
No character is ever dropped: lower case is upper-cased, N and IUPAC codes become a token.

Reads <run>/segments/{train,val[,test]}.txt; writes <run>/tokenizer.json and <run>/tokens/: {split}.bin
(each segment encoded WITH its specials, concatenated: 03 packs blocks with no padding), meta.json
(vocab size, special ids, counts, bp per token, the tokenizer's sha256) and config.toml.
"""

import itertools
import resource
import time
from collections import Counter
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

from shelf.config import load_config, save_config
from shelf.errors import UserError, run_main
from shelf.files import atomic_write, file_hash, prepare_dir, write_json
from shelf.progress import progress
from shelf.seeds import rng
from shelf.tokens import batch_encoder, check_bpe_memory, kmer_tokenizer_of, load_tokenizer, read_batches, upper_case

BPE_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4: RoBERTa's order, so pad = 1
KMER_SPECIALS = ["<pad>", "<mask>", "<cls>"]  # ids 0..2, as AgroNT
# DNA FM 7B's 16 tokens, in its order; the last three are unused placeholders (special: never predicted)
CHAR_VOCAB = ["[PAD]", "[MASK]", "[CLS]", "[SEP]", "[UNK]", "A", "G", "C", "T", "U", "N", "[BOS]", "[EOS]",
              "[UNUSED0]", "[UNUSED1]", "[UNUSED2]"]


def train_bpe_from_segments(segments, vocab_size: int, min_frequency: int, length: int | None = None) -> Tokenizer:
    """Learn BPE merges from segments (or lists of them). No pre-tokenizer: a segment has no spaces, so
    each segment is one 'word' and merges may span it (as TinyDNABERT). Characters outside ACGT become
    one <unk> each (fuse_unk off), so the token count never hides an N run."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=False))
    tok.normalizer = normalizers.Sequence(upper_case("ACGT"))
    tok.decoder = decoders.Fuse()  # join tokens with no spaces: decode(encode(s)) == s
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=BPE_SPECIALS,
                                  initial_alphabet=list("ACGT"), show_progress=length is not None)
    tok.train_from_iterator(segments, trainer=trainer, length=length)
    if [tok.token_to_id(t) for t in BPE_SPECIALS] != list(range(len(BPE_SPECIALS))):  # the template needs them
        raise RuntimeError(f"BPE special ids moved: {[tok.token_to_id(t) for t in BPE_SPECIALS]}")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return tok


def kmer_tokenizer(k: int) -> Tokenizer:
    """AgroNT's tokens: <pad> <mask> <cls>, the 4^k k-mers (AAAAAA, AAAAAT, AAAAAC, ...), then A T C G N; a k-mer
    of ACGT where one fits, else one character (the rule: shelf.tokens.kmer_tokenizer_of, the one k-mer tokenizer)."""
    kmers = ["".join(p) for p in itertools.product("ATCG", repeat=k)]
    return kmer_tokenizer_of(KMER_SPECIALS + kmers + list("ATCGN"), k)


def char_tokenizer() -> Tokenizer:
    """DNA FM 7B: one token per character; U kept for RNA; other codes (R, Y, ...) become [UNK]. A BPE
    model with no merges: ~3x faster to encode than WordLevel behind a split-every-character regex."""
    vocab = {t: i for i, t in enumerate(CHAR_VOCAB)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]", fuse_unk=False))
    tok.normalizer = normalizers.Sequence(upper_case("AGCTUN"))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([t for t in CHAR_VOCAB if t.startswith("[")])
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return tok


def train_bpe(train_path: Path, vocab_size: int, min_frequency: int, fraction: float, seed: int,
              batch_size: int, max_train_mbp: float = 0.0) -> tuple[Tokenizer, dict]:
    """Train BPE on a seeded uniform sample of round(fraction * n) train segments, memory bounded by the sample: the
    file is streamed twice (count lines, then feed the chosen ones). The trainer keeps ~53 B per sampled bp: the sample
    can be capped (max_train_mbp); the run refuses to start, rather than swap, when it cannot fit (check_bpe_memory)."""
    with open(train_path, "rb") as f:
        n_lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b""))
    mean_len = train_path.stat().st_size / max(1, n_lines) - 1  # bp per segment, newline excluded
    n_sample = min(n_lines, max(1, round(fraction * n_lines)))
    if max_train_mbp > 0 and n_sample * mean_len > max_train_mbp * 1e6:
        n_sample = max(1, int(max_train_mbp * 1e6 / mean_len))
        print(f"BPE: sample capped at {n_sample:,} segments by tokenizer.max_train_mbp = {max_train_mbp:g}")
    need = check_bpe_memory(train_path, n_sample * mean_len)
    keep = np.zeros(n_lines + 1, dtype=bool)  # +1: a last line without a newline
    keep[rng(seed, "bpe sample").choice(n_lines, size=n_sample, replace=False)] = True
    print(f"BPE: training on {n_sample:,} of {n_lines:,} train segments (~{n_sample * mean_len / 1e6:,.1f} Mbp, "
          f"seed {seed}; expected peak memory ~{need / 2**30:.1f} GiB)")
    sampled_bp = [0]

    def sample():  # the sampled segments' batches, counting the bp it hands to the trainer
        for batch in read_batches(train_path, batch_size, keep):
            sampled_bp[0] += sum(map(len, batch))
            yield batch

    t0 = time.time()
    tok = train_bpe_from_segments(sample(), vocab_size, min_frequency, length=n_sample)
    print(f"BPE: trained on {sampled_bp[0]:,} bp in {time.time() - t0:.1f}s")
    return tok, {"sampled_segments": n_sample, "sampled_bp": sampled_bp[0]}  # no timings: meta.json is reproducible


def encode_split(encode, src: Path, dst: Path, batch_size: int, unk_id: int | None) -> dict:
    """Encode one segment file into a flat uint16 file, streamed in batches. Returns its counts for meta.json."""
    counts = Counter(dict.fromkeys(("tokens", "segments", "bp", "unk_tokens"), 0))  # in this order in meta.json
    with atomic_write(dst, "wb") as out, progress(total=src.stat().st_size, unit="B", unit_scale=True,
                                              desc=f"encode {src.name}", disable=None) as bar:
        for batch in read_batches(src, batch_size):
            ids = encode(batch)
            out.write(ids.tobytes())
            bp = sum(map(len, batch))
            counts.update(tokens=len(ids), segments=len(batch), bp=bp,
                          unk_tokens=int(np.count_nonzero(ids == unk_id)) if unk_id is not None else 0)
            bar.update(bp + len(batch))  # + newlines
    return dict(counts)


def find_segments(seg_dir: Path) -> Path:
    if (seg_dir / "ledger.json").is_file() and not (seg_dir / "stats.json").is_file():  # 01 writes it last
        raise UserError(f"{seg_dir}: 01_preprocess.py has not finished its genome list (ledger.json lists the "
                        "genomes done); re-run it to go on")
    for name in ("train.txt", "val.txt"):
        if not (seg_dir / name).is_file():
            raise UserError(f"{seg_dir / name}: not found (run 01_preprocess.py with the same --config first)")
        if (seg_dir / name).stat().st_size == 0:  # 03 could not validate (or train) on an empty split
            raise UserError(f"{seg_dir / name}: no segments; 03 needs train and validation segments "
                            "(see preprocess.val_fraction, val_genomes)")
    return seg_dir / "train.txt"


def describe(tok: Tokenizer, special, tc, seconds: float, path: Path) -> None:
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    print(f"tokenizer: {tc.kind}, {vocab_size:,} tokens, specials {special.all}, built in {seconds:.1f}s -> {path}")
    if tc.kind == "bpe":
        longest = max(tok.get_vocab(), key=len)
        print(f"  {vocab_size:,} of {tc.vocab_size:,} tokens asked for; longest: {longest} ({len(longest)} bp); "
              f"example: {' '.join(tok.encode('ACGTACGTTTGACCAGGTCA').tokens)}")


def encode_corpus(tok: Tokenizer, special, kind: str, seg_dir: Path, tok_dir: Path, batch_size: int) -> dict:
    """Every split's segments -> tokens/<split>.bin (char: by a table lookup, shelf.tokens.batch_encoder);
    returns each split's counts."""
    wrap = tok.post_processor.num_special_tokens_to_add(False)  # specials added per segment
    encode = batch_encoder(tok, kind)
    splits = {}
    for split in ("train", "val", "test"):
        src = seg_dir / f"{split}.txt"
        if not src.is_file():  # a token file left by an earlier run whose segments are gone would be read as current
            (tok_dir / f"{split}.bin").unlink(missing_ok=True)
            continue
        s = splits[split] = encode_split(encode, src, tok_dir / f"{split}.bin", batch_size, special.unk)
        s["bp_per_token"] = round(s["bp"] / max(1, s["tokens"] - wrap * s["segments"]), 4)
    return splits


def write_meta(tok: Tokenizer, special, kind: str, splits: dict, tok_path: Path, train_stats: dict) -> None:
    wrap = tok.post_processor.num_special_tokens_to_add(False)
    content = sum(s["tokens"] - wrap * s["segments"] for s in splits.values())  # specials not counted
    meta = {"kind": kind, "vocab_size": tok.get_vocab_size(with_added_tokens=True), "dtype": "uint16",
            "pad_id": special.pad, "mask_id": special.mask, "cls_id": special.cls, "sep_id": special.sep,
            "unk_id": special.unk, "special_ids": list(special.all), "specials_per_segment": wrap, "splits": splits,
            "bp_per_token": round(sum(s["bp"] for s in splits.values()) / max(1, content), 4),
            "tokenizer_sha256": file_hash(tok_path), **train_stats}
    write_json(tok_path.parent / "tokens" / "meta.json", meta)


def main() -> None:
    cfg, _ = load_config(doc=__doc__, sections=("run", "tokenizer"))
    tc = cfg.tokenizer
    seg_dir = cfg.out_dir / "segments"
    tok_dir = cfg.out_dir / "tokens"
    tok_path = cfg.out_dir / "tokenizer.json"
    train_path = find_segments(seg_dir)
    prepare_dir(tok_dir)  # removes the temp files of a killed run

    # 1. the tokenizer (only BPE learns from the data), saved, then read back exactly as 03 and 04 will read it
    t0 = time.time()
    if tc.kind == "bpe":
        tok, train_stats = train_bpe(train_path, tc.vocab_size, tc.min_frequency, tc.sample_fraction, cfg.run.seed,
                                     tc.encode_batch_size, tc.max_train_mbp)
    else:
        tok = kmer_tokenizer(tc.k) if tc.kind == "kmer" else char_tokenizer()
        train_stats = {}  # BPE's: what its training sampled
    with atomic_write(tok_path) as f:
        f.write(tok.to_str(pretty=True))
    tok, special = load_tokenizer(tok_path)
    describe(tok, special, tc, time.time() - t0, tok_path)

    # 2. encode every split once
    splits = encode_corpus(tok, special, tc.kind, seg_dir, tok_dir, tc.encode_batch_size)
    write_meta(tok, special, tc.kind, splits, tok_path, train_stats)
    save_config(cfg, tok_dir)

    for split, s in splits.items():
        unk = f", {s['unk_tokens']:,} unknown (N/IUPAC)" if special.unk is not None else ""
        print(f"{split:>5}: {s['segments']:,} segments, {s['bp']:,} bp -> {s['tokens']:,} tokens "
              f"({s['bp_per_token']:.2f} bp/token{unk}) -> {tok_dir / (split + '.bin')}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(f"done in {time.time() - t0:.1f}s, peak memory {peak:.2f} GiB; meta: {tok_dir / 'meta.json'}")


if __name__ == "__main__":
    run_main(main)
