"""
How visible are the demo's planted motifs from local context alone? A count model's answer to 05's zero-shot test,
in seconds, to design a grammar against before spending minutes pretraining on it.

    python bench/motif_oracle.py                  # k = 2, 3, 4 on the demo genome
    python bench/motif_oracle.py --k 4 --seed 7   # 05 --demo's sequences of another run.seed

It counts, in the demo genome (shelf/demo_data.py's write_demo_genome: the file 01 reads as source "demo", upper-
cased, records apart), each base after its context of k bases on either side, and estimates p(base | context) from
the counts, smoothed toward the (k - 1)-context estimate (Dirichlet prior of weight 4; k = 0: the base composition).
Then it scores 05 --demo's sequences (05's demo_fasta, the same seed) as 05 scores them with a model,
log p(alt) - log p(ref) at each base (bases within k of an end: not scored), and prints 05's figure: per kind, the
mean |score| inside the planted motifs / outside. A model that reads +-k bp and learns no more than these counts
gets about these ratios; a ratio near 1 says the grammar's motifs are hardly more frequent than chance words in
their context, whatever the model. Not a bound: a bigger k overfits the counts, which raises the background.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from conftest import load_script  # noqa: E402
from shelf.demo_data import write_demo_genome  # noqa: E402
from shelf.fasta import read_fasta  # noqa: E402

mutagenesis = load_script("05_mutagenesis.py")  # its demo_fasta and motif_spans
CODE = np.full(256, 4, np.int64)  # byte -> A C G T = 0 1 2 3, anything else 4 (breaks a context)
CODE[list(b"ACGT")] = range(4)
PRIOR_WEIGHT = 4.0


def context_ids(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """x (n,) base codes -> (context id of each base with k bases on each side, valid), (n - 2k,) each; the context
    id reads the 2k flanking bases, left to right, as a base-4 number."""
    n = len(x) - 2 * k
    ids, valid = np.zeros(n, np.int64), x[k:len(x) - k] < 4
    for j in (*range(k), *range(k + 1, 2 * k + 1)):
        ids, valid = ids * 4 + x[j:j + n] % 4, valid & (x[j:j + n] < 4)
    return ids, valid


def fit(x: np.ndarray, k: int) -> np.ndarray:
    """log p(base | context) for every context of k bases a side -> (4^(2k), 4), smoothed toward k - 1's."""
    ids, valid = context_ids(x, k)
    counts = np.bincount(ids[valid] * 4 + x[k:len(x) - k][valid], minlength=4 ** (2 * k + 1)).reshape(-1, 4)
    if k == 0:
        return np.log(counts / counts.sum())
    inner = (np.arange(4 ** (2 * k)) // 4) % 4 ** (2 * k - 2)  # the context less its outermost base a side
    prior = np.exp(fit(x, k - 1))[inner]  # (4^(2k), 4)
    return np.log((counts + PRIOR_WEIGHT * prior) / (counts.sum(1, keepdims=True) + PRIOR_WEIGHT))


def ratios(logp: np.ndarray, k: int, fasta: Path) -> dict[str, float]:
    """Per kind (promoter_3 -> promoter): mean |log p(alt) - log p(ref)| inside the header's motifs / outside."""
    parts = {}
    for rec in read_fasta(fasta):
        x = CODE[np.frombuffer(rec.sequence.encode(), np.uint8)]
        ids, _ = context_ids(x, k)
        lp = logp[ids]  # (L - 2k, 4)
        size = np.abs(lp - lp[np.arange(len(lp)), x[k:len(x) - k], None]).sum(1) / 3  # (L - 2k,)
        spans = [p - 1 for a, b in mutagenesis.motif_spans(rec.header) for p in range(a, b + 1)]
        inside = np.isin(np.arange(k, len(x) - k), spans)
        kind = parts.setdefault(rec.header.split()[0].rsplit("_", 1)[0], ([], []))
        kind[0].extend(size[inside]), kind[1].extend(size[~inside])
    return {kind: float(np.mean(a) / np.mean(b)) for kind, (a, b) in parts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    ap.add_argument("--k", default="2,3,4",
                    help="bases of context on each side, comma-separated (0..6; 0: composition only)")
    ap.add_argument("--seed", type=int, default=1337, help="run.seed of 05 --demo's sequences")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        genome = write_demo_genome(Path(tmp) / "demo.fa")
        x = CODE[np.frombuffer(b"N".join(r.sequence.upper().encode() for r in read_fasta(genome)), np.uint8)]
        fasta = mutagenesis.demo_fasta(Path(tmp) / "demo_sequences.fa", args.seed)
        print(f"demo genome: {int((x < 4).sum()):,} bp; 05 --demo's sequences of run.seed {args.seed}")
        for k in (int(v) for v in args.k.split(",")):
            found = ratios(fit(x, k), k, fasta)
            print(f"k = {k} ({2 * k} bp of context): " + ", ".join(f"{kind} {r:.2f}x" for kind, r in found.items()))


if __name__ == "__main__":
    main()
