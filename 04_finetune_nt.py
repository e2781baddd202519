"""
Step 04: fine-tune on the Nucleotide Transformer (NT) benchmark and build the table of test MCC.

    python 04_finetune_nt.py --config configs/demo.toml               # synthetic demo tasks, CPU, minutes
    python 04_finetune_nt.py                                          # tinydnabert: 18 tasks x 2 inits x 3 seeds
    python 04_finetune_nt.py --config configs/demo.toml --finetune.train_sizes=[64,256,0]   # label efficiency
    python 04_finetune_nt.py --finetune.benchmark=local --finetune.data_dir=my_tasks --finetune.tasks=[a,b]
    python 04_finetune_nt.py --dry-run                                # fetch and check the data, print the plan
    torchrun --nproc_per_node=2 04_finetune_nt.py                     # the ranks share out the runs

A run per task, init ("pretrained": 03's final/model.pt, "scratch", or "hf:<org>/<name>@<commit>": a published
ESM checkpoint, its own tokenizer and shape), label budget (finetune.train_sizes, 0 = all labels) and seed: a
seeded stratified 90/10 train/validation split, the budget's stratified subset of the train rows, then
  - a linear probe: logistic regression on the frozen encoder's features, before any training (for scratch,
    a seeded random encoder of the same shape: what pretraining adds before fine-tuning);
  - a k-mer count baseline (finetune.kmer): the probe's regression on each sequence's counts of every k-mer;
  - TinyDNABERT's fine-tuning recipe, the best validation-MCC weights scoring the WHOLE test split.
Out: finetune/<task>/<init>/labels-<all|N>/seed-<k>/metrics.json (finished runs are skipped), results.csv,
results.md, mcc.png (all labels) and, with more than one budget, mcc_vs_labels.png.
"""

import itertools
import json
import time
from collections import namedtuple
from functools import partial
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from model import SequenceClassifier, configure_optimizer, lr_at
from shelf import runs
from shelf.config import load_config, save_config
from shelf.distributed import mixed_precision, print0, setup_distributed, teardown_distributed, uses_bf16
from shelf.errors import UserError, run_main
from shelf.files import write_json
from shelf.inference import mean_pool, pad_batch
from shelf.nt_tasks import TaskData, load_task
from shelf.progress import progress
from shelf.results import write_results
from shelf.seeds import rng, torch_seed

Examples = namedtuple("Examples", "ids y seqs")  # token ids, a list per sequence; (N,) int64 labels; the sequences
PROBE_CS = (0.01, 0.1, 1.0)  # inverse L2 strengths tried, smallest first: a tie keeps the stronger penalty


@torch.no_grad()
def in_batches(model, fn, ids: list[list[int]], *, pad_id: int, bf16: bool, batch_size: int) -> np.ndarray:
    """fn(model, x, mask) of every sequence of `ids` (none dropped), in order, in eval mode (no dropout): one array."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(ids), batch_size):
        x, mask = pad_batch(ids[start:start + batch_size], pad_id, device)
        with mixed_precision(bf16, device):
            out.append(fn(model, x, mask).cpu().numpy())
    model.train()
    return np.concatenate(out)


def probe_features(model, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The probe's features: the final hidden states' mean over the real tokens (as inference.embed), beside the
    first token's, which is what the classification head reads. (B, T) -> (B, 2C)"""
    h = model.encoder(x, mask).float()  # (B, T, C)
    return torch.cat([mean_pool(h, mask), h[:, 0]], dim=-1)


def kmer_counts(seqs: list[str], k: int) -> np.ndarray:
    """(N, 4**k) float32: each sequence's count of every overlapping k-mer of A/C/G/T (either case), k-mer b_1..b_k
    (A C G T = 0 1 2 3) in column sum_j b_j 4**(k - j); one holding another letter, or spanning two, is not counted."""
    code = np.full(256, 4**k)  # byte -> its base's number; any other letter 4**k: a k-mer holding one sums past 4**k
    code[list(b"ACGTacgt")] = [0, 1, 2, 3] * 2
    text = code[np.frombuffer(("\n".join(seqs) + "\n" * k).encode("ascii", "replace"), np.uint8)]  # a byte a letter
    row = np.repeat(np.arange(len(seqs)), [len(s) + 1 for s in seqs])  # (n,) per start: its sequence, "\n" after it too
    column = np.minimum(sum(text[j:j + len(row)] * 4 ** (k - 1 - j) for j in range(k)), 4**k)  # (n,) 4**k: not counted
    counts = np.bincount(row * (4**k + 1) + column, minlength=len(seqs) * (4**k + 1))  # (N * (4**k + 1),)
    return counts.reshape(len(seqs), 4**k + 1)[:, :-1].astype(np.float32)  # less the column of k-mers not counted


def linear_probe(name: str, features, train: Examples, val: Examples, test: Examples) -> dict:
    """A logistic regression on features(examples) (N, F): the probe's on the frozen encoder's (F = 2C, before
    fine-tuning), the k-mer baseline's on kmer_counts (F = 4**k); C by validation MCC, the test split scored once."""
    unscaled = [features(examples) for examples in (train, val, test)]  # (N, F) each
    scale = StandardScaler().fit(unscaled[0])  # every feature to mean 0, s.d. 1 on the train rows
    x_train, x_val, x_test = (scale.transform(f) for f in unscaled)
    fits = [LogisticRegression(C=c, max_iter=2000).fit(x_train, train.y) for c in PROBE_CS]
    val_mccs = [matthews_corrcoef(val.y, fit.predict(x_val)) for fit in fits]
    best = int(np.argmax(val_mccs))  # the first of the best: the smallest C
    return {f"{name}_val_mcc": float(val_mccs[best]), f"{name}_C": PROBE_CS[best],
            f"{name}_test_mcc": float(matthews_corrcoef(test.y, fits[best].predict(x_test)))}


def label_subset(rows: np.ndarray, labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` of `rows` (0, or size >= len(rows): all), stratified by class, seeded and nested. Each class's rows
    are dealt out in a seeded order, its j-th of n at place j/n in [0, 1); sorted by place, the classes take
    turns in proportion (their first rows first: every class is in once size >= the number of classes). A
    budget is a prefix of that one order, so for one seed the 64 rows are among the 256."""
    if size == 0 or size >= len(rows):
        return rows
    deal = rng(seed, "training labels")
    dealt = [deal.permutation(rows[labels[rows] == c]) for c in np.unique(labels[rows])]
    place = np.concatenate([np.arange(len(d)) / len(d) for d in dealt])
    return np.sort(np.concatenate(dealt)[np.argsort(place, kind="stable")[:size]])  # stable: ties by class


def split_rows(data: TaskData, val_fraction: float, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (rows of train.fna to train on, rows held out to pick the best step and the probe's C): a seeded stratified
    validation split, the same for every budget and both inits, then `size` labels of the rest (0 = all of them)."""
    try:
        train_rows, val_rows = train_test_split(np.arange(len(data.train_y)), test_size=val_fraction,
                                                random_state=rng(seed, "validation split").integers(2**32),
                                                stratify=data.train_y)
    except ValueError as e:
        raise UserError(f"{data.folder / 'train.fna'}: cannot make a stratified validation split ({e})")
    if 0 < size < data.classes:
        raise UserError(f"finetune.train_sizes: {size} label(s) cannot cover the {data.classes} classes of "
                        f"{data.folder.name}")
    return label_subset(train_rows, data.train_y, size, seed), val_rows


def run_seed(seed: int, task: str, k: int) -> int:
    """One seed per (task, seed index), shared by both inits and every budget so pretrained vs scratch is a
    paired comparison: same validation split, same training labels, same head init, same batch order."""
    return torch_seed(seed, "finetune run", task, k)


def shuffled_batches(n: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Endless batches of indices into n examples: epoch after epoch a new seeded order, as 03's blocks; an epoch's
    last examples begin the next batch, so none is left out."""
    order = itertools.chain.from_iterable(rng(seed, "batches", epoch).permutation(n) for epoch in itertools.count())
    while True:
        yield np.fromiter(itertools.islice(order, batch_size), dtype=np.int64, count=batch_size)


def build_classifier(init: runs.Init, classes: int, dropout: float, seed: int) -> SequenceClassifier:
    """The init's encoder (random for scratch) under a new classification head. Drawn from the run's seed: every
    init of one shape gets the same head, and scratch the same encoder, in each of a seed's runs."""
    torch.manual_seed(torch_seed(seed, "classifier"))  # also the seed of dropout's draws in training
    model = SequenceClassifier(init.model, classes, dropout)
    if init.weights is not None:
        try:
            model.load_encoder_from_mlm(init.weights)
        except (RuntimeError, ValueError) as e:
            raise UserError(f"{init.name} weights do not fit the model config ({str(e).splitlines()[0][:200]})")
    return model


def train_classifier(model, train: Examples, val: Examples, predict, ft, pad_id: int, bf16: bool, seed: int,
                     bar: str | None) -> dict:
    """TinyDNABERT's fine-tuning recipe: AdamW, warm-up then linear decay, cross-entropy of the class logits; every
    eval_interval steps (and at the last) the validation MCC of predict(ids), the model left at its best. -> metrics"""
    device = next(model.parameters()).device
    optimizer = configure_optimizer(model, ft, device)
    batches = shuffled_batches(len(train.y), ft.batch_size, seed)
    best = {"best_step": 0, "val_mcc": -2.0}
    best_weights = None  # the state_dict at the best step, on the CPU
    history = []  # per evaluation: step, mean training loss since the last one, validation MCC
    losses = []  # since the last evaluation
    steps = progress(range(1, ft.max_steps + 1), desc=bar, disable=bar is None, leave=False, mininterval=2)
    for step in steps:
        rows = next(batches)
        x, mask = pad_batch([train.ids[i] for i in rows], pad_id, device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step - 1, ft)  # lr_at counts steps from 0
        with mixed_precision(bf16, device):
            loss = F.cross_entropy(model(x, mask).float(), torch.from_numpy(train.y[rows]).to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if ft.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), ft.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        if step % ft.eval_interval == 0 or step == ft.max_steps:
            val_mcc = float(matthews_corrcoef(val.y, predict(val.ids)))
            loss_avg, losses = sum(losses) / len(losses), []
            history.append({"step": step, "train_loss": round(loss_avg, 5), "val_mcc": round(val_mcc, 5)})
            steps.set_postfix(loss=f"{loss_avg:.3f}", val_mcc=f"{val_mcc:.3f}")
            if val_mcc > best["val_mcc"]:  # strictly better: ties keep the earlier step
                best_weights = {n: t.detach().to("cpu", copy=True) for n, t in model.state_dict().items()}
                best = {"best_step": step, "val_mcc": val_mcc}
    model.load_state_dict(best_weights)
    return best | {"history": history}


def score(test: Examples, predicted: np.ndarray, classes: int) -> dict:
    """The test split's metrics: MCC (the benchmark's), accuracy, F1 of class 1 (binary tasks' positive) or macro."""
    binary = classes == 2
    f1 = f1_score(test.y, predicted, average="binary" if binary else "macro",
                  labels=None if binary else list(range(classes)), zero_division=0)
    return {"test_mcc": float(matthews_corrcoef(test.y, predicted)), "n_test": len(predicted),
            "test_accuracy": float(accuracy_score(test.y, predicted)), "test_f1": float(f1)}


def finetune(cfg, job: runs.Job, device: torch.device, bar: str | None) -> dict:
    """One run: probe and k-mer baseline, then fine-tune; its best validation weights score the test split."""
    t0, ft = time.time(), cfg.finetune
    run, init, data, ids, _ = job  # _: its progress label, passed as `bar`
    seed = run_seed(cfg.run.seed, run.task, run.seed)
    train, val = (Examples([ids.train[i] for i in rows], data.train_y[rows], [data.train_x[i] for i in rows])
                  for rows in split_rows(data, ft.val_fraction, run.train_size, seed))
    test = Examples(ids.test, data.test_y, data.test_x)
    model = build_classifier(init, data.classes, ft.classifier_dropout, seed).to(device)
    bf16 = uses_bf16(ft.precision, device)
    apply = partial(in_batches, model, pad_id=init.pad_id, bf16=bf16, batch_size=2 * ft.batch_size)
    predict = partial(apply, lambda model, x, mask: model(x, mask).argmax(-1))  # ids -> (N,) predicted classes
    probe = linear_probe("probe", lambda e: apply(probe_features, e.ids), train, val, test) if ft.probe else {}
    kmer = linear_probe("kmer", lambda e: kmer_counts(e.seqs, ft.kmer), train, val, test) if ft.kmer else {}
    best = train_classifier(model, train, val, predict, ft, init.pad_id, bf16, seed, bar)  # best_step, val_mcc, history
    return {"task": run.task, "init": run.init, "train_size": run.train_size, "seed": run.seed, "run_seed": seed,
            "config_hash": run.config_hash, **best, **probe, **kmer, **score(test, predict(test.ids), data.classes),
            "n_train": len(train.y), "n_val": len(val.y), "classes": data.classes, "truncated": ids.truncated,
            "seconds": round(time.time() - t0, 1)}


def main():
    cfg, flags = load_config(flags=("--dry-run",), doc=__doc__, sections=("run", "model", "finetune"))
    world = setup_distributed(cfg.run.device, cfg.run.deterministic)
    plan = runs.Plan(cfg, world)  # the tasks and inits ready; every run, and which are finished
    if "--dry-run" in flags:  # parse every task file too, so that a dry run checks the data
        for task, info in plan.tasks.items():
            data = load_task(plan.data_root / task, info)
            print0(f"  {task}: {len(data.train_y):,} train / {len(data.test_y):,} test, {data.classes} classes")
        return teardown_distributed()
    for job in plan.todo():  # this rank's share of the unfinished runs (torchrun: one process on one device each)
        m = finetune(cfg, job, world.device, bar=job.progress if world.is_main else None)
        write_json(job.run.dir / "metrics.json", m)
        also = "".join(f"  {n} test MCC {m[n + '_test_mcc']:.4f}" for n in ("probe", "kmer") if n + "_test_mcc" in m)
        plan.log(f"{job.run.name:<48} {m['n_train']:>7,} labels: best step {m['best_step']:,}  val MCC "
                 f"{m['val_mcc']:.4f}  test MCC {m['test_mcc']:.4f}{also}  ({m['n_test']:,} test sequences, "
                 f"{m['seconds']:.0f} s)")
    if world.is_main:  # every run's metrics.json, in plan order: this rank's and the others'
        rows = [json.loads((run.dir / "metrics.json").read_text()) for run in plan.runs]
        write_results(cfg.out_dir / "finetune", rows, plan.tasks, cfg.finetune.benchmark, cfg.finetune.kmer)
        save_config(cfg, cfg.out_dir / "finetune")  # only now: the config of the results.md beside it
    teardown_distributed()


if __name__ == "__main__":
    run_main(main)
