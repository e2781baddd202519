"""The demo's data, made here, offline and deterministically: a synthetic genome with a grammar that unlabeled
sequence can teach (01 reads it as source "demo"), and two NT-format tasks drawn as FRESH instances of the same
grammar (04's "demo"), so a model pretrained on the genome has seen the kind of sequence the tasks ask about, but
never a task sequence itself.

The grammar (forward strand only, a simplification), the same in genome and tasks:
  gene      = promoter · 5' UTR · ATG exon (intron exon)+ · stop · poly(A) signal
  promoter  = CpG island (GC 68%, CpGs kept) with GC boxes (GGGCGG) and a CAAT box at -60,
              a TATA box (TATAAA, TATATA, TATAAT) at -30, an initiator (TCA[GT]T[CT]) at the TSS (+1)
  exon      = codons drawn from a fixed codon-usage table (GC ~55%)
  intron    = GT[AG]AGT · AT-rich body · branch point CT[AG]A[CT] · pyrimidine tract · CAG
  repeats   = 4 families (Alu-, L1-, ERV-, MIR-like consensus, one GC content), copies 2-10% diverged, soft-masked
  background= isochores of GC 37-53%, CpG-depleted (a CG becomes TG 75% of the time, as in vertebrates)"""

from pathlib import Path

import numpy as np

from shelf.files import atomic_write

DEMO_SEED = 20_240_601  # fixed, so the demo data is the same for every run.seed (which drives the cuts)
BASES = np.frombuffer(b"ACGT", np.uint8)  # index -> base: BASES[k] for k in 0..3
TATA_AT, TSS_AT = 30, 70  # promoter task windows: TATA box at -30, so at 40; the TSS at 70 of 100 bp


def as_bytes(*words: str) -> list[np.ndarray]:
    return [np.frombuffer(w.encode(), np.uint8) for w in words]


def random_bases(rng: np.random.Generator, n: int, gc: float, cpg_kept: float = 0.25) -> np.ndarray:
    """(n,) uint8 of the given GC share, CpG-depleted as vertebrate DNA unless cpg_kept is high (islands)."""
    s = BASES[rng.choice(4, size=n, p=[(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2])]
    cg = np.flatnonzero((s[:-1] == ord("C")) & (s[1:] == ord("G")))
    s[cg[rng.random(len(cg)) >= cpg_kept]] = ord("T")  # CG -> TG: methylated C deaminates to T
    return s


class Grammar:
    """Draws the grammar's parts with one random generator; the consensus sequences (repeat families) come
    from DEMO_SEED, so the genome and the tasks share them whatever generator draws the instances."""

    CODONS = np.frombuffer("GCC CTG GAG AAG GAC ATC GTG CAG AGC ACC TTC AAC GGC CCC TAC CGG ATG TGG CAC TGC "
                           "GAA AAA GAT CTC".replace(" ", "").encode(), np.uint8).reshape(-1, 3)
    TATA, INR, GC_BOX, CAAT = as_bytes("TATAAA", "TATATA", "TATAAT"), as_bytes("TCAGTC", "TCATTT", "TCAGTT",
                                                                                 "TCATTC"), "GGGCGG", "GGCCAATCT"

    def __init__(self, rng: np.random.Generator):
        self.rng, own = rng, np.random.default_rng(DEMO_SEED)  # own: the families never depend on rng
        self.families = {  # name: (consensus, share of repeat copies); the same GC: only the sequence tells them apart
            "alu": (np.concatenate([random_bases(own, 280, 0.5), np.full(20, ord("A"), np.uint8)]), 0.40),
            "l1": (random_bases(own, 900, 0.45), 0.25),
            "erv": (np.concatenate([ltr := random_bases(own, 120, 0.45), random_bases(own, 300, 0.45), ltr]), 0.10),
            "mir": (random_bases(own, 260, 0.45), 0.25),
        }

    def bases(self, n: int, gc: float, cpg_kept: float = 0.25) -> np.ndarray:
        return random_bases(self.rng, n, gc, cpg_kept)

    def pick(self, words: list[np.ndarray]) -> np.ndarray:
        return words[self.rng.integers(len(words))]

    def plant(self, s: np.ndarray, word: str | np.ndarray, at: int) -> np.ndarray:
        word = np.frombuffer(word.encode(), np.uint8) if isinstance(word, str) else word
        s[at:at + len(word)] = word
        return s

    def promoter(self, upstream: int = 250, downstream: int = 60) -> np.ndarray:
        """CpG island with its motifs, the TSS at index `upstream` -> (upstream + downstream,) uint8."""
        s = self.bases(upstream + downstream, 0.68, cpg_kept=0.9)
        for _ in range(self.rng.integers(1, 4)):  # GC boxes (Sp1 sites) anywhere upstream of the CAAT box
            self.plant(s, self.GC_BOX, int(self.rng.integers(0, upstream - 70)))
        self.plant(s, self.CAAT, upstream - 60 + int(self.rng.integers(-3, 4)))
        self.plant(s, self.pick(self.TATA), upstream - TATA_AT)
        return self.plant(s, self.pick(self.INR), upstream - 2)

    def exon(self, n_codons: int) -> np.ndarray:
        return self.CODONS[self.rng.integers(0, len(self.CODONS), n_codons)].ravel()

    def intron(self, n: int) -> np.ndarray:
        """GT[AG]AGT ... branch point ... pyrimidine tract, CAG -> (n,) uint8, n >= 60."""
        s = self.bases(n, 0.38)
        self.plant(s, "GT" + "AG"[self.rng.integers(2)] + "AGT", 0)
        self.plant(s, "CT" + "AG"[self.rng.integers(2)] + "A" + "CT"[self.rng.integers(2)], n - 30)
        s[n - 20:n - 3] = BASES[self.rng.choice([1, 3], size=17, p=[0.4, 0.6])]  # C/T only
        return self.plant(s, "CAG", n - 3)

    def gene(self) -> np.ndarray:
        parts = [self.promoter(), self.bases(20, 0.6), *as_bytes("GCCACCATG")]  # Kozak context, start codon
        for _ in range(self.rng.integers(2, 6)):
            parts += [self.exon(int(self.rng.integers(25, 70))), self.intron(int(self.rng.integers(100, 400)))]
        parts += [self.exon(int(self.rng.integers(25, 70))), *as_bytes("TAA"), self.bases(80, 0.4),
                  *as_bytes("AATAAA"), self.bases(40, 0.4)]  # stop codon, 3' UTR, poly(A) signal
        return np.concatenate(parts)

    def repeat(self) -> np.ndarray:  # a diverged copy of one family's consensus, soft-masked (lower case)
        family = self.rng.choice(len(self.families), p=[share for _, share in self.families.values()])
        consensus, _ = list(self.families.values())[family]
        start = int(self.rng.integers(0, len(consensus) - 250)) if len(consensus) > 600 else 0  # 5'-truncated L1s
        s = consensus[start:].copy()
        hit = self.rng.random(len(s)) < self.rng.uniform(0.02, 0.10)
        s[hit] = BASES[self.rng.integers(0, 4, hit.sum())]
        return s | 0x20

    def chromosome(self, n: int) -> np.ndarray:
        """Genes between intergenic background, repeats and microsatellites -> (n,) uint8."""
        parts, size = [], 0
        while size < n:
            kind = self.rng.random()
            if kind < 0.5:
                piece = self.gene()
            elif kind < 0.6:  # intergenic sequence of the current isochore
                piece = self.bases(int(self.rng.integers(200, 2000)), [0.37, 0.41, 0.46, 0.53][(size // 100_000) % 4])
            elif kind < 0.95:
                piece = self.repeat()
            else:  # a microsatellite, soft-masked
                unit = [b"CA", b"A", b"GGAA", b"TTAGGG", b"AT"][self.rng.integers(5)]
                piece = np.frombuffer(unit * int(self.rng.integers(8, 40)), np.uint8) | 0x20
            parts.append(piece)
            size += len(piece)
        return np.concatenate(parts)[:n]


def write_demo_genome(path: Path) -> Path:
    """Write a ~1.5 Mbp FASTA genome of the grammar above, in about a second, offline. Also what 01 must
    handle in real files: N runs (a 10 kb telomere gap, contig gaps of 100 bp and 5 kb), 30 IUPAC codes,
    soft-masked repeats, a record with CRLF line ends, one unwrapped 16,569 bp record (chrM), an empty record."""
    g = Grammar(np.random.default_rng(DEMO_SEED))

    def wrap(seq: bytes, width: int, eol: bytes = b"\n") -> bytes:
        return b"".join(seq[i:i + width] + eol for i in range(0, len(seq), width))

    chr1 = bytearray(b"N" * 10_000 + g.chromosome(640_000).tobytes())  # telomere gap, as at the start of hg38 chr2
    chr1[300_000:300_100] = b"N" * 100  # contig gaps
    chr1[450_000:455_000] = b"N" * 5_000
    chr2 = bytearray(g.chromosome(480_000).tobytes())
    for i in g.rng.choice(len(chr2), 30, replace=False):  # IUPAC ambiguity codes where reads disagreed
        chr2[i] = ord("RYKMSW"[g.rng.integers(6)])
    chr3, chr_m = g.chromosome(300_000).tobytes(), g.chromosome(16_569).tobytes()
    with atomic_write(path, "wb") as f:
        f.writelines([
            b">chr1 demo chromosome 1, 60-column lines\n", wrap(bytes(chr1), 60),
            b">chr2 demo chromosome 2 with IUPAC codes\n", wrap(bytes(chr2), 80),
            b">chr3 demo chromosome 3, Windows line ends\r\n", wrap(chr3, 70, b"\r\n"),
            b">chrUn_empty an empty record\n\n", b">chrM demo mitochondrion, one unwrapped line\n", chr_m + b"\n"])
    return path


def promoter_example(g: Grammar, label: int) -> np.ndarray:
    """100 bp. 1: a core promoter, [-70, +30) around a TSS. 0: a window that is NOT one: of a CpG island
    without the core promoter (half with a TATA box elsewhere), an exon, an intron or background."""
    if label == 1:
        return g.promoter()[250 - TSS_AT:250 - TSS_AT + 100]
    kind = g.rng.integers(4)
    if kind == 1:
        return g.exon(34)[:100]
    if kind == 2:
        return g.intron(400)[150:250]
    s = g.bases(100, 0.68 if kind == 0 else 0.46, cpg_kept=0.9 if kind == 0 else 0.25)
    if kind == 0 and g.rng.random() < 0.5:  # a CpG island with a decoy TATA box, away from -30
        g.plant(s, g.pick(g.TATA), int(g.rng.choice(np.r_[0:TSS_AT - TATA_AT - 10, TSS_AT - TATA_AT + 10:94])))
    return s


def splice_example(g: Grammar, label: int) -> np.ndarray:
    """100 bp centred on a boundary. 1: donor (exon | intron), 2: acceptor (intron | exon), 0: neither
    (inside an exon or an intron, or across an exon's end into background)."""
    exon, intron = g.exon(34)[:50], g.intron(int(g.rng.integers(150, 900)))
    if label == 1:
        return np.concatenate([exon, intron[:50]])
    if label == 2:
        return np.concatenate([intron[-50:], exon])
    return [lambda: g.exon(34)[:100], lambda: intron[50:150], lambda: np.concatenate([exon, g.bases(50, 0.4)])][
        g.rng.integers(3)]()


def make_demo_tasks(task_dir: Path, seed: int, sizes: dict[str, tuple[int, int]]) -> None:
    """promoter_synth (2 classes) and splice_synth (3), `sizes` (train, test) records of fresh instances; 5% of the
    labels flipped (noise: test MCC stays below 1). From `seed`, never DEMO_SEED: no task sequence is in the genome."""
    g = Grammar(np.random.default_rng([seed, 12]))
    for name, make, classes in (("promoter_synth", promoter_example, 2), ("splice_synth", splice_example, 3)):
        for split in ("train", "test"):
            lines = []
            for i in range(sizes[name][split == "test"]):
                label = int(g.rng.integers(classes))
                seq = make(g, label).tobytes().decode()
                if g.rng.random() < 0.05:  # label noise
                    label = int(g.rng.integers(classes))
                lines.append(f">{name}_{split}_{i}|{label}\n{seq}\n")
            with atomic_write(task_dir / name / f"{split}.fna") as f:
                f.write("".join(lines))
