"""
02_train_tokenizer: build the run's tokenizer, then encode the whole corpus once into uint16 token files.

Three kinds, one file format: every kind is a `tokenizers.Tokenizer` saved as `tokenizer.json`, so 03
and 04 load all of them the same way (common.load_tokenizer), and the same file loads in Hugging Face
(`PreTrainedTokenizerFast(tokenizer_file="out/tinydnabert/tokenizer.json")`).
- bpe  (tinydnabert): byte-pair encoding trained on a seeded uniform sample of the train segments;
        specials <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4 (RoBERTa's order); segments wrapped <s> … </s>.
- kmer (agront_1b):   non-overlapping k-mers left to right, single-nucleotide fallback where an N or the
        end breaks a k-mer; <pad>=0 <mask>=1 <cls>=2, then the 4^k k-mers, then A T C G N; <cls> … .
- char (dnafm_7b):    one token per nucleotide, DNA FM 7B's 16-token vocabulary; [CLS] … [SEP].
No character is ever dropped: lower case is upper-cased; N and IUPAC codes become <unk> (bpe), N
(kmer) or [UNK] (char, which has its own N token).

Reads  <out_dir>/segments/{train,val[,test]}.txt   (01_preprocess.py: one ACGT segment per line)
Writes <out_dir>/tokenizer.json
       <out_dir>/tokens/{train,val[,test]}.bin    flat uint16: each segment encoded WITH its specials,
                                                  concatenated (03 packs blocks with no padding)
       <out_dir>/tokens/meta.json                 vocab size, special ids, counts, bp/token, sha256
       <out_dir>/tokens/config.toml

    python 02_train_tokenizer.py                                    # tinydnabert: BPE 1024, 1/10 sample
    python 02_train_tokenizer.py --config configs/demo.toml
    python 02_train_tokenizer.py --config configs/agront_1b.toml    # 6-mers: nothing to train
    python 02_train_tokenizer.py --config configs/dnafm_7b.toml     # single nucleotides
    python 02_train_tokenizer.py --tokenizer.vocab_size=4096 --run.out_dir=out/bpe4k
"""

from __future__ import annotations

import itertools
import resource
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tqdm import tqdm

from shelf.config import load_config, save_config
from shelf.errors import UserError, run_main
from shelf.files import atomic_write, file_hash, write_json
from shelf.tokens import load_tokenizer

KINDS = ("bpe", "kmer", "char")
BPE_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4: RoBERTa's order, so pad = 1
KMER_SPECIALS = ["<pad>", "<mask>", "<cls>"]  # ids 0..2, as AgroNT
# DNA FM 7B's 16 tokens, in its order; the last three are unused placeholders (special: never predicted)
CHAR_VOCAB = ["[PAD]", "[MASK]", "[CLS]", "[SEP]", "[UNK]", "A", "G", "C", "T", "U", "N", "[BOS]", "[EOS]",
              "[UNUSED0]", "[UNUSED1]", "[UNUSED2]"]
CHAR_SPECIALS = [t for t in CHAR_VOCAB if t.startswith("[")]


def upper_case(letters: str) -> list[normalizers.Normalizer]:
    """Upper-case just the letters the vocabulary has (tokenizers has no Uppercase normaliser); every
    other character then falls to the kind's unknown token instead of silently vanishing."""
    return [normalizers.Replace(c.lower(), c) for c in letters]


def bpe_tokenizer() -> Tokenizer:
    """The untrained BPE pipeline. No pre-tokenizer: a segment has no spaces, so each segment is one
    'word' and merges may span the whole segment (as TinyDNABERT). Characters outside ACGT become one
    <unk> each (fuse_unk off), so the token count never hides an N run."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=False))
    tok.normalizer = normalizers.Sequence(upper_case("ACGT"))
    tok.decoder = decoders.Fuse()  # join tokens with no spaces: decode(encode(s)) == s
    return tok


def kmer_tokenizer(k: int) -> Tokenizer:
    """AgroNT's tokens: <pad> <mask> <cls>, then all 4^k k-mers (product over A T C G, so AAAAAA,
    AAAAAT, AAAAAC, ...), then the single nucleotides A T C G N. The regex takes a k-mer of ACGT where
    one fits, else one character, left to right: ATCCCGGNNTCGACACN -> ATCCCG G N N TCGACA C N."""
    kmers = ["".join(p) for p in itertools.product("ATCG", repeat=k)]
    vocab = {t: i for i, t in enumerate(KMER_SPECIALS + kmers + list("ATCGN"))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="N"))  # unk never fires: the normaliser maps all to ACGTN
    tok.normalizer = normalizers.Sequence(upper_case("ACGT") + [normalizers.Replace(Regex("[^ACGTN]"), "N")])
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(f"[ACGT]{{{k}}}|[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(KMER_SPECIALS)
    cls = vocab["<cls>"]
    tok.post_processor = processors.TemplateProcessing(single="<cls> $A", pair="<cls> $A $B",
                                                       special_tokens=[("<cls>", cls)])
    return tok


def char_tokenizer() -> Tokenizer:
    """DNA FM 7B: one token per character; U kept for RNA; other codes (R, Y, ...) become [UNK].
    Built as a BPE model with no merges (every character its own token): ~3x faster to encode than a
    WordLevel model behind a split-every-character regex, with the same ids."""
    vocab = {t: i for i, t in enumerate(CHAR_VOCAB)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]", fuse_unk=False))
    tok.normalizer = normalizers.Sequence(upper_case("AGCTUN"))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(CHAR_SPECIALS)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return tok


def count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            n += chunk.count(b"\n")
    return n


def read_batches(path: Path, batch_size: int, keep: np.ndarray | None = None) -> Iterator[list[str]]:
    """Stream the segment file as lists of `batch_size` segments; with `keep` (one bool per line),
    only the lines it marks. Blank lines (a trailing newline) are skipped."""
    batch: list[str] = []
    with open(path, "r", encoding="ascii", errors="replace") as f:
        for i, line in enumerate(f):
            if keep is not None and not keep[i]:
                continue
            line = line.strip()
            if line:
                batch.append(line)
                if len(batch) == batch_size:
                    yield batch
                    batch = []
    if batch:
        yield batch


def train_bpe_from_segments(segments: Iterable[str] | Iterable[list[str]], vocab_size: int, min_frequency: int,
                            length: int | None = None) -> Tokenizer:
    """Train the BPE pipeline on segments (or lists of them) -> Tokenizer with <s> … </s> wrapping."""
    tok = bpe_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=BPE_SPECIALS,
                                  initial_alphabet=list("ACGT"), show_progress=length is not None)
    tok.train_from_iterator(segments, trainer=trainer, length=length)
    vocab = tok.get_vocab()
    if [vocab.get(t) for t in BPE_SPECIALS] != list(range(len(BPE_SPECIALS))):
        raise RuntimeError(f"BPE special ids moved: {[vocab.get(t) for t in BPE_SPECIALS]}")  # a tokenizers change
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return tok


def available_memory() -> int:
    """Bytes the kernel says a new process can use without swapping (Linux; 0 = unknown)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return 0


# peak RSS of tokenizers' BPE trainer per sampled bp: 53 measured at 31 and at 310 Mbp, plus a margin
BPE_TRAIN_BYTES_PER_BP = 60


def train_bpe(train_path: Path, vocab_size: int, min_frequency: int, fraction: float, seed: int,
              batch_size: int, max_train_mbp: float = 0.0) -> tuple[Tokenizer, dict]:
    """Train BPE on a seeded uniform sample of exactly round(fraction * n) train segments.

    Memory is bounded by the sample, never the corpus: the file is streamed twice (count lines, then
    feed only the chosen ones) and Python holds one batch at a time. The trainer itself keeps every
    sampled bp as a 32-byte symbol (~53 B/bp in all: 15.5 GiB for 310 Mbp), so the sample can be
    capped (max_train_mbp), and the run refuses to start, rather than swap or be killed, when it
    cannot fit in the memory available.
    """
    n_lines = count_lines(train_path)
    mean_len = train_path.stat().st_size / max(1, n_lines) - 1  # bp per segment, newline excluded
    n_sample = min(n_lines, max(1, round(fraction * n_lines)))
    if max_train_mbp > 0 and n_sample * mean_len > max_train_mbp * 1e6:
        n_sample = max(1, int(max_train_mbp * 1e6 / mean_len))
        print(f"BPE: sample capped at {n_sample:,} segments by tokenizer.max_train_mbp = {max_train_mbp:g}")
    need, avail = BPE_TRAIN_BYTES_PER_BP * n_sample * mean_len, available_memory()
    if avail and need > avail:
        raise UserError(f"{train_path}: BPE training on ~{n_sample * mean_len / 1e6:,.0f} Mbp needs "
                        f"~{need / 2**30:.1f} GiB but {avail / 2**30:.1f} GiB is available; set --tokenizer.max_train_mbp="
                        f"{avail / BPE_TRAIN_BYTES_PER_BP / 1e6 * 0.8:.0f} or a smaller --tokenizer.sample_fraction")
    rng = np.random.default_rng(seed)
    keep = np.zeros(n_lines + 1, dtype=bool)  # +1: a last line without a newline
    keep[rng.choice(n_lines, size=n_sample, replace=False)] = True
    print(f"BPE: training on {n_sample:,} of {n_lines:,} train segments (~{n_sample * mean_len / 1e6:,.1f} Mbp, "
          f"seed {seed}; expected peak memory ~{need / 2**30:.1f} GiB)")
    sampled_bp = 0

    def sample() -> Iterator[list[str]]:
        nonlocal sampled_bp
        for batch in read_batches(train_path, batch_size, keep):
            sampled_bp += sum(map(len, batch))
            yield batch

    t0 = time.time()
    tok = train_bpe_from_segments(sample(), vocab_size, min_frequency, length=n_sample)
    print(f"BPE: trained on {sampled_bp:,} bp in {time.time() - t0:.1f}s")
    return tok, {"sampled_segments": n_sample, "sampled_bp": sampled_bp}  # no timings: meta.json is reproducible


def encode_split(tok: Tokenizer, src: Path, dst: Path, batch_size: int, unk_id: int | None) -> dict:
    """Encode one segment file into a flat uint16 file, streaming, batched (encode_batch runs on all
    cores via Rayon). Returns its counts for meta.json."""
    n_tokens = n_segments = n_bp = n_unk = 0
    encode_batch = getattr(tok, "encode_batch_fast", tok.encode_batch)  # _fast (tokenizers >= 0.20.1): no offsets
    with atomic_write(dst, "wb") as out, tqdm(total=src.stat().st_size, unit="B", unit_scale=True,
                                             desc=f"encode {src.name}") as bar:
        for batch in read_batches(src, batch_size):
            encodings = encode_batch(batch)  # with the kind's specials
            ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.uint16)
            out.write(ids.tobytes())
            n_tokens += len(ids)
            n_segments += len(batch)
            bp = sum(map(len, batch))
            n_bp += bp
            if unk_id is not None:
                n_unk += int(np.count_nonzero(ids == unk_id))
            bar.update(bp + len(batch))  # + newlines
    return {"tokens": n_tokens, "segments": n_segments, "bp": n_bp, "unk_tokens": n_unk}


def main() -> None:
    cfg, _ = load_config()
    tc = cfg.tokenizer
    if tc.kind not in KINDS:
        raise UserError(f"tokenizer.kind = '{tc.kind}': expected one of {', '.join(KINDS)}", exit_code=2)
    seg_dir, tok_dir = cfg.out_dir / "segments", cfg.out_dir / "tokens"
    train_path = seg_dir / "train.txt"
    for name in ("train.txt", "val.txt"):
        if not (seg_dir / name).is_file():
            raise UserError(f"{seg_dir / name}: not found (run 01_preprocess.py with the same --config first)")
    if train_path.stat().st_size == 0:
        raise UserError(f"{train_path}: no segments")

    # 1. the tokenizer
    t0 = time.time()
    train_stats: dict = {}
    if tc.kind == "bpe":
        if not 0 < tc.sample_fraction <= 1:
            raise UserError(f"tokenizer.sample_fraction = {tc.sample_fraction}: expected (0, 1]", exit_code=2)
        tok, train_stats = train_bpe(train_path, tc.vocab_size, tc.min_frequency, tc.sample_fraction,
                                     cfg.run.seed, tc.encode_batch_size, tc.max_train_mbp)
    elif tc.kind == "kmer":
        if not 1 <= tc.k <= 7:  # 4^8 k-mers would not fit uint16 ids
            raise UserError(f"tokenizer.k = {tc.k}: expected 1..7 (token ids are uint16)", exit_code=2)
        tok = kmer_tokenizer(tc.k)
    else:
        tok = char_tokenizer()
    tok_path = cfg.out_dir / "tokenizer.json"
    with atomic_write(tok_path) as f:
        f.write(tok.to_str(pretty=True))
    tok, sp = load_tokenizer(tok_path)  # read back what 03 and 04 will read
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    assert vocab_size <= 2**16, vocab_size
    print(f"tokenizer: {tc.kind}, {vocab_size:,} tokens, specials {sp.all}, built in {time.time() - t0:.1f}s "
          f"-> {tok_path}")
    if tc.kind == "bpe":
        if vocab_size < tc.vocab_size:
            print(f"  note: only {vocab_size:,} of {tc.vocab_size:,} tokens: no more pairs occur "
                  f"{tc.min_frequency}+ times in the sample")
        longest = max(tok.get_vocab(), key=len)
        print(f"  longest token: {longest} ({len(longest)} bp); example: "
              f"{' '.join(tok.encode('ACGTACGTTTGACCAGGTCA').tokens)}")

    # 2. encode every split once
    wrap = tok.post_processor.num_special_tokens_to_add(False)  # specials added per segment
    splits = {}
    for split in ("train", "val", "test"):
        src = seg_dir / f"{split}.txt"
        if src.is_file():
            splits[split] = encode_split(tok, src, tok_dir / f"{split}.bin", tc.encode_batch_size, sp.unk)
            s = splits[split]
            s["bp_per_token"] = round(s["bp"] / max(1, s["tokens"] - wrap * s["segments"]), 4)
        else:  # a token file left by an earlier run whose segments are gone would be read as current
            (tok_dir / f"{split}.bin").unlink(missing_ok=True)
    content = sum(s["tokens"] - wrap * s["segments"] for s in splits.values())
    meta = {
        "kind": tc.kind,
        "vocab_size": vocab_size,
        "dtype": "uint16",
        "pad_id": sp.pad,
        "mask_id": sp.mask,
        "cls_id": sp.cls,
        "sep_id": sp.sep,
        "unk_id": sp.unk,
        "special_ids": list(sp.all),
        "specials_per_segment": wrap,
        "splits": splits,
        "bp_per_token": round(sum(s["bp"] for s in splits.values()) / max(1, content), 4),  # specials not counted
        "tokenizer_sha256": file_hash(tok_path),
        **train_stats,
    }
    write_json(tok_dir / "meta.json", meta)
    save_config(cfg, tok_dir)

    # 3. summary
    for split, s in splits.items():
        unk = f", {s['unk_tokens']:,} unknown (N/IUPAC)" if sp.unk is not None else ""
        print(f"{split:>5}: {s['segments']:,} segments, {s['bp']:,} bp -> {s['tokens']:,} tokens "
              f"({s['bp_per_token']:.2f} bp/token{unk}) -> {tok_dir / (split + '.bin')}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(f"done in {time.time() - t0:.1f}s, peak memory {peak:.2f} GiB; meta: {tok_dir / 'meta.json'}")


if __name__ == "__main__":
    run_main(main)
