"""shelf/demo_data.py: the grammar genome has the parts it claims, and the demo tasks are fresh instances of it."""

import numpy as np
import pytest

from shelf.demo_data import TATA_AT, TSS_AT, Grammar, make_demo_tasks, write_demo_genome
from shelf.fasta import read_fasta


@pytest.fixture(scope="module")
def genome(tmp_path_factory) -> str:
    path = write_demo_genome(tmp_path_factory.mktemp("genome") / "demo.fa")
    return "".join(rec.sequence for rec in read_fasta(path))


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("tasks")
    make_demo_tasks(folder, seed=1337, sizes={"promoter_synth": (400, 100), "splice_synth": (400, 100)})
    out = {}
    for task in ("promoter_synth", "splice_synth"):
        for split in ("train", "test"):
            records = list(read_fasta(folder / task / f"{split}.fna"))
            out[task, split] = [(r.sequence, int(r.header.rsplit("|", 1)[1])) for r in records]
    return out


def test_genome_has_genes_with_promoters_and_splice_sites(genome):
    upper = genome.upper()
    genes = upper.count("GCCACCATG")  # the Kozak start of every gene; ~5 chance hits in 1.5 Mbp of random sequence
    assert genes > 200
    assert upper.count(Grammar.CAAT) >= 0.9 * genes  # every promoter has a CAAT box (a few Kozaks are chance hits)
    # the TATA box sits 30 bp before the TSS, the initiator at it: (CAAT at -60 +- 3, then TATA at -30)
    tata_after_caat = sum(upper[i + 30 - 3:i + 30 + 9].find("TATA") >= 0 for i in _find_all(upper, "GGCCAATCT"))
    assert tata_after_caat >= 0.9 * genes
    donors = upper.count("GTAAGT") + upper.count("GTGAGT")  # each intron opens with GT[AG]AGT ...
    acceptors = sum(upper[i - 17:i].strip("CT") == "" for i in _find_all(upper, "CAG"))  # ... and ends tract + CAG
    assert donors > 2 * genes and acceptors > 2 * genes


def test_genome_composition_is_genome_like(genome):
    acgt = np.frombuffer(genome.upper().encode(), np.uint8)
    acgt = acgt[np.isin(acgt, np.frombuffer(b"ACGT", np.uint8))]
    gc = np.isin(acgt, np.frombuffer(b"GC", np.uint8)).mean()
    assert 0.40 < gc < 0.52, gc
    soft_masked = sum(c.islower() for c in genome) / len(genome)  # repeats, as RepeatMasker marks them
    assert 0.05 < soft_masked < 0.6, soft_masked
    cpg = genome.upper().count("CG") / len(acgt)
    assert cpg < 0.8 * (gc / 2) ** 2  # CpG-depleted outside islands, as vertebrate DNA: observed/expected < 1


def test_tasks_are_fresh_instances_never_in_the_genome(genome, tasks):
    upper = genome.upper()
    for (task, split), records in tasks.items():
        assert all(len(seq) == 100 and set(seq) <= set("ACGT") for seq, _ in records)
        assert not any(seq in upper for seq, _ in records), (task, split)  # no task sequence verbatim in pretraining


def test_promoter_task_follows_the_grammar(tasks):
    records = tasks["promoter_synth", "train"] + tasks["promoter_synth", "test"]
    positives = [seq for seq, label in records if label == 1]
    negatives = [seq for seq, label in records if label == 0]
    assert 0.4 < len(positives) / len(records) < 0.6
    at = TSS_AT - TATA_AT  # the TATA box's start in a window
    tata = [sum(seq[at:at + 6] in ("TATAAA", "TATATA", "TATAAT") for seq in group) / len(group)
            for group in (positives, negatives)]
    assert tata[0] > 0.85 and tata[1] < 0.15, tata  # 5% label noise on either side


def test_splice_task_has_its_three_classes(tasks):
    records = tasks["splice_synth", "train"]
    donors = [seq for seq, label in records if label == 1]
    assert {label for _, label in records} == {0, 1, 2}
    assert sum(seq[50:52] == "GT" for seq in donors) / len(donors) > 0.85


def _find_all(text: str, word: str):
    i = text.find(word)
    while i >= 0:
        yield i
        i = text.find(word, i + 1)
