"""Tokenizers: the k-mer tokenizer (02's kmer kind, a Hugging Face vocab.txt's), 02's machinery (the char table
lookup, the BPE memory guard), and reading what 02 wrote: load_tokenizer finds the special tokens by role, so
that 03 and 04 never hard-code an id; read_token_meta refuses token files made by another tokenizer."""

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from model import ModelConfig
from shelf.errors import UserError
from shelf.files import file_hash

LETTERS = bytes(range(65, 91)) + bytes(range(97, 123))  # A-Z a-z: A/C/G/T, N and IUPAC codes, any case


def upper_case(letters: str) -> list[normalizers.Normalizer]:
    """Upper-case just the letters the vocabulary has (tokenizers has no Uppercase normaliser); every
    other character then falls to the kind's unknown token instead of silently vanishing."""
    return [normalizers.Replace(c.lower(), c) for c in letters]


def kmer_tokenizer_of(vocab: list[str], k: int, eos: bool = False) -> Tokenizer:
    """The tokenizer of a k-mer vocabulary (id = place in `vocab`: specials <...>, the k-mers, A C G T N),
    with EsmTokenizer's ids: <cls>, then a k-mer of ACGT where one fits, else one character, left to right
    (ATCCCGGNNTCGACACN -> <cls> ATCCCG G N N TCGACA C N), then <eos> if `eos`. Lower case is upper-cased
    and any other character becomes N (EsmTokenizer: <unk>), so the token count never hides a letter."""
    ids = {t: i for i, t in enumerate(vocab)}
    tok = Tokenizer(models.WordLevel(ids, unk_token="<unk>" if "<unk>" in ids else "N"))  # never: all is ACGTN
    tok.normalizer = normalizers.Sequence(upper_case("ACGT") + [normalizers.Replace(Regex("[^ACGTN]"), "N")])
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(f"[ACGT]{{{k}}}|[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([t for t in vocab if t.startswith("<") and t.endswith(">")])
    end = " <eos>" if eos else ""
    tok.post_processor = processors.TemplateProcessing(single=f"<cls> $A{end}", pair=f"<cls> $A{end} $B{end}",
        special_tokens=[("<cls>", ids["<cls>"])] + ([("<eos>", ids["<eos>"])] if eos else []))
    return tok


def batch_encoder(tok: Tokenizer, kind: str) -> Callable[[list[str]], np.ndarray]:
    """-> a function: segments -> their token ids, specials included (uint16). A char tokenizer maps each letter
    on its own, so a byte -> id table read off it gives its ids ~30x faster than encode_batch (dnafm_7b: ~174 Gbp).
    Each letter is checked (twice, then ACGT): a tokenizer that merges letters fails here, not encodes otherwise."""
    encode_batch = getattr(tok, "encode_batch_fast", tok.encode_batch)  # _fast (tokenizers >= 0.20.1): no offsets

    def by_tokenizers(batch: list[str]) -> np.ndarray:
        return np.fromiter(itertools.chain.from_iterable(e.ids for e in encode_batch(batch)), np.uint16)

    if kind != "char":
        return by_tokenizers
    table = np.zeros(256, dtype=np.uint16)
    for letter in LETTERS.decode():
        text = letter * 2 + "ACGT"
        ids = tok.encode(text, add_special_tokens=False).ids
        assert len(ids) == 6 and ids[0] == ids[1], f"char tokenizer: {text!r} is {len(ids)} tokens, not one a letter"
        table[ord(letter)] = ids[0]
    wrap = tok.encode("").ids  # "[CLS] $A [SEP]"
    assert len(wrap) == 2, f"char tokenizer: expected [CLS] and [SEP] around each segment, got ids {wrap}"

    def by_table(batch: list[str]) -> np.ndarray:
        ends = np.cumsum(np.fromiter(map(len, batch), dtype=np.int64, count=len(batch)))  # of each segment's letters
        letters = table[np.frombuffer("".join(batch).encode("ascii"), dtype=np.uint8)]
        starts = np.concatenate(([0], ends[:-1]))
        return np.insert(letters, np.stack([starts, ends], 1).ravel(), np.tile(wrap, len(batch)))  # [CLS] … [SEP]

    return by_table


def read_batches(path: Path, batch_size: int, keep: np.ndarray | None = None) -> Iterator[list[str]]:
    """The segment file as lists of `batch_size` segments, streamed; with `keep` (a bool per line) only the lines
    it marks; blank lines skipped. Read as bytes, so lines end at newlines only, as 02's train_bpe counts them (text
    mode also splits at a stray CR); a byte that is not a letter is an error naming its line."""
    batch: list[str] = []
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            if bad := line.strip().translate(None, LETTERS):  # every line checked, sampled or not
                raise UserError(f"{path}:{i + 1}: byte {bad[0]:#04x} in a segment; expected letters only (A/C/G/T, "
                                "N or IUPAC codes), one segment a line, as 01_preprocess.py writes")
            if (keep is not None and not keep[i]) or not (line := line.strip()):
                continue
            batch.append(line.decode("ascii"))
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def available_memory() -> int:
    """Bytes the kernel says a new process can use without swapping (Linux; 0 = unknown)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return 0


BPE_TRAIN_BYTES_PER_BP = 60  # peak RSS of the BPE trainer per sampled bp: 53 measured at 31 and 310 Mbp, + margin


def check_bpe_memory(train_path: Path, sample_bp: float) -> float:
    """-> the BPE trainer's expected peak bytes on sample_bp; refused (one line) when it cannot fit in
    the memory available: it would swap for hours instead (GRCh38's 310 Mbp need ~15.5 GiB)."""
    need = BPE_TRAIN_BYTES_PER_BP * sample_bp
    avail = available_memory()
    if avail and need > avail:
        raise UserError(f"{train_path}: BPE training on ~{sample_bp / 1e6:,.0f} Mbp needs ~{need / 2**30:.1f} GiB but "
                        f"{avail / 2**30:.1f} GiB is available; set --tokenizer.max_train_mbp="
                        f"{avail / BPE_TRAIN_BYTES_PER_BP / 1e6 * 0.8:.0f} or a smaller --tokenizer.sample_fraction")
    return need


# The special tokens of each kind, by role: 02 fixes their ids (BPE_SPECIALS, KMER_SPECIALS, CHAR_VOCAB), but
# readers look them up by name, so that a hand-made tokenizer.json works too.
_SPECIAL_NAMES = {
    "pad": ("<pad>", "[PAD]"), "mask": ("<mask>", "[MASK]"),
    "cls": ("<s>", "<cls>", "[CLS]"),  # sequence start; fine-tuning classifies from this position
    "sep": ("</s>", "[SEP]"),  # sequence end (kmer has none)
    "unk": ("<unk>", "[UNK]"),  # kmer has none: every character maps to A C G T or N
}


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    mask: int
    cls: int
    sep: int | None
    unk: int | None
    all: tuple[int, ...]  # every special token's id, sorted: never masked, never a random replacement


def load_tokenizer(path: str | Path, model_cfg: ModelConfig | None = None):
    """Load a tokenizer.json written by 02_train_tokenizer.py -> (tokenizers.Tokenizer, SpecialIds); its
    `encode(seq).ids` carry the kind's wrapping (<s> … </s>, <cls> …, [CLS] … [SEP]). With `model_cfg`: UserError
    unless every id < model.vocab_size and the pad ids agree (the bug TinyDNABERT had: pad 3 vs 1)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: tokenizer not found (run 02_train_tokenizer.py first)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a plain Exception on bad JSON
        raise UserError(f"{path}: not a readable tokenizer.json ({str(e).splitlines()[0] if str(e) else e})")
    vocab = tok.get_vocab(with_added_tokens=True)
    ids = {role: next((vocab[n] for n in names if n in vocab), None) for role, names in _SPECIAL_NAMES.items()}
    for role in ("pad", "mask", "cls"):
        if ids[role] is None:
            raise UserError(f"{path}: tokenizer has no {role} token (one of {', '.join(_SPECIAL_NAMES[role])})")
    added = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    sp = SpecialIds(**ids, all=tuple(sorted(added | {i for i in ids.values() if i is not None})))
    if model_cfg is not None:
        n = tok.get_vocab_size(with_added_tokens=True)
        if n > model_cfg.vocab_size:
            raise UserError(f"{path}: tokenizer has {n:,} tokens but model.vocab_size = {model_cfg.vocab_size:,}; "
                            f"set --model.vocab_size={n}")
        if sp.pad != model_cfg.pad_token_id:
            raise UserError(f"{path}: tokenizer pad id is {sp.pad} but model.pad_token_id = "
                            f"{model_cfg.pad_token_id}; set --model.pad_token_id={sp.pad}")
    return tok, sp


def read_token_meta(tokens_dir: str | Path, tokenizer_path: str | Path) -> dict:
    """tokens/meta.json, checked (UserError naming the file) to belong to `tokenizer_path` (its sha256) and to
    the .bin files beside it (a split's token count = its .bin size / 2: uint16)."""
    meta_path = Path(tokens_dir) / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise UserError(f"{meta_path}: not found (run 02_train_tokenizer.py first)")
    except (OSError, ValueError) as e:
        raise UserError(f"{meta_path}: not readable JSON ({e})")
    splits = meta.get("splits") if isinstance(meta, dict) else None
    if not (isinstance(splits, dict) and all(isinstance(c, dict) for c in splits.values())):
        raise UserError(f"{meta_path}: expected 02's object with \"splits\": {{split: {{\"tokens\": n, ...}}}}; "
                        "re-run 02_train_tokenizer.py")
    if not Path(tokenizer_path).is_file():
        raise UserError(f"{tokenizer_path}: tokenizer not found (run 02_train_tokenizer.py first)")
    sha = file_hash(tokenizer_path)
    if meta.get("tokenizer_sha256") != sha:
        raise UserError(f"{meta_path}: token files were made with another tokenizer than {tokenizer_path} "
                        f"(sha256 {str(meta.get('tokenizer_sha256'))[:12]}… vs {sha[:12]}…); re-run 02_train_tokenizer.py")
    for split, counts in splits.items():
        bin_path = meta_path.with_name(f"{split}.bin")
        size = bin_path.stat().st_size if bin_path.is_file() else None
        if size != 2 * counts.get("tokens", -1):
            raise UserError(f"{bin_path}: expected {counts.get('tokens')} uint16 tokens from meta.json, "
                            f"file has {'no file' if size is None else f'{size:,} bytes'}; re-run 02_train_tokenizer.py")
    return meta
