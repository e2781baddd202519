"""The NT-format task files 04 fine-tunes on: the benchmark's hub repos at pinned commits and their published
record counts (configs/nt_tasks.csv), downloading a task, and reading one, checked line by line (FASTA records with
headers `name|...|label`; errors name file:line)."""

from collections import namedtuple
from pathlib import Path

import numpy as np

from shelf.config import PROJECT_ROOT
from shelf.errors import UserError
from shelf.fasta import read_fasta
from shelf.files import download
from shelf.results import read_commented_csv

# hub repo and pinned commit (--finetune.revision). "revised": e26a616 ("Add histone marks", Apr 8 2024) added
# the 10 histone folders to the 8 of the earlier "Rectify naming" commits: the first with all 18 (the hub's tree pages)
BENCHMARKS = {"revised": {"repo": "nucleotide_transformer_downstream_tasks_revised",
                          "revision": "e26a616b5acaf009f0841c92c88267a4edcf24ae"},
              "original": {"repo": "nucleotide_transformer_downstream_tasks",
                           "revision": "d11d8921f9255e5d657e69443865966e66de3b21"}}
TASKS_CSV = PROJECT_ROOT / "configs" / "nt_tasks.csv"  # benchmark, task, display, train, test, classes, seq_len

# the name in published tables, record counts, classes; None = unknown (local tasks, original benchmark)
TaskInfo = namedtuple("TaskInfo", "display train test classes")
# one task: its folder, each split's sequences (their token ids: runs.py's TokenIds) and int64 labels, its classes
TaskData = namedtuple("TaskData", "folder train_x train_y test_x test_y classes")
MAX_CLASSES = 1000  # a local task's labels are 0..MAX_CLASSES - 1


def task_table(benchmark: str) -> dict[str, TaskInfo]:
    num = lambda text: int(text) if text else None  # noqa: E731
    return {r["task"]: TaskInfo(r["display"], num(r["train"]), num(r["test"]), num(r["classes"]))
            for r in read_commented_csv(TASKS_CSV) if r["benchmark"] == benchmark}


def load_task_file(path: Path, num_classes: int = MAX_CLASSES) -> tuple[list[str], np.ndarray]:
    """NT FASTA, header `name|…|label`. -> (upper-cased sequences, int64 labels); errors name file:line."""
    seqs, labels = [], []
    for rec in read_fasta(path):
        where, header, text = f"{path}:{rec.line}", rec.header[:60], rec.header.rsplit("|", 1)[-1].strip()
        if "|" not in rec.header:
            raise UserError(f"{where}: header {header!r} has no '|label' at its end (expected name|…|label)")
        try:
            labels.append(int(text))
        except ValueError:
            raise UserError(f"{where}: label {text!r} is not an integer (header {header!r})")
        if not 0 <= labels[-1] < num_classes:
            raise UserError(f"{where}: label {labels[-1]} is outside the task's classes 0..{num_classes - 1}")
        if not rec.sequence:
            raise UserError(f"{where}: record {header!r} has an empty sequence")
        seqs.append(rec.sequence.upper())  # the tokenizers are trained on upper case
    if not seqs:
        raise UserError(f"{path}: no FASTA records (empty file?)")
    return seqs, np.array(labels, dtype=np.int64)


def load_task(task_dir: Path, info: TaskInfo) -> TaskData:
    """Both splits of one task, checked against each other and against the published counts."""
    train_x, train_y = load_task_file(task_dir / "train.fna", info.classes or MAX_CLASSES)
    classes = info.classes or int(train_y.max()) + 1  # local task: the train labels define the classes
    if classes < 2:
        raise UserError(f"{task_dir / 'train.fna'}: every label is 0; a task needs at least 2 classes")
    test_x, test_y = load_task_file(task_dir / "test.fna", classes)
    for split, n, expected in (("train", len(train_y), info.train), ("test", len(test_y), info.test)):
        if expected is not None and n != expected:
            raise UserError(f"{task_dir / f'{split}.fna'}: {n:,} records, the benchmark has {expected:,} "
                            f"(truncated or wrong file? delete it to download again)")
    return TaskData(task_dir, train_x, train_y, test_x, test_y, classes)


def fetch_task(base_url: str, repo: str, revision: str, task: str, dest: Path) -> None:
    """<task>/{train,test}.fna from the hub into dest, unless there (downloads resume and retry)."""
    for split in ("train.fna", "test.fna"):
        if not (dest / split).is_file():
            download(f"{base_url.rstrip('/')}/{repo}/resolve/{revision}/{task}/{split}", dest / split)
