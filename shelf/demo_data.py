"""
The demo's data, made here, offline and deterministically: a small synthetic genome shaped like a real
one (01 reads it as source "demo") and two small NT-format tasks with planted motifs (04's "demo").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shelf.files import atomic_write


DEMO_SEED = 20_240_601  # fixed, so the demo data is the same for every run.seed (which drives the cuts)
BASES = np.frombuffer(b"ACGT", np.uint8)  # index -> base: BASES[k] for k in 0..3


def write_demo_genome(path: Path) -> Path:
    """Write a ~1.5 Mbp FASTA genome shaped like a real one, in about a second, offline.

    What is in it: isochores (100-kb blocks of different GC content) with CpG depletion; 4 interspersed
    repeat families (Alu-, L1-, ERV- and MIR-like consensus sequences, copies 5-20% diverged, L1 copies
    5'-truncated) and microsatellites, all soft-masked (lower case) as RepeatMasker does; genes:
    CpG-island promoters with a TATA box, exons of codons, introns from GT to a polypyrimidine tract + AG;
    N runs (a 10 kb telomere gap, contig gaps of 100 bp and 5 kb); 30 IUPAC codes; a record with CRLF
    line ends, one unwrapped 16,569 bp record (chrM), one empty record, headers with spaces.
    """
    rng = np.random.default_rng(DEMO_SEED)

    def random_bases(n: int, gc: float) -> np.ndarray:  # (n,) uint8, CpG-depleted like vertebrate DNA
        s = BASES[rng.choice(4, size=n, p=[(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2])]
        cg = np.flatnonzero((s[:-1] == ord("C")) & (s[1:] == ord("G")))
        cg = cg[rng.random(len(cg)) < 0.75]
        s[cg] = ord("T")  # CG -> TG: methylated C deaminates to T
        return s

    def mutate(s: np.ndarray, rate: float) -> np.ndarray:
        s = s.copy()
        hit = rng.random(len(s)) < rate
        s[hit] = BASES[rng.integers(0, 4, hit.sum())]
        return s

    families = {  # consensus, copies per 100 kb
        "alu": (np.concatenate([random_bases(280, 0.62), np.full(20, ord("A"), np.uint8)]), 12),
        "l1": (random_bases(6000, 0.38), 3),
        "erv": (np.concatenate([ltr := random_bases(400, 0.45), random_bases(1800, 0.44), ltr]), 1),
        "mir": (random_bases(260, 0.50), 6),
    }
    codons = np.frombuffer(b"".join(c.encode() for c in [
        "GCC", "CTG", "GAG", "AAG", "GAC", "ATC", "GTG", "CAG", "AGC", "ACC", "TTC", "AAC", "GGC", "CCC",
        "TAC", "CGG", "ATG", "TGG", "CAC", "TGC"]), np.uint8).reshape(-1, 3)

    def gene() -> np.ndarray:  # promoter (CpG island + TATA) and exon/intron structure, ~10-25 kb
        gc_island = random_bases(600, 0.68)
        gc_island[rng.random(600) < 0.08] = ord("C")  # islands keep their CpGs: add some back
        parts = [gc_island, np.frombuffer(b"TATAAAAG", np.uint8), random_bases(25, 0.5),
                 np.frombuffer(b"ATG", np.uint8)]
        for _ in range(rng.integers(3, 9)):
            parts.append(codons[rng.integers(0, len(codons), rng.integers(30, 80))].ravel())  # exon
            intron = random_bases(int(rng.integers(500, 3000)), 0.40)
            parts += [np.frombuffer(b"GTAAGT", np.uint8), intron,
                      BASES[rng.choice([1, 3], size=15)], np.frombuffer(b"CAG", np.uint8)]
        parts.append(np.frombuffer(b"TAAAATAAA", np.uint8))  # stop codon + polyadenylation signal
        return np.concatenate(parts)

    def chromosome(n: int) -> bytes:
        parts, size = [], 0
        while size < n:
            kind = rng.random()
            if kind < 0.55:  # plain sequence of the current isochore
                gc = [0.37, 0.41, 0.46, 0.53][(size // 100_000) % 4]
                piece = random_bases(int(rng.integers(500, 4000)), gc)
            elif kind < 0.90:  # a repeat copy, soft-masked
                name = rng.choice(list(families), p=[0.55, 0.15, 0.05, 0.25])
                consensus, _ = families[name]
                start = int(rng.integers(0, len(consensus) - 250)) if name == "l1" else 0
                piece = mutate(consensus[start:], rng.uniform(0.05, 0.20)) | 0x20
            elif kind < 0.95:  # a microsatellite, soft-masked
                unit = rng.choice([b"CA", b"A", b"GGAA", b"TTAGGG", b"AT"])
                piece = np.frombuffer(unit * int(rng.integers(8, 40)), np.uint8) | 0x20
            else:
                piece = gene()
            parts.append(piece)
            size += len(piece)
        return np.concatenate(parts)[:n].tobytes()

    def wrap(seq: bytes, width: int, eol: bytes = b"\n") -> bytes:
        return b"".join(seq[i:i + width] + eol for i in range(0, len(seq), width))

    chr1 = bytearray(b"N" * 10_000 + chromosome(640_000))  # telomere gap, as at the start of hg38 chr2
    chr1[300_000:300_100] = b"N" * 100  # contig gaps
    chr1[450_000:455_000] = b"N" * 5_000
    chr2 = bytearray(chromosome(480_000))
    for i in rng.choice(len(chr2), 30, replace=False):  # IUPAC ambiguity codes where reads disagreed
        chr2[i] = ord(rng.choice(list("RYKMSW")))
    chr3, chr_m = chromosome(300_000), chromosome(16_569)
    fasta = b"".join([
        b">chr1 demo chromosome 1, 60-column lines\n", wrap(bytes(chr1), 60),
        b">chr2 demo chromosome 2 with IUPAC codes\n", wrap(bytes(chr2), 80),
        b">chr3 demo chromosome 3, Windows line ends\r\n", wrap(chr3, 70, b"\r\n"),
        b">chrUn_empty an empty record\n\n",
        b">chrM demo mitochondrion, one unwrapped line\n", chr_m + b"\n",
    ])
    with atomic_write(path, "wb") as f:
        f.write(fasta)
    return path


def make_demo_tasks(task_dir: Path, seed: int, sizes: dict[str, tuple[int, int]]) -> None:
    """Two small synthetic tasks with planted motifs (sizes in configs/nt_tasks.csv):
    promoter_synth (2 classes, 80 bp): label 1 carries a TATA box (TATAAA) 20-30 bp from the start;
      a third of the label-0 sequences carry one too, but elsewhere, so the position matters.
    splice_synth (3 classes, 90 bp): 1 = donor-like (CAG|GTAAGT at the centre), 2 = acceptor-like
      (a pyrimidine tract then CAG|G at the centre), 0 = neither; 5% of every task's labels are flipped
      so the test MCC stays below 1."""
    rng = np.random.default_rng(seed)
    bases = np.array(list("ACGT"))

    def background(n):
        return "".join(rng.choice(bases, size=n, p=[0.3, 0.2, 0.2, 0.3]))

    def plant(s, motif, at):
        return s[:at] + motif + s[at + len(motif):]

    def promoter(label):
        s = background(80)
        if label == 1:
            s = plant(s, "TATAAA", int(rng.integers(20, 31)))
        elif rng.random() < 0.33:
            s = plant(s, "TATAAA", int(rng.choice(np.r_[0:12, 42:74])))
        return s

    def splice(label):
        s = background(90)
        if label == 1:
            s = plant(s, "CAGGTAAGT", 42)
        elif label == 2:
            tract = "".join(rng.choice(np.array(list("CT")), size=15))
            s = plant(s, tract + "CAGG", 30)
        return s

    specs = [("promoter_synth", promoter, 2), ("splice_synth", splice, 3)]
    for name, make, classes in specs:
        for split in ("train", "test"):
            n = sizes[name][split == "test"]  # (train, test) records
            lines = []
            for i in range(n):
                label = int(rng.integers(classes))
                seq = make(label)
                if rng.random() < 0.05:  # label noise
                    label = int(rng.integers(classes))
                lines.append(f">{name}_{split}_{i}|{label}\n{seq}\n")
            with atomic_write(task_dir / name / f"{split}.fna") as f:
                f.write("".join(lines))
