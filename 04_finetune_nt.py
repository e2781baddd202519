"""
Step 04: fine-tune on the Nucleotide Transformer (NT) benchmark and build the MCC table, by code.

For every task, init ("pretrained" = 03's final/model.pt, "scratch" = same shape, seeded random init)
and seed: a seeded stratified 90/10 train/validation split, fine-tuning with TinyDNABERT's recipe
(batch 64, 5,000 steps, lr 1e-4, 500 warm-up steps then linear decay, weight decay 1e-5), validation
MCC every 200 steps keeping the best weights, then the WHOLE official test split scored (no dropped
batch). Outputs, inside the run directory:

    finetune/<task>/<init>/seed-<k>/metrics.json   one per run, written atomically when the run ends
    finetune/results.csv                           one row per run
    finetune/results.md                            one row per task: ours (mean ± s.d.) beside the
                                                   published TinyDNABERT and NT figures, + a mean row
    finetune/mcc.png                               the same, as bars with error bars

Finished runs (metrics.json with the same config hash) are skipped, so an interrupted run just restarts.

    python 04_finetune_nt.py --config configs/demo.toml               # synthetic demo tasks, CPU, minutes
    python 04_finetune_nt.py                                          # tinydnabert: 18 tasks x 2 inits x 3 seeds
    python 04_finetune_nt.py --finetune.tasks=[promoter_all,enhancers] --finetune.num_seeds=1
    python 04_finetune_nt.py --finetune.benchmark=local --finetune.data_dir=my_tasks --finetune.inits=[scratch]
    python 04_finetune_nt.py --dry-run                                # fetch and check the data, print the plan
    torchrun --nproc_per_node=2 04_finetune_nt.py                     # the ranks share out the runs
"""

import hashlib
import json
import time
import zlib
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model import SequenceClassifier, configure_optimizer, lr_at
from shelf.config import PROJECT_ROOT, load_config, save_config
from shelf.demo_data import make_demo_tasks
from shelf.distributed import print0, setup_distributed, teardown_distributed
from shelf.errors import UserError, run_main
from shelf.fasta import read_fasta
from shelf.files import download, file_hash, write_json
from shelf.results import read_commented_csv, write_results
from shelf.tokens import load_tokenizer

# Where each benchmark lives on the Hugging Face hub. The original repo is pinned to a commit we could
# verify holds every task folder; for the revised repo no commit hash could be checked offline, so it
# follows "main" until someone pins it with --finetune.revision=<40-hex commit> (printed in every run).
BENCHMARKS = {
    "revised": {"repo": "nucleotide_transformer_downstream_tasks_revised", "revision": "main"},
    "original": {"repo": "nucleotide_transformer_downstream_tasks",
                 "revision": "d11d8921f9255e5d657e69443865966e66de3b21"},
}
TASKS_CSV = PROJECT_ROOT / "configs" / "nt_tasks.csv"  # benchmark, task, display, train, test, classes, seq_len
INITS = ("pretrained", "scratch")


@dataclass
class TaskInfo:
    name: str  # folder name on the hub, e.g. promoter_all
    display: str  # name in the published tables, e.g. Promoters
    train: int | None  # published record counts (None = unknown: local tasks, the original benchmark)
    test: int | None
    classes: int | None  # None = read from the train labels (local tasks)


def task_table(benchmark: str) -> dict[str, TaskInfo]:
    def num(s):
        return int(s) if s else None

    return {r["task"]: TaskInfo(r["task"], r["display"], num(r["train"]), num(r["test"]), num(r["classes"]))
            for r in read_commented_csv(TASKS_CSV) if r["benchmark"] == benchmark}


# -----------------------------------------------------------------------------
# demo tasks: NT-format files made here, deterministically, so the demo preset needs no download


# -----------------------------------------------------------------------------
# NT task files: FASTA, header `name|…|label`, the label is the integer after the last '|'


def load_task_file(path: Path, num_classes: int | None = None) -> tuple[list[str], np.ndarray]:
    """-> (upper-cased sequences, int64 labels). Any problem is a one-line UserError naming file:line."""
    if not path.is_file():
        raise UserError(f"{path}: task file not found")
    seqs, labels = [], []
    for rec in read_fasta(path):
        where = f"{path}:{rec.line}"
        if "|" not in rec.header:
            raise UserError(f"{where}: header {rec.header[:60]!r} has no '|label' at its end (expected name|…|label)")
        text = rec.header.rsplit("|", 1)[1].strip()
        try:
            label = int(text)
        except ValueError:
            raise UserError(f"{where}: label {text!r} is not an integer (header {rec.header[:60]!r})")
        if label < 0 or (num_classes is not None and label >= num_classes):
            raise UserError(f"{where}: label {label} is outside the task's classes 0..{(num_classes or 1) - 1}")
        if not rec.sequence:
            raise UserError(f"{where}: record {rec.header[:60]!r} has an empty sequence")
        seqs.append(rec.sequence.upper())  # NT files are upper case; the tokenizers are trained on upper case
        labels.append(label)
    if not seqs:
        raise UserError(f"{path}: no FASTA records (empty file?)")
    return seqs, np.array(labels, dtype=np.int64)


def load_task(task_dir: Path, info: TaskInfo) -> dict:
    """Both splits of one task, checked against each other and against the published counts."""
    train_x, train_y = load_task_file(task_dir / "train.fna", info.classes)
    classes = info.classes or int(train_y.max()) + 1  # local task: the train labels define the classes
    if classes < 2:
        raise UserError(f"{task_dir / 'train.fna'}: every label is 0; a task needs at least 2 classes")
    test_x, test_y = load_task_file(task_dir / "test.fna", classes)
    for split, n, expected in (("train", len(train_y), info.train), ("test", len(test_y), info.test)):
        if expected is not None and n != expected:
            raise UserError(f"{task_dir / f'{split}.fna'}: {n:,} records, the benchmark has {expected:,} "
                            f"(truncated or wrong file? delete it to download again)")
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y, "classes": classes}


# -----------------------------------------------------------------------------
# the hub: https://huggingface.co/datasets/InstaDeepAI/<repo>/resolve/<revision>/<task>/<split>.fna


def fetch_task(base_url: str, repo: str, revision: str, task: str, dest: Path) -> None:
    """Download <task>/{train,test}.fna into dest unless there; resume, retries and the size check
    are common.download's (a transfer that stops early resumes with a Range request)."""
    for split in ("train", "test"):
        path = dest / f"{split}.fna"
        if not path.is_file():
            download(f"{base_url.rstrip('/')}/{repo}/resolve/{revision}/{task}/{split}.fna", path)


# -----------------------------------------------------------------------------
# tokenisation, batching, metrics


def encode(tok, seqs: list[str], max_len: int) -> tuple[list[list[int]], int]:
    """Token ids with the tokenizer's own wrapping (<s> … </s>); sequences longer than the model's
    max_seq_len keep their first max_len - 1 tokens + the closing token. -> (ids, number truncated)."""
    ids, truncated = [], 0
    for enc in tok.encode_batch(seqs):
        x = enc.ids
        if len(x) > max_len:
            x, truncated = x[:max_len - 1] + x[-1:], truncated + 1
        ids.append(x)
    return ids, truncated


def collate(ids: list[list[int]], rows, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic padding: pad to the longest sequence of this batch only. -> input_ids, mask (B, T)."""
    T = max(len(ids[i]) for i in rows)
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)
    for r, i in enumerate(rows):
        x[r, :len(ids[i])] = torch.tensor(ids[i])
    mask = torch.zeros_like(x, dtype=torch.bool)
    for r, i in enumerate(rows):
        mask[r, :len(ids[i])] = True
    return x, mask


@torch.no_grad()
def predict(model, ids: list[list[int]], pad_id: int, batch_size: int, device: str, autocast) -> np.ndarray:
    """Class predictions for EVERY sequence, in order: the last batch may be short, nothing is dropped."""
    model.eval()
    preds = []
    for start in range(0, len(ids), batch_size):
        x, mask = collate(ids, range(start, min(start + batch_size, len(ids))), pad_id)
        with autocast():
            logits, _ = model(x.to(device), mask.to(device))
        preds.append(logits.argmax(-1).cpu().numpy())
    model.train()
    out = np.concatenate(preds)
    assert len(out) == len(ids), (len(out), len(ids))
    return out


def scores(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> dict:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    return {
        "mcc": float(matthews_corrcoef(y_true, y_pred)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # binary: F1 of class 1 (the positive class of every binary NT task); multi-class: macro F1
        "f1": float(f1_score(y_true, y_pred, average="binary" if classes == 2 else "macro",
                             labels=None if classes == 2 else list(range(classes)), zero_division=0)),
    }


def run_seed(base_seed: int, task: str, k: int) -> int:
    """One seed per (task, seed index), shared by both inits so pretrained vs scratch is a paired
    comparison: same validation split, same head init, same batch order."""
    return (base_seed * 1_000_003 + zlib.crc32(task.encode()) + 7919 * k) % (2**31 - 1)


def main():
    cfg, flags = load_config(flags=("--dry-run",))
    ft = cfg.finetune
    dist = setup_distributed(cfg.run.device)
    rank, world = dist.rank, dist.size

    def log(*a):  # every rank's own runs matter under torchrun: prefix the rank
        print(*((f"[rank {rank}]",) if world > 1 else ()), *a, flush=True)

    # --- config checks
    if ft.benchmark not in ("revised", "original", "demo", "local"):
        raise UserError(f"finetune.benchmark = {ft.benchmark!r}: expected revised, original, demo or local", 2)
    bad = [i for i in ft.inits if i not in INITS]
    if bad or not ft.inits:
        raise UserError(f"finetune.inits = {ft.inits}: expected a non-empty list of {', '.join(INITS)}", 2)
    if ft.num_seeds < 1 or ft.batch_size < 1 or ft.max_steps < 1 or ft.eval_interval < 1:
        raise UserError("finetune.num_seeds, batch_size, max_steps and eval_interval must be >= 1", 2)
    if not 0 < ft.val_fraction < 1:
        raise UserError(f"finetune.val_fraction = {ft.val_fraction}: must be in (0, 1)", 2)
    if ft.precision not in ("auto", "fp32", "bf16"):
        raise UserError(f"finetune.precision = {ft.precision!r}: expected auto, fp32 or bf16", 2)

    # --- which tasks, where their files are
    table = task_table(ft.benchmark)
    tasks = list(ft.tasks) or list(table)
    if not tasks:
        raise UserError(f"finetune.benchmark = local needs --finetune.tasks=[...] (folders in {ft.data_dir})", 2)
    unknown = [t for t in tasks if ft.benchmark != "local" and t not in table]
    if unknown:
        raise UserError(f"unknown {ft.benchmark} task(s) {', '.join(unknown)}; valid: {', '.join(table)}", 2)
    data_root = Path(ft.data_dir) if ft.benchmark == "local" else Path(ft.data_dir) / ft.benchmark
    infos = {t: table.get(t, TaskInfo(t, t, None, None, None)) for t in tasks}

    # --- get the data: rank 0 downloads or generates, the others wait at a barrier. The barrier uses a
    # gloo group with a long timeout: a download, or (at the end) another rank's runs, may take hours.
    wait_group = None
    if dist.is_distributed:
        import torch.distributed as tdist
        wait_group = tdist.new_group(backend="gloo", timeout=timedelta(days=7))
    if dist.is_main:
        if ft.benchmark == "demo":
            if not all((data_root / t / s).is_file() for t in tasks for s in ("train.fna", "test.fna")):
                make_demo_tasks(data_root, cfg.run.seed, {t: (i.train, i.test) for t, i in task_table("demo").items()})
                print0(f"wrote the synthetic demo tasks to {data_root}")
        elif ft.benchmark in BENCHMARKS:
            bm = BENCHMARKS[ft.benchmark]
            revision = ft.revision or bm["revision"]
            for t in tasks:
                fetch_task(ft.base_url, bm["repo"], revision, t, data_root / t)
            print0(f"benchmark: {bm['repo']} at revision {revision} in {data_root}")
    if wait_group is not None:
        torch.distributed.barrier(group=wait_group)

    # --- tokenizer and pretrained weights (hashed: they are part of every run's identity)
    out = cfg.out_dir / "finetune"
    tok_path = cfg.out_dir / "tokenizer.json"
    tok, special = load_tokenizer(tok_path, cfg.model)
    tok_sha = file_hash(tok_path)
    pretrained_path = Path(ft.pretrained) if ft.pretrained else cfg.out_dir / "final" / "model.pt"
    weights_sha = None
    if "pretrained" in ft.inits:
        if not pretrained_path.is_file():
            raise UserError(f"{pretrained_path}: pretrained weights not found (run 03_pretrain.py first, "
                            f"or fine-tune from scratch only: --finetune.inits=[scratch])")
        weights_sha = file_hash(pretrained_path)

    # --- the plan: every (task, init, seed); a run is done when its metrics.json has the same hash
    recipe = {k: v for k, v in asdict(ft).items()
              if k not in ("benchmark", "base_url", "revision", "data_dir", "pretrained", "tasks", "inits", "num_seeds")}
    data_sha = {t: {s: file_hash(data_root / t / f"{s}.fna") for s in ("train", "test")}
                for t in tasks if (data_root / t / "train.fna").is_file()}
    missing = [t for t in tasks if t not in data_sha]
    if missing:
        raise UserError(f"{data_root / missing[0] / 'train.fna'}: task file not found")

    def config_hash(task, init, k):
        ident = {"recipe": recipe, "model": asdict(cfg.model), "seed": cfg.run.seed, "task": task, "init": init,
                 "k": k, "tokenizer": tok_sha, "data": data_sha[task], "weights": weights_sha if init == "pretrained" else None}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def run_dir(task, init, k):
        return out / task / init / f"seed-{k}"

    def is_done(task, init, k):
        p = run_dir(task, init, k) / "metrics.json"
        try:
            return json.loads(p.read_text()).get("config_hash") == config_hash(task, init, k)
        except (OSError, ValueError):
            return False

    runs = [(t, i, k) for t in tasks for i in ft.inits for k in range(ft.num_seeds)]
    todo = [r for r in runs if not is_done(*r)]
    print0(f"{len(runs):,} runs ({len(tasks)} tasks x {len(ft.inits)} inits x {ft.num_seeds} seeds): "
           f"{len(runs) - len(todo):,} finished (skipped), {len(todo):,} to do"
           + (f", shared by {world} ranks" if world > 1 else ""))
    if "--dry-run" in flags:
        for t in tasks:  # parse and check every task file now, so --dry-run validates the data
            d = load_task(data_root / t, infos[t])
            print0(f"  {t}: {len(d['train_y']):,} train / {len(d['test_y']):,} test, {d['classes']} classes")
        teardown_distributed()
        return
    if dist.is_main:
        save_config(cfg, out)

    # Under torchrun the ranks split the runs, round-robin; every run is an ordinary single-process
    # fine-tune on its rank's device, so a run's result does not depend on the number of ranks, and
    # no gradient traffic is needed. (Sharding each run with DDP would only help a single huge task.)
    mine = todo[rank::world]
    device = dist.device
    use_bf16 = ft.precision == "bf16" or (ft.precision == "auto" and device.startswith("cuda"))

    def autocast():
        return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=use_bf16)

    pretrained_sd = None
    if "pretrained" in {i for _, i, _ in mine}:
        try:
            pretrained_sd = torch.load(pretrained_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"{pretrained_path}: not a loadable state_dict ({str(e).splitlines()[0]})")

    loaded: dict[str, dict] = {}  # one task's data at a time (the runs are sorted by task)
    for n_run, (task, init, k) in enumerate(mine, start=1):
        if task not in loaded:
            loaded.clear()
            d = load_task(data_root / task, infos[task])
            d["train_ids"], n_tr = encode(tok, d["train_x"], cfg.model.max_seq_len)
            d["test_ids"], n_te = encode(tok, d["test_x"], cfg.model.max_seq_len)
            if n_tr or n_te:
                log(f"warning: {task}: {n_tr:,} of {len(d['train_ids']):,} train and {n_te:,} of "
                    f"{len(d['test_ids']):,} test sequences are longer than model.max_seq_len = "
                    f"{cfg.model.max_seq_len} tokens and were truncated")
            d["truncated"] = {"train": n_tr, "test": n_te}
            loaded[task] = d
        d = loaded[task]
        seed = run_seed(cfg.run.seed, task, k)

        # seeded stratified train/validation split (same for both inits of this seed)
        from sklearn.model_selection import train_test_split
        try:
            tr_idx, va_idx = train_test_split(np.arange(len(d["train_y"])), test_size=ft.val_fraction,
                                              random_state=seed, stratify=d["train_y"])
        except ValueError as e:
            raise UserError(f"{data_root / task / 'train.fna'}: cannot make a stratified validation split ({e})")
        va_ids = [d["train_ids"][i] for i in va_idx]
        va_y = d["train_y"][va_idx]

        # model: the same seed builds the same head (and, for scratch, the same encoder)
        torch.manual_seed(seed)
        model = SequenceClassifier(cfg.model, d["classes"], ft.classifier_dropout)
        if init == "pretrained":
            try:
                model.load_encoder_from_mlm(pretrained_sd)
            except (RuntimeError, ValueError) as e:
                raise UserError(f"{pretrained_path}: does not fit the [model] config ({str(e).splitlines()[0][:200]})")
        model.to(device)
        opt = configure_optimizer(model, ft, device)  # AdamW, no decay on biases and norms (as 03)

        # training: an endless stream of seeded shuffles of the train rows
        rng = np.random.default_rng(seed)
        stream, pos = rng.permutation(tr_idx), 0
        best = {"mcc": -2.0, "step": 0, "state": None}
        history = []
        t0 = time.time()
        model.train()
        bar = tqdm(range(ft.max_steps), desc=f"{task}/{init}/seed-{k} ({n_run}/{len(mine)})", leave=False,
                   disable=not dist.is_main, mininterval=2)
        loss_sum, loss_n = 0.0, 0
        for step in bar:
            if pos + ft.batch_size > len(stream):
                stream, pos = np.concatenate([stream[pos:], rng.permutation(tr_idx)]), 0
            rows, pos = stream[pos:pos + ft.batch_size], pos + ft.batch_size
            x, mask = collate(d["train_ids"], rows, special.pad)
            y = torch.from_numpy(d["train_y"][rows])
            for g in opt.param_groups:
                g["lr"] = lr_at(step, ft)
            with autocast():
                logits, _ = model(x.to(device), mask.to(device))
            loss = F.cross_entropy(logits.float(), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if ft.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), ft.grad_clip)
            opt.step()
            loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
            if (step + 1) % ft.eval_interval == 0 or step + 1 == ft.max_steps:
                val = scores(va_y, predict(model, va_ids, special.pad, 2 * ft.batch_size, device, autocast), d["classes"])
                history.append({"step": step + 1, "train_loss": round(loss_sum / loss_n, 5), "val_mcc": round(val["mcc"], 5)})
                loss_sum, loss_n = 0.0, 0
                if val["mcc"] > best["mcc"]:  # strictly better: ties keep the earlier step
                    best = {"mcc": val["mcc"], "step": step + 1,
                            "state": {n: t.detach().to("cpu", copy=True) for n, t in model.state_dict().items()}}
                bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", val_mcc=f"{val['mcc']:.3f}")
        bar.close()

        # the best validation weights score the whole test split
        model.load_state_dict(best["state"])
        test_pred = predict(model, d["test_ids"], special.pad, 2 * ft.batch_size, device, autocast)
        test = scores(d["test_y"], test_pred, d["classes"])
        metrics = {
            "task": task, "init": init, "seed": k, "run_seed": seed, "config_hash": config_hash(task, init, k),
            "best_step": best["step"], "val_mcc": best["mcc"], "test_mcc": test["mcc"],
            "test_accuracy": test["accuracy"], "test_f1": test["f1"], "n_test": int(len(test_pred)),
            "n_train": int(len(tr_idx)), "n_val": int(len(va_idx)), "classes": d["classes"],
            "truncated": d["truncated"], "seconds": round(time.time() - t0, 1), "history": history,
        }
        write_json(run_dir(task, init, k) / "metrics.json", metrics)
        log(f"{task:<24} {init:<10} seed {k}: best step {best['step']:,}  val MCC {best['mcc']:.4f}  "
            f"test MCC {test['mcc']:.4f}  ({len(test_pred):,} test sequences, {metrics['seconds']:.0f} s)")
        del model, opt, best

    # --- rank 0 assembles the table once every rank is done
    if wait_group is not None:
        torch.distributed.barrier(group=wait_group)
    if dist.is_main:
        rows = [json.loads((run_dir(*r) / "metrics.json").read_text()) for r in runs]
        write_results(out, rows, tasks, infos, ft.inits)
    teardown_distributed()


# -----------------------------------------------------------------------------
# the outputs: results.csv, results.md, mcc.png


if __name__ == "__main__":
    run_main(main)
