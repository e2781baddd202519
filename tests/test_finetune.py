"""04_finetune_nt.py: NT task loading, label budgets (stratified, nested, seeded subsets), the linear probe,
whole-test-split scoring, rerun/resume, download, torchrun, and a real task (promoter_core) fine-tuned from
scratch on CPU.

Tokenizers and pretrained weights are made here (a char-level tokenizer, a BPE trained on the task,
a seeded MaskedLM state_dict), so these tests do not depend on running 01-03 first.
Scripts run on one thread (conftest.SCRIPT_ENV): on a shared 2-core machine one thread per process is several
times faster than two fighting threads, and it keeps the numbers identical between single-process and torchrun runs.
"""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shelf import nt_tasks, runs
from shelf.config import load_config
from shelf.errors import ConfigError, UserError
from shelf.demo_data import make_demo_tasks
from shelf.inference import pad_batch
from shelf.results import REFERENCE_CSV, write_results
from shelf.tokens import load_tokenizer
from conftest import ROOT, SCRIPT_ENV, load_script, run_script
from model import MaskedLM, ModelConfig, SequenceClassifier

ft = load_script("04_finetune_nt.py")

# a tiny model over the char tokenizer below ([PAD]=0 ... 16 tokens)
TINY = ["--model.vocab_size=16", "--model.pad_token_id=0", "--model.hidden_size=32", "--model.num_layers=1",
        "--model.num_heads=2", "--model.ffn_size=64", "--model.max_seq_len=40"]
TINY_CFG = ModelConfig(vocab_size=16, pad_token_id=0, hidden_size=32, num_layers=1, num_heads=2, ffn_size=64,
                       max_seq_len=40)


t02 = load_script("02_train_tokenizer.py")  # the tokenizers below are 02's own


def char_tokenizer(path: Path) -> None:
    """DNA FM's char vocabulary ([PAD]=0 [MASK]=1 [CLS]=2 [SEP]=3 [UNK]=4 A G C T U N ...), [CLS] … [SEP]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t02.char_tokenizer().save(str(path))


def bpe_tokenizer(path: Path, seqs: list[str], vocab_size: int) -> None:
    """A small BPE with 02's special-token order (<s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4), <s> … </s>."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t02.train_bpe_from_segments(seqs, vocab_size, min_frequency=2).save(str(path))


def write_task(folder: Path, n_train: int, n_test: int, seed: int = 0, length: int = 30) -> None:
    """A learnable binary task: label 1 = the sequence contains GGGCCC."""
    import random

    rnd = random.Random(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        lines = []
        for i in range(n):
            label = i % 2
            s = "".join(rnd.choice("AT") for _ in range(length))
            if label:
                at = rnd.randrange(length - 6)
                s = s[:at] + "GGGCCC" + s[at + 6:]
            lines.append(f">{split}_{i}|{label}\n{s}\n")
        (folder / f"{split}.fna").parent.mkdir(parents=True, exist_ok=True)
        (folder / f"{split}.fna").write_text("".join(lines))


def records(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.startswith(">"))


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


# -----------------------------------------------------------------------------
# loader


def test_header_variants(tmp_path):
    p = tmp_path / "train.fna"
    p.write_text(">a|0\nacgt\n>chr1:10-20|+|x|1\nACGT\nAC\n> seq with spaces | 1 \nGGTT\n")
    seqs, labels = nt_tasks.load_task_file(p, 2)
    assert seqs == ["ACGT", "ACGTAC", "GGTT"]  # upper-cased, multi-line joined
    assert labels.tolist() == [0, 1, 1]


@pytest.mark.parametrize("text, where, what", [
    (">a|0\nACGT\n>b\nACGT\n", ":3", "no '|label'"),
    (">a|0\nACGT\n>b|pos\nACGT\n", ":3", "not an integer"),
    (">a|0\nACGT\n>b|\nACGT\n", ":3", "not an integer"),
    (">a|0\nACGT\n>b|2\nACGT\n", ":3", "outside the task's classes 0..1"),
    (">a|0\nACGT\n>b|-1\nACGT\n", ":3", "outside"),
    (">a|0\n>b|1\nACGT\n", ":1", "empty sequence"),
    ("", "", "no FASTA records"),
])
def test_loader_errors_name_file_and_line(tmp_path, text, where, what):
    p = tmp_path / "test.fna"
    p.write_text(text)
    with pytest.raises(UserError) as e:
        nt_tasks.load_task_file(p, 2)
    msg = str(e.value)
    assert msg.startswith(f"{p}{where}") and what in msg and "\n" not in msg


def test_bad_task_file_exits_1_with_one_line(tmp_path):
    write_task(tmp_path / "tasks" / "t", 40, 10)
    with open(tmp_path / "tasks" / "t" / "test.fna", "a") as f:
        f.write(">extra|7\nACGT\n")  # line 21: a label the task (2 classes) does not have
    char_tokenizer(tmp_path / "run" / "tokenizer.json")
    r = run_script("04_finetune_nt.py", "--config", str(ROOT / "configs/demo.toml"), *TINY,
                   f"--run.out_dir={tmp_path / 'run'}", "--finetune.benchmark=local",
                   f"--finetune.data_dir={tmp_path / 'tasks'}", "--finetune.tasks=[t]",
                   "--finetune.inits=[scratch]", "--finetune.max_steps=2")
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    assert f"{tmp_path / 'tasks' / 't' / 'test.fna'}:21" in lines[0] and "outside the task's classes" in lines[0]


def test_demo_tasks_are_deterministic_and_match_the_table(tmp_path):
    info = nt_tasks.task_table("demo")
    sizes = {t: (i.train, i.test) for t, i in info.items()}
    make_demo_tasks(tmp_path / "a", seed=1337, sizes=sizes)
    make_demo_tasks(tmp_path / "b", seed=1337, sizes=sizes)
    assert set(info) == {"promoter_synth", "splice_synth"}
    for task, ti in info.items():
        for split in ("train", "test"):
            assert (tmp_path / "a" / task / f"{split}.fna").read_bytes() == (tmp_path / "b" / task / f"{split}.fna").read_bytes()
        data = nt_tasks.load_task(tmp_path / "a" / task, ti)
        assert (len(data.train_y), len(data.test_y)) == (ti.train, ti.test)
        assert sorted(set(data.train_y.tolist())) == list(range(ti.classes))


def test_reference_table_is_shipped_with_its_means():
    ref = nt_tasks.read_commented_csv(REFERENCE_CSV)
    revised = nt_tasks.task_table("revised")
    assert [r["task"] for r in ref] == list(revised) and len(ref) == 18
    for col, published in (("nt_sota", 0.685), ("tinydnabert_scratch", 0.511), ("tinydnabert", 0.612)):
        assert abs(sum(float(r[col]) for r in ref) / 18 - published) < 1e-3
    assert len(nt_tasks.task_table("original")) == 18


# -----------------------------------------------------------------------------
# label budgets and the probe's features


def test_label_subsets_are_stratified_nested_seeded_and_outside_validation():
    labels = np.array([0] * 500 + [1] * 300 + [2] * 200)  # class shares 50 / 30 / 20%
    data = nt_tasks.TaskData(Path("task"), ["ACGT"] * 1000, labels, [], np.array([]), classes=3)
    train, val = ft.split_rows(data, 0.1, 0, seed=7)  # 0: all the training labels
    assert len(train) + len(val) == 1000 and len(val) == 100
    subsets = {}
    for size in (3, 64, 256):
        subsets[size], same_val = ft.split_rows(data, 0.1, size, seed=7)
        assert np.array_equal(same_val, val)  # one validation split for every budget
        rows = subsets[size]
        assert len(rows) == len(set(rows)) == size and set(rows) <= set(train) and not set(rows) & set(val)
        proportional = size * np.bincount(labels[train]) / len(train)
        assert np.all(np.abs(np.bincount(labels[rows], minlength=3) - proportional) <= 1), size  # stratified
        assert set(labels[rows]) == {0, 1, 2}  # every class, once the budget has room for it
    assert set(subsets[3]) <= set(subsets[64]) <= set(subsets[256])  # nested
    assert np.array_equal(ft.label_subset(train, labels, 64, seed=7), subsets[64])  # seeded: same seed, same rows
    assert not np.array_equal(ft.label_subset(train, labels, 64, seed=8), subsets[64])  # another seed, others
    for size in (0, 900, 5000):  # 0, or a budget >= the rows there: all of them
        assert ft.label_subset(train, labels, size, seed=7) is train
    with pytest.raises(UserError, match="finetune.train_sizes: 2 label"):
        ft.split_rows(data, 0.1, 2, seed=7)  # fewer labels than classes


def test_bad_train_sizes_exit_2_with_one_line():
    r = run_script("04_finetune_nt.py", "--config", str(ROOT / "configs/demo.toml"), "--finetune.train_sizes=[8,-1]")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "finetune.train_sizes = [8, -1]" in lines[0] and ">= 0" in lines[0]
    for sizes, what in (("[64,64]", "each budget once"), ("[]", "non-empty")):
        with pytest.raises(ConfigError, match=rf"finetune\.train_sizes = .*{what}"):
            load_config(["--config", str(ROOT / "configs/demo.toml"), f"--finetune.train_sizes={sizes}"])
    for k in (-1, 7, 9):  # 4**6 = 4,096 counts per sequence at most
        with pytest.raises(ConfigError, match=rf"finetune\.kmer = {k}: expected 0 \(no k-mer baseline\) to 6"):
            load_config(["--config", str(ROOT / "configs/demo.toml"), f"--finetune.kmer={k}"])


def test_kmer_counts_match_a_plain_loop():
    """Every overlapping k-mer of A/C/G/T counted, in either case; one holding N (or any other letter) skipped."""
    import itertools

    seqs = ["ACGTNacgtA", "nnnn", "A", "GATTACAgattaca", "TTTT", "CGNNCG", "acgT" * 5]
    for k in (1, 2, 3, 4):
        column = {"".join(kmer): j for j, kmer in enumerate(itertools.product("ACGT", repeat=k))}  # AA..A first
        expected = np.zeros((len(seqs), 4**k), dtype=np.float32)
        for n, s in enumerate(seqs):
            for i in range(len(s) - k + 1):
                if (j := column.get(s[i:i + k].upper())) is not None:
                    expected[n, j] += 1
        got = ft.kmer_counts(seqs, k)
        assert got.dtype == np.float32 and got.shape == (len(seqs), 4**k)
        np.testing.assert_array_equal(got, expected)
    assert ft.kmer_counts(["ACGTNacgtA"], 1).tolist() == [[3, 2, 2, 2]]  # A C G T; the N skipped


def test_probe_features_ignore_padding():
    torch.manual_seed(0)
    model = SequenceClassifier(TINY_CFG, 2).eval()
    ids = [[2, 5, 6, 7, 3], [2, 8, 5, 6, 7, 8, 5, 3]]  # the first row gets 3 pads in a batch with the second
    x, mask = pad_batch(ids, 0, "cpu")
    with torch.no_grad():
        alone, together = ft.probe_features(model, *pad_batch(ids[:1], 0, "cpu")), ft.probe_features(model, x, mask)
    assert together.shape == (2, 2 * TINY_CFG.hidden_size)  # mean over real tokens, beside the first token's
    torch.testing.assert_close(together[0], alone[0])


def test_one_padding_gives_no_mask_when_no_row_is_padded():
    x, mask = pad_batch([[2, 5, 3], [2, 6, 3]], 0, "cpu")
    assert x.tolist() == [[2, 5, 3], [2, 6, 3]] and mask is None  # the model then attends to every token
    x, mask = pad_batch([[2, 5, 3], [2, 3]], 0, "cpu")
    assert x.tolist() == [[2, 5, 3], [2, 3, 0]] and mask.tolist() == [[True, True, True], [True, True, False]]


def test_batches_deal_every_example_once_an_epoch_in_a_seeded_order():
    batches = ft.shuffled_batches(10, 4, seed=7)
    dealt = np.concatenate([next(batches) for _ in range(5)])  # 20 examples: two epochs, one batch across both
    assert sorted(dealt[:10]) == sorted(dealt[10:]) == list(range(10)) and not np.array_equal(dealt[:10], dealt[10:])
    again = ft.shuffled_batches(10, 4, seed=7)
    assert np.array_equal(np.concatenate([next(again) for _ in range(5)]), dealt)
    assert not np.array_equal(next(ft.shuffled_batches(10, 4, seed=8)), dealt[:4])


def test_a_seeds_runs_share_the_head_and_the_task_keeps_its_sequences(tmp_path):
    seed = ft.run_seed(1337, "motif", 0)  # one per (task, seed index): both inits, every budget
    assert seed == ft.run_seed(1337, "motif", 0) and len({seed, ft.run_seed(1337, "motif", 1),
                                                          ft.run_seed(1337, "other", 0)}) == 3
    torch.manual_seed(0)
    pretrained = runs.Init("pretrained", TINY_CFG, None, 0, MaskedLM(TINY_CFG).state_dict(), {})
    scratch = runs.Init("scratch", TINY_CFG, None, 0, None, {})
    a, b = (ft.build_classifier(init, 2, 0.1, seed).state_dict() for init in (pretrained, scratch))
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("classifier."))  # the same head
    assert not torch.equal(a["encoder.wte.weight"], b["encoder.wte.weight"])  # over other encoders
    char_tokenizer(tmp_path / "tokenizer.json")
    tok, _ = load_tokenizer(tmp_path / "tokenizer.json")
    data = nt_tasks.TaskData(Path("t"), ["ACGT", "A" * 45], np.array([0, 1]), ["GG"], np.array([1]), 2)
    ids = runs.tokenize(data, scratch._replace(tok=tok))
    assert data.train_x == ["ACGT", "A" * 45] and data.test_x == ["GG"]  # the ids are beside, not instead
    assert [len(x) for x in ids.train] == [6, 40] and ids.truncated == {"train": 1, "test": 0}
    assert ids.train[1][-1] == ids.train[0][-1]  # cut to max_seq_len = 40, keeping the last token ([SEP])


def test_run_hash_ignores_which_runs_there_are_and_sees_the_recipe(tiny_run):
    _, run, args, _ = tiny_run
    more = run_script("04_finetune_nt.py", *args, f"--run.out_dir={run}", "--finetune.num_seeds=3", "--dry-run")
    assert more.returncode == 0 and "12 runs (1 tasks x 2 inits x 2 label budgets x 3 seeds): 8 finished (skipped), " \
        "4 to do" in more.stdout, more.stderr[-2000:]
    other = run_script("04_finetune_nt.py", *args, f"--run.out_dir={run}", "--finetune.lr=1e-3", "--dry-run")
    assert other.returncode == 0 and "0 finished (skipped), 8 to do" in other.stdout, other.stderr[-2000:]


# -----------------------------------------------------------------------------
# end to end: every test example scored, rerun skips finished runs, torchrun gives the same table


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Both inits x 2 label budgets (8, all) x 2 seeds on a 120/37 task (37 = not a multiple of the batch size
    8 nor of 16), each run probed before it is fine-tuned."""
    tmp = tmp_path_factory.mktemp("tiny")
    write_task(tmp / "tasks" / "motif", 120, 37)
    # one train sequence longer than max_seq_len=40 tokens: truncated, with a warning
    with open(tmp / "tasks" / "motif" / "train.fna", "a") as f:
        f.write(">long|0\n" + "A" * 60 + "\n")
    run = tmp / "run"
    char_tokenizer(run / "tokenizer.json")
    torch.manual_seed(0)
    (run / "final").mkdir(parents=True)
    torch.save(MaskedLM(TINY_CFG).state_dict(), run / "final" / "model.pt")
    args = ["--config", str(ROOT / "configs/demo.toml"), *TINY, "--finetune.benchmark=local",
            f"--finetune.data_dir={tmp / 'tasks'}", "--finetune.tasks=[motif]", "--finetune.num_seeds=2",
            "--finetune.batch_size=8", "--finetune.max_steps=12", "--finetune.warmup_steps=2",
            "--finetune.eval_interval=4", "--finetune.lr=3e-3", "--finetune.train_sizes=[8,0]"]
    r = run_script("04_finetune_nt.py", *args, f"--run.out_dir={run}")
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp, run, args, r


def metrics(run: Path, row: dict) -> dict:
    labels = "all" if row["train_size"] == "0" else row["train_size"]
    return json.loads((run / "finetune" / row["task"] / row["init"] / f"labels-{labels}" / f"seed-{row['seed']}" /
                       "metrics.json").read_text())


def test_every_test_example_is_scored_once(tiny_run):
    tmp, run, _, r = tiny_run
    n_records = records(tmp / "tasks" / "motif" / "test.fna")
    assert n_records == 37
    rows = read_csv(run / "finetune" / "results.csv")
    assert [(x["init"], x["train_size"], x["seed"]) for x in rows] == [
        (init, size, k) for init in ("pretrained", "scratch") for size in ("8", "0") for k in ("0", "1")]
    assert all(int(x["n_test"]) == n_records for x in rows)
    for x in rows:
        m = metrics(run, x)
        assert m["n_test"] == n_records and m["n_train"] == (8 if m["train_size"] == 8 else 121 - m["n_val"])
        assert m["best_step"] in (4, 8, 12) and -1 <= m["test_mcc"] <= 1
    assert "1 of 121 train and 0 of 37 test sequences are longer than model.max_seq_len = 40" in r.stdout
    md = (run / "finetune" / "results.md").read_text()
    assert md.startswith("# Local tasks: test MCC") and "| motif |" in md and "| **mean** |" in md
    assert "Headline ratios" not in md and "NT SOTA" not in md  # a local task has no published figures
    assert (run / "finetune" / "mcc.png").stat().st_size > 1000
    # both inits of one seed share the validation split: a paired comparison
    a, b = (metrics(run, {"task": "motif", "init": init, "train_size": "0", "seed": "0"})
            for init in ("pretrained", "scratch"))
    assert a["run_seed"] == b["run_seed"] and a["n_val"] == b["n_val"]


def test_label_budgets_and_probe_end_to_end(tiny_run):
    tmp, run, _, r = tiny_run
    rows = read_csv(run / "finetune" / "results.csv")
    kmer = {}  # (budget, seed) -> the k-mer baseline's metrics
    for x in rows:  # probe and k-mer baseline: fit on the run's train rows, C by validation MCC, the WHOLE test split
        m = metrics(run, x)
        assert x["probe_test_mcc"] == f"{m['probe_test_mcc']:.4f}" and -1 <= m["probe_val_mcc"] <= 1
        assert m["probe_C"] in ft.PROBE_CS and m["n_test"] == 37
        assert x["kmer_test_mcc"] == f"{m['kmer_test_mcc']:.4f}" and -1 <= m["kmer_val_mcc"] <= 1
        assert m["kmer_C"] in ft.PROBE_CS
        # it does not depend on the init: both inits' runs of one (budget, seed) have the same numbers
        fit = {c: m[c] for c in ("kmer_val_mcc", "kmer_C", "kmer_test_mcc")}
        assert kmer.setdefault((x["train_size"], x["seed"]), fit) == fit
    assert len(kmer) == 4  # 2 budgets x 2 seeds, each run by both inits
    md = (run / "finetune" / "results.md").read_text()
    n_all = metrics(run, rows[-1])["n_train"]  # the last run: scratch, all labels
    assert "## Label efficiency" in md and "| motif | 8 |" in md and f"| motif | all ({n_all}) |" in md
    assert "probe: random encoder" in md and "pretrained − scratch" in md
    table1, table2 = md.split("## Label efficiency")
    for table in (table1, table2):  # the k-mer column in both tables, a number in every row
        lines = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("|")]
        j = lines[0].index("4-mer counts")
        assert all(-1 <= float(cells[j].split(" ± ")[0]) <= 1 for cells in lines[2:]), lines
    assert "4-mer counts: a logistic regression on each sequence's counts of every overlapping 4-mer" in md
    assert "Limits: 2 seed(s)" in md and "label budgets 8, all" in md
    assert (run / "finetune" / "mcc_vs_labels.png").stat().st_size > 1000
    assert r.stdout.rstrip().splitlines()[-1].startswith("| motif | all (")  # the run ends with the table


def test_rerun_skips_finished_runs_and_gives_the_same_results(tiny_run):
    tmp, run, args, _ = tiny_run
    before = (run / "finetune" / "results.csv").read_bytes()
    redo = run / "finetune" / "motif" / "scratch" / "labels-8" / "seed-1" / "metrics.json"
    kept = run / "finetune" / "motif" / "pretrained" / "labels-all" / "seed-0" / "metrics.json"
    old = json.loads(redo.read_text())
    kept_mtime = kept.stat().st_mtime_ns
    redo.unlink()  # as if the process had been killed during this run (metrics.json is written last, atomically)
    r = run_script("04_finetune_nt.py", *args, f"--run.out_dir={run}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "7 finished (skipped), 1 to do" in r.stdout
    assert kept.stat().st_mtime_ns == kept_mtime  # not redone
    new = json.loads(redo.read_text())
    assert new["test_mcc"] == old["test_mcc"] and new["history"] == old["history"]  # deterministic
    assert new["probe_test_mcc"] == old["probe_test_mcc"] and new["probe_C"] == old["probe_C"]
    assert new["kmer_test_mcc"] == old["kmer_test_mcc"] and new["kmer_C"] == old["kmer_C"]
    assert (run / "finetune" / "results.csv").read_bytes() == before


def test_torchrun_splits_runs_and_matches_one_process(tiny_run):
    tmp, run, args, _ = tiny_run
    run2 = tmp / "run_ddp"
    shutil.copytree(run, run2, ignore=shutil.ignore_patterns("finetune"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "04_finetune_nt.py"), *args, f"--run.out_dir={run2}"]
    r = subprocess.run(cmd, cwd=ROOT, env=SCRIPT_ENV, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[rank 0]" in r.stdout and "[rank 1]" in r.stdout  # both ranks fine-tuned
    assert (run2 / "finetune" / "results.csv").read_bytes() == (run / "finetune" / "results.csv").read_bytes()


# -----------------------------------------------------------------------------
# download from a local hub


def _hub_task(server, repo: str, revision: str, task: str, n_train: int, n_test: int) -> None:
    folder = server.root / repo / "resolve" / revision / task
    write_task(folder, n_train, n_test, length=12)


def test_download_resumes_and_checks_counts(tmp_path, http_server):
    repo = nt_tasks.BENCHMARKS["revised"]["repo"]
    info = nt_tasks.task_table("revised")["promoter_tata"]  # 5,062 train / 212 test, as published
    _hub_task(http_server, repo, "abc123", "promoter_tata", info.train, info.test)
    http_server.cut_after[f"{repo}/resolve/abc123/promoter_tata/train.fna"] = 5000  # drop mid-body once
    _hub_task(http_server, repo, "abc123", "promoter_all", 10, 3)  # far fewer records than published
    run = tmp_path / "run"
    char_tokenizer(run / "tokenizer.json")
    common = ["--config", str(ROOT / "configs/demo.toml"), *TINY, f"--run.out_dir={run}",
              "--finetune.benchmark=revised", f"--finetune.base_url={http_server.url}", "--finetune.revision=abc123",
              f"--finetune.data_dir={tmp_path / 'nt'}", "--finetune.inits=[scratch]", "--dry-run"]
    r = run_script("04_finetune_nt.py", *common, "--finetune.tasks=[promoter_tata]")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "promoter_tata: 5,062 train / 212 test, 2 classes" in r.stdout
    got = tmp_path / "nt" / "revised" / "promoter_tata"
    for split in ("train", "test"):
        src = http_server.root / repo / "resolve" / "abc123" / "promoter_tata" / f"{split}.fna"
        assert (got / f"{split}.fna").read_bytes() == src.read_bytes()
    ranges = [rng for name, rng in http_server.requests if name.endswith("promoter_tata/train.fna")]
    assert ranges == [None, "bytes=5000-"]  # resumed, not restarted
    n = len(http_server.requests)
    nt_tasks.fetch_task(http_server.url, repo, "abc123", "promoter_tata", got)
    assert len(http_server.requests) == n  # already there: nothing fetched again

    # a file with other counts than the published ones, and a task the server does not have
    nt_tasks.fetch_task(http_server.url, repo, "abc123", "promoter_all", tmp_path / "nt" / "promoter_all")
    with pytest.raises(UserError, match="promoter_all/train.fna: 10 records, the benchmark has 30,000"):
        nt_tasks.load_task(tmp_path / "nt" / "promoter_all", nt_tasks.task_table("revised")["promoter_all"])
    with pytest.raises(UserError, match=r"/enhancers/train\.fna: HTTP 404"):
        nt_tasks.fetch_task(http_server.url, repo, "abc123", "enhancers", tmp_path / "nt" / "enhancers")


# -----------------------------------------------------------------------------
# a real task: human core promoters (70 bp), a small model from scratch, CPU


def test_promoter_core_from_scratch_reaches_mcc_045(tmp_path, shared_data):
    # measured with run.seed 1337, seeds 0/1/2: test MCC 0.489 / 0.496 / 0.492 (run.seed 1, 2: 0.478-0.510;
    # 4-mer logistic regression on the same rows: 0.544)
    task_dir = shared_data / "tasks" / "promoter_core"
    run = tmp_path / "run"
    seqs = [r.sequence for r in nt_tasks.read_fasta(task_dir / "train.fna")]
    bpe_tokenizer(run / "tokenizer.json", seqs, vocab_size=256)  # ~22 tokens per 70 bp sequence
    r = run_script("04_finetune_nt.py", "--config", str(ROOT / "configs/demo.toml"), f"--run.out_dir={run}",
                   "--model.vocab_size=256", "--model.pad_token_id=1", "--model.hidden_size=128",
                   "--model.num_layers=2", "--model.num_heads=4", "--model.ffn_size=512", "--model.max_seq_len=128",
                   "--finetune.benchmark=local", f"--finetune.data_dir={shared_data / 'tasks'}",
                   "--finetune.tasks=[promoter_core]", "--finetune.inits=[scratch]", "--finetune.num_seeds=1", "--finetune.train_sizes=[0]",
                   "--finetune.batch_size=32", "--finetune.max_steps=500", "--finetune.warmup_steps=50",
                   "--finetune.lr=1e-3", "--finetune.eval_interval=100", "--finetune.probe=false")
    assert r.returncode == 0, r.stderr[-3000:]
    (row,) = read_csv(run / "finetune" / "results.csv")
    print(f"promoter_core from scratch: test MCC {row['test_mcc']} (best step {row['best_step']})")
    assert int(row["n_test"]) == records(task_dir / "test.fna") == 1183
    assert float(row["test_mcc"]) >= 0.45, row


def test_results_table_puts_ours_beside_the_published_figures(tmp_path):
    tasks = ["promoter_tata", "splice_sites_all"]
    infos = nt_tasks.task_table("revised")
    rows = [{"task": t, "init": i, "train_size": 0, "n_train": 900, "n_val": 100, "seed": k, "best_step": 200,
             "val_mcc": 0.5, "test_accuracy": 0.8, "test_f1": 0.8, "n_test": infos[t].test,
             "test_mcc": {"scratch": 0.4, "pretrained": 0.6}[i] + 0.02 * k}
            for t in tasks for i in ("pretrained", "scratch") for k in range(3)]  # probe off: no probe columns
    write_results(tmp_path, rows, {t: infos[t] for t in tasks}, "revised", 4)  # probe and k-mers off
    md = (tmp_path / "results.md").read_text()
    # ours: mean ± sample s.d. over the 3 seeds; then TinyDNABERT scratch, TinyDNABERT, NT SOTA as published
    assert "| Promoters(TATA) | 0.420 ± 0.020 | 0.620 ± 0.020 | 0.628 | 0.780 | 0.940 |" in md
    assert "| **mean** | 0.420 | 0.620 | 0.567 | 0.800 | 0.950 |" in md
    # headline ratios: gain = pretrained / scratch - 1, share = pretrained / SOTA, over the same tasks
    assert "| ours | +47.6% | 65.3% |" in md
    assert "| TinyDNABERT | +41.2% | 84.2% |" in md
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert md.startswith("# NT benchmark (revised): test MCC") and "probe" not in md and "mer" not in md  # off
    assert "| task | fine-tuned scratch | fine-tuned pretrained | TinyDNABERT scratch | TinyDNABERT | NT SOTA |" in md
    assert lines[0] == ("task,init,train_size,n_train,seed,best_step,val_mcc,test_mcc,probe_test_mcc,kmer_test_mcc,"
                        "test_accuracy,test_f1,n_test") and len(lines) == 13
    assert lines[1] == "promoter_tata,pretrained,0,900,0,200,0.5000,0.6000,,,0.8000,0.8000,212"
    assert (tmp_path / "mcc.png").stat().st_size > 1000 and not (tmp_path / "mcc_vs_labels.png").exists()
