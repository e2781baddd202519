"""
Step 04: fine-tune on the Nucleotide Transformer (NT) benchmark and build the table of test MCC.

    python 04_finetune_nt.py --config configs/demo.toml               # synthetic demo tasks, CPU, minutes
    python 04_finetune_nt.py                                          # tinydnabert: 18 tasks x 2 inits x 3 seeds
    python 04_finetune_nt.py --finetune.tasks=[promoter_all,enhancers] --finetune.num_seeds=1
    python 04_finetune_nt.py --config configs/demo.toml --finetune.train_sizes=[64,256,0]   # label efficiency
    python 04_finetune_nt.py --finetune.benchmark=local --finetune.data_dir=my_tasks --finetune.inits=[scratch]
    python 04_finetune_nt.py --finetune.inits='["scratch","hf:InstaDeepAI/nucleotide-transformer-500m-human-ref@<commit>"]'
    python 04_finetune_nt.py --dry-run                                # fetch and check the data, print the plan
    torchrun --nproc_per_node=2 04_finetune_nt.py                     # the ranks share out the runs

A run per task, init ("pretrained": 03's final/model.pt, "scratch", or "hf:<org>/<name>@<commit>": a published
ESM checkpoint, its own tokenizer and shape), label budget (finetune.train_sizes, 0 = all labels) and seed: a
seeded stratified 90/10 train/validation split, the budget's stratified subset of the train rows, then
  - a linear probe: logistic regression on the frozen encoder's features, before any training (for scratch,
    a seeded random encoder of the same shape: what pretraining adds before fine-tuning);
  - TinyDNABERT's fine-tuning recipe, the best validation-MCC weights scoring the WHOLE test split.
Out: finetune/<task>/<init>/labels-<all|N>/seed-<k>/metrics.json (finished runs are skipped), results.csv,
results.md, mcc.png (all labels) and, with more than one budget, mcc_vs_labels.png.
"""

import hashlib
import json
import time
import zlib
from collections import namedtuple
from dataclasses import asdict, dataclass
from datetime import timedelta
from functools import partial
from itertools import product
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from model import SequenceClassifier, configure_optimizer, lr_at
from shelf import hf_hub
from shelf.checkpoint import load_final_weights
from shelf.config import load_config, save_config
from shelf.demo_data import make_demo_tasks
from shelf.distributed import print0, setup_distributed, teardown_distributed
from shelf.errors import UserError, run_main
from shelf.files import file_hash, write_json
from shelf.nt_tasks import BENCHMARKS, TaskData, TaskInfo, fetch_task, load_task, task_table
from shelf.results import write_results
from shelf.tokens import load_tokenizer

# how an init's runs start: encoder shape, tokenizer, pad id, weights (None: random), its files' hashes (run hashing)
Init = namedtuple("Init", "model tok pad_id weights hashes")


def encode(tok, seqs: list[str], max_len: int) -> tuple[list[list[int]], int]:
    """Token ids with the tokenizer's <s> … </s>, too long: first max_len - 1 + last. -> (ids, n truncated)."""
    ids = [enc.ids for enc in tok.encode_batch(seqs)]
    return [x[:max_len - 1] + x[-1:] if len(x) > max_len else x for x in ids], sum(len(x) > max_len for x in ids)


def collate(ids: list[list[int]], rows, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic padding: pad to the longest sequence of this batch only. -> input_ids, mask (B, T)."""
    x = torch.full((len(rows), max(len(ids[i]) for i in rows)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(x, dtype=torch.bool)
    for r, i in enumerate(rows):
        x[r, :len(ids[i])], mask[r, :len(ids[i])] = torch.tensor(ids[i]), True
    return x, mask


@torch.no_grad()
def in_batches(model, fn, ids: list[list[int]], rows=None, *, pad_id: int, batch_size: int, device: str, amp: dict):
    """fn(model, x, mask) of EVERY one of `rows` (None: of ids), in order, stacked into one numpy array; in eval
    mode (no dropout). The last batch may be short: nothing is dropped."""
    model.eval()
    rows = range(len(ids)) if rows is None else rows
    out = []
    for start in range(0, len(rows), batch_size):
        x, mask = collate(ids, rows[start:start + batch_size], pad_id)
        with torch.autocast(**amp):
            out.append(fn(model, x.to(device), mask.to(device)).cpu().numpy())
    model.train()
    return np.concatenate(out)


def predicted_class(model, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return model(x, mask)[0].argmax(-1)  # (B, T) -> (B,)


def pooled(model, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The probe's features: the final hidden states' mean over the real (non-pad) tokens, beside the first
    token's (<s>, what the classification head reads). (B, T) -> (B, 2C)"""
    h, m = model.encoder(x, mask).float(), mask.unsqueeze(-1).float()  # (B, T, C), (B, T, 1)
    return torch.cat([(h * m).sum(1) / m.sum(1), h[:, 0]], dim=-1)


PROBE_CS = (0.01, 0.1, 1.0)  # inverse L2 strengths tried, smallest first: a tie keeps the stronger penalty


def linear_probe(batched, data: TaskData, train_rows: np.ndarray, val_rows: np.ndarray) -> dict:
    """What the frozen encoder knows before fine-tuning: a logistic regression on its features, its C picked
    by validation MCC; then the whole test split scored once."""
    features = [batched(pooled, data.train_x, train_rows), batched(pooled, data.train_x, val_rows),
                batched(pooled, data.test_x)]  # (N, 2C) each
    scale = StandardScaler().fit(features[0])  # every feature to mean 0, s.d. 1 on the train rows
    x_train, x_val, x_test = (scale.transform(f) for f in features)
    fits = [LogisticRegression(C=c, max_iter=2000).fit(x_train, data.train_y[train_rows]) for c in PROBE_CS]
    val_mccs = [matthews_corrcoef(data.train_y[val_rows], fit.predict(x_val)) for fit in fits]
    best = int(np.argmax(val_mccs))  # the first of the best: the smallest C
    return {"probe_val_mcc": float(val_mccs[best]), "probe_C": PROBE_CS[best],
            "probe_test_mcc": float(matthews_corrcoef(data.test_y, fits[best].predict(x_test)))}


def label_subset(rows: np.ndarray, labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` of `rows` (0, or size >= len(rows): all), stratified by class, seeded and nested. Each class's rows
    are dealt out in a seeded order, its j-th of n at place j/n in [0, 1); sorted by place, the classes take
    turns in proportion (their first rows first: every class is in once size >= the number of classes). A
    budget is a prefix of that one order, so for one seed the 64 rows are among the 256."""
    if size == 0 or size >= len(rows):
        return rows
    rng, y = np.random.default_rng(seed), labels[rows]
    dealt = [rng.permutation(rows[y == c]) for c in np.unique(y)]
    place = np.concatenate([np.arange(len(d)) / len(d) for d in dealt])
    return np.sort(np.concatenate(dealt)[np.argsort(place, kind="stable")[:size]])  # stable: ties by class


def split_rows(data: TaskData, val_fraction: float, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (train rows, validation rows): a seeded stratified validation split of train.fna, the same for every
    budget and both inits, then `size` labels of the rest (0 = all of them) to train on."""
    try:
        train_rows, val_rows = train_test_split(np.arange(len(data.train_y)), test_size=val_fraction,
                                                random_state=seed, stratify=data.train_y)
    except ValueError as e:
        raise UserError(f"{data.folder / 'train.fna'}: cannot make a stratified validation split ({e})")
    if 0 < size < data.classes:
        raise UserError(f"finetune.train_sizes: {size} label(s) cannot cover the {data.classes} classes of "
                        f"{data.folder.name}")
    return label_subset(train_rows, data.train_y, size, seed), val_rows


def run_seed(base_seed: int, task: str, k: int) -> int:
    """One seed per (task, seed index), shared by both inits and every budget so pretrained vs scratch is a
    paired comparison: same validation split, same training labels, same head init, same batch order."""
    return (base_seed * 1_000_003 + zlib.crc32(task.encode()) + 7919 * k) % (2**31 - 1)


@dataclass
class Run:
    task: str
    init: str  # "pretrained" | "scratch" | "hf:<org>/<name>@<commit>"
    train_size: int  # label budget: training rows (0 = all)
    seed: int  # seed index k
    config_hash: str  # of all that decides the result; metrics.json records it
    root: Path  # <out_dir>/finetune

    @property
    def name(self) -> str:
        init = self.init.replace(":", "-").replace("/", "--")  # hf:<org>/<name>@<commit>: hf-<org>--<name>@<commit>
        return f"{self.task}/{init}/labels-{self.train_size or 'all'}/seed-{self.seed}"

    @property
    def dir(self) -> Path:
        return self.root / self.name

    def is_done(self) -> bool:
        try:
            return json.loads((self.dir / "metrics.json").read_text()).get("config_hash") == self.config_hash
        except (OSError, ValueError):
            return False


def finetune_one(cfg, run: Run, data: TaskData, init: Init, device: str, bar: str | None) -> dict:
    """Probe, then fine-tune one run; its best validation weights score the test split. -> its metrics."""
    ft, seed, t0 = cfg.finetune, run_seed(cfg.run.seed, run.task, run.seed), time.time()
    bf16 = ft.precision == "bf16" or (ft.precision == "auto" and device.startswith("cuda"))
    amp = {"device_type": device.split(":")[0], "dtype": torch.bfloat16, "enabled": bf16}  # torch.autocast's
    train_rows, val_rows = split_rows(data, ft.val_fraction, run.train_size, seed)
    torch.manual_seed(seed)  # the same seed draws the same head (and, for scratch, the same encoder)
    model = SequenceClassifier(init.model, data.classes, ft.classifier_dropout)
    if init.weights is not None:
        try:
            model.load_encoder_from_mlm(init.weights)
        except (RuntimeError, ValueError) as e:
            raise UserError(f"{run.init} weights do not fit the model config ({str(e).splitlines()[0][:200]})")
    model.to(device)
    batched = partial(in_batches, model, pad_id=init.pad_id, batch_size=2 * ft.batch_size, device=device, amp=amp)
    probe = linear_probe(batched, data, train_rows, val_rows) if ft.probe else {}  # before any training
    optimizer = configure_optimizer(model, ft, device)  # AdamW, no decay on biases and norms (as 03)

    rng = np.random.default_rng(seed)
    stream, pos = rng.permutation(train_rows), 0  # an endless stream of seeded shuffles of the train rows
    best_mcc, best_step, best_state, history, losses = -2.0, 0, None, [], []
    steps = tqdm(range(ft.max_steps), desc=bar, disable=bar is None, leave=False, mininterval=2)
    for step in steps:
        if pos + ft.batch_size > len(stream):
            stream, pos = np.concatenate([stream[pos:], rng.permutation(train_rows)]), 0
        rows, pos = stream[pos:pos + ft.batch_size], pos + ft.batch_size
        x, mask = collate(data.train_x, rows, init.pad_id)
        y = torch.from_numpy(data.train_y[rows])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, ft)
        with torch.autocast(**amp):
            _, loss = model(x.to(device), mask.to(device), labels=y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if ft.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), ft.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % ft.eval_interval == 0 or step + 1 == ft.max_steps:  # validation MCC; keep the best
            val_pred = batched(predicted_class, data.train_x, val_rows)
            val_mcc = float(matthews_corrcoef(data.train_y[val_rows], val_pred))
            loss_avg, losses = sum(losses) / len(losses), []
            history.append({"step": step + 1, "train_loss": round(loss_avg, 5), "val_mcc": round(val_mcc, 5)})
            steps.set_postfix(loss=f"{loss_avg:.3f}", val_mcc=f"{val_mcc:.3f}")
            if val_mcc > best_mcc:  # strictly better: ties keep the earlier step
                best_mcc, best_step = val_mcc, step + 1
                best_state = {n: t.detach().to("cpu", copy=True) for n, t in model.state_dict().items()}
    model.load_state_dict(best_state)
    test_pred = batched(predicted_class, data.test_x)
    binary = data.classes == 2  # F1 of class 1 (every binary NT task's positive class), else macro F1
    test_f1 = f1_score(data.test_y, test_pred, average="binary" if binary else "macro",
                       labels=None if binary else list(range(data.classes)), zero_division=0)
    return {"task": run.task, "init": run.init, "train_size": run.train_size, "seed": run.seed, "run_seed": seed,
            "config_hash": run.config_hash, "best_step": best_step, "val_mcc": best_mcc,
            "test_mcc": float(matthews_corrcoef(data.test_y, test_pred)), **probe,
            "test_accuracy": float(accuracy_score(data.test_y, test_pred)), "test_f1": float(test_f1),
            "n_test": len(test_pred), "n_train": len(train_rows), "n_val": len(val_rows), "classes": data.classes,
            "seconds": round(time.time() - t0, 1), "history": history}


# ---- the pipeline's steps, in the order main() runs them -----------------------------------------------
def pick_tasks(ft) -> tuple[list[str], dict[str, TaskInfo], Path]:
    """-> the tasks to run (default: all of the benchmark's), their published facts, their files' folder."""
    table = task_table(ft.benchmark)
    tasks = list(ft.tasks) or list(table)
    if not tasks:
        raise UserError(f"finetune.benchmark = local needs --finetune.tasks=[...] (folders in {ft.data_dir})", 2)
    unknown = [t for t in tasks if ft.benchmark != "local" and t not in table]
    if unknown:
        raise UserError(f"unknown {ft.benchmark} task(s) {', '.join(unknown)}; valid: {', '.join(table)}", 2)
    data_root = Path(ft.data_dir) if ft.benchmark == "local" else Path(ft.data_dir) / ft.benchmark
    return tasks, {t: table.get(t, TaskInfo(t, None, None, None)) for t in tasks}, data_root


def get_data(cfg, tasks: list[str], data_root: Path) -> None:
    """Make the demo tasks or download the benchmark's (local tasks are the user's own files), and hf: inits."""
    ft = cfg.finetune
    if ft.benchmark == "demo" and not all((data_root / t / f"{s}.fna").is_file() for t in tasks for s in ("train", "test")):
        make_demo_tasks(data_root, cfg.run.seed, {t: (i.train, i.test) for t, i in task_table("demo").items()})
        print0(f"wrote the synthetic demo tasks to {data_root}")
    elif ft.benchmark in BENCHMARKS:
        repo, revision = BENCHMARKS[ft.benchmark]["repo"], ft.revision or BENCHMARKS[ft.benchmark]["revision"]
        for task in tasks:
            fetch_task(ft.base_url, repo, revision, task, data_root / task)
        print0(f"benchmark: {repo} at revision {revision} in {data_root}")
    for init in [i for i in ft.inits if i.startswith("hf:")]:  # published checkpoints, also by rank 0 alone
        hf_hub.fetch(ft.hub_url, ft.hf_dir, init)


def rank_barrier(world):
    """-> wait() for every rank, on a gloo group that waits up to a week: downloads and other ranks' runs."""
    if not world.is_distributed:
        return lambda: None
    group = torch.distributed.new_group(backend="gloo", timeout=timedelta(days=7))
    return lambda: torch.distributed.barrier(group=group)


def load_inits(cfg) -> dict[str, Init]:
    """-> each init's Init: an hf: init's from its download; pretrained and scratch share the run's tokenizer."""
    ft = cfg.finetune
    inits = {i: Init(*hf_hub.load(hf_hub.checkpoint_dir(ft.hf_dir, i)), {}) for i in ft.inits if i.startswith("hf:")}
    if not {"pretrained", "scratch"} & set(ft.inits):
        return inits  # published checkpoints only: no run of 02/03 needed
    tok_path = cfg.out_dir / "tokenizer.json"
    weights_path = Path(ft.pretrained) if ft.pretrained else cfg.out_dir / "final" / "model.pt"
    tok, special = load_tokenizer(tok_path, cfg.model)
    hashes, weights = {"tokenizer": file_hash(tok_path), "weights": None}, None
    if "pretrained" in ft.inits:
        if not weights_path.is_file():
            raise UserError(f"{weights_path}: pretrained weights not found (run 03_pretrain.py first, "
                            f"or fine-tune from scratch only: --finetune.inits=[scratch])")
        hashes["weights"] = file_hash(weights_path)
        weights = load_final_weights(weights_path, hashes["tokenizer"])  # refused if trained with another tokenizer
    return inits | {"pretrained": Init(cfg.model, tok, special.pad, weights, hashes),
                    "scratch": Init(cfg.model, tok, special.pad, None, {**hashes, "weights": None})}


def plan_runs(cfg, tasks: list[str], data_root: Path, inits: dict[str, Init], world) -> tuple[list[Run], list[Run]]:
    """-> all runs and those to do: those without a metrics.json of the same hash of all that decides a result."""
    ft = cfg.finetune
    recipe = {k: v for k, v in asdict(ft).items() if k not in ("benchmark", "base_url", "revision", "data_dir",
              "pretrained", "tasks", "inits", "hub_url", "hf_dir", "train_sizes", "num_seeds")}
    runs = []
    for task in tasks:  # task first: a rank loads each task's data once
        files = {split: data_root / task / f"{split}.fna" for split in ("train", "test")}
        if missing := [path for path in files.values() if not path.is_file()]:
            raise UserError(f"{missing[0]}: task file not found")
        data = {split: file_hash(path) for split, path in files.items()}
        for init, size, k in product(ft.inits, ft.train_sizes, range(ft.num_seeds)):
            ident = {"recipe": recipe, "model": asdict(inits[init].model), "seed": cfg.run.seed, "task": task,
                     "init": init, "train_size": size, "k": k, "data": data, **inits[init].hashes}
            run_hash = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
            runs.append(Run(task, init, size, k, run_hash, cfg.out_dir / "finetune"))
    todo = [run for run in runs if not run.is_done()]
    print0(f"{len(runs):,} runs ({len(tasks)} tasks x {len(ft.inits)} inits x {len(ft.train_sizes)} label budgets x "
           f"{ft.num_seeds} seeds): {len(runs) - len(todo):,} finished (skipped), {len(todo):,} to do"
           + (f", shared by {world.size} ranks" if world.is_distributed else ""))
    return runs, todo


def finetune_runs(cfg, runs: list[Run], data_root: Path, infos: dict, inits: dict[str, Init], world) -> None:
    """Fine-tune this rank's runs, each ending with its metrics.json; one task's data in memory at a time."""
    data, tok, rank = None, None, f"[rank {world.rank}] " if world.is_distributed else ""
    for n, run in enumerate(runs, start=1):
        init = inits[run.init]  # the runs are sorted by task, then init: read again for an hf: init's own tokenizer
        if data is None or data.folder.name != run.task or init.tok is not tok:
            tok, max_len, data = init.tok, init.model.max_seq_len, load_task(data_root / run.task, infos[run.task])
            (data.train_x, n_train), (data.test_x, n_test) = (encode(tok, x, max_len) for x in (data.train_x, data.test_x))
            if n_train or n_test:
                print(f"{rank}warning: {run.task}: {n_train:,} of {len(data.train_y):,} train and {n_test:,} of "
                      f"{len(data.test_y):,} test sequences are longer than model.max_seq_len = {max_len} tokens "
                      "and were truncated", flush=True)
        m = finetune_one(cfg, run, data, init, world.device,
                         bar=f"{run.name} ({n}/{len(runs)})" if world.is_main else None)
        write_json(run.dir / "metrics.json", {**m, "truncated": {"train": n_train, "test": n_test}})
        probe = f"  probe test MCC {m['probe_test_mcc']:.4f}" if "probe_test_mcc" in m else ""
        print(f"{rank}{run.name:<48} {m['n_train']:>7,} labels: best step {m['best_step']:,}  val MCC "
              f"{m['val_mcc']:.4f}  test MCC {m['test_mcc']:.4f}{probe}  ({m['n_test']:,} test sequences, "
              f"{m['seconds']:.0f} s)", flush=True)


def main():
    cfg, flags = load_config(flags=("--dry-run",))
    world = setup_distributed(cfg.run.device)
    wait_for_all_ranks = rank_barrier(world)
    tasks, infos, data_root = pick_tasks(cfg.finetune)
    if world.is_main:  # rank 0 makes or downloads the data while the others wait
        get_data(cfg, tasks, data_root)
    wait_for_all_ranks()
    inits = load_inits(cfg)
    runs, todo = plan_runs(cfg, tasks, data_root, inits, world)
    if "--dry-run" in flags:  # parse every task file too, so a dry run checks the data
        for task in tasks:
            data = load_task(data_root / task, infos[task])
            print0(f"  {task}: {len(data.train_y):,} train / {len(data.test_y):,} test, {data.classes} classes")
        return teardown_distributed()
    # torchrun: the ranks share out the runs, each one process on one device, so results don't depend on ranks
    finetune_runs(cfg, todo[world.rank::world.size], data_root, infos, inits, world)
    wait_for_all_ranks()
    if world.is_main:
        rows = [json.loads((run.dir / "metrics.json").read_text()) for run in runs]
        write_results(cfg.out_dir / "finetune", rows, tasks, infos, cfg.finetune.benchmark)
        save_config(cfg, cfg.out_dir / "finetune")  # only now: the config of the results.md beside it
    teardown_distributed()


if __name__ == "__main__":
    run_main(main)
