"""04's unit of work, a run: one (task, init, label budget, seed index). Plan() gets the task files and inits ready
and hashes each run's inputs; Plan.todo() hands this process its share of the unfinished runs, each with its task
tokenized by its init's tokenizer. Under torchrun the ranks share out the runs, one process on one device each, so
a result does not depend on the number of ranks."""

import hashlib
import json
from collections import namedtuple
from dataclasses import asdict
from datetime import timedelta
from itertools import product
from pathlib import Path
from typing import Iterator

import torch

from shelf import hf_hub
from shelf.checkpoint import load_final_weights
from shelf.demo_data import make_demo_tasks
from shelf.distributed import World, print0
from shelf.errors import UserError
from shelf.files import file_hash
from shelf.nt_tasks import BENCHMARKS, TaskData, TaskInfo, fetch_task, load_task, task_table
from shelf.tokens import load_tokenizer

# [finetune] keys that decide no run's result: where the files come from (their contents are hashed instead) and
# which runs there are (each run's own task, init, budget and seed index are in its hash)
NOT_IN_HASH = ("benchmark", "base_url", "revision", "data_dir", "pretrained", "tasks", "inits", "hub_url", "hf_dir",
               "train_sizes", "num_seeds")

# how an init's runs start: name ("pretrained" | "scratch" | "hf:<org>/<name>@<commit>"), encoder shape (ModelConfig),
# tokenizer, pad id, weights (a MaskedLM state_dict; None: a random encoder), sha256 of its tokenizer and weights files
Init = namedtuple("Init", "name model tok pad_id weights hashes")
# a task's sequences as one init's token ids: the tokenizer, train and test ids, split -> how many were cut to fit
TokenIds = namedtuple("TokenIds", "tok train test truncated")
# a run: task, init, label budget (0 = all labels), seed index, hash of all that decides its result, name, folder
Run = namedtuple("Run", "task init train_size seed config_hash name dir")
# a run to do, with all it starts from; progress: "<run name> (n/N)", this rank's n-th of N
Job = namedtuple("Job", "run init data ids progress")


def recorded_hash(run: Run) -> str | None:
    """The config_hash its metrics.json records (written last, atomically): the run is finished if it is its own."""
    try:
        return json.loads((run.dir / "metrics.json").read_text()).get("config_hash")
    except (OSError, ValueError):
        return None


def tokenize(data: TaskData, init: Init) -> TokenIds:
    """Both splits as init's token ids (<s> … </s>); one over model.max_seq_len keeps its first n - 1 and its last."""
    n = init.model.max_seq_len
    ids = [[enc.ids for enc in init.tok.encode_batch(seqs)] for seqs in (data.train_x, data.test_x)]
    truncated = {split: sum(len(x) > n for x in xs) for split, xs in zip(("train", "test"), ids)}
    train, test = ([x[:n - 1] + x[-1:] if len(x) > n else x for x in xs] for xs in ids)
    return TokenIds(init.tok, train, test, truncated)


def get_data(cfg, tasks: dict, data_root: Path) -> None:
    """Make the demo tasks or download the benchmark's (local tasks are the user's own files), and hf: inits."""
    ft = cfg.finetune
    if ft.benchmark == "demo" and not all((data_root / t / f"{split}.fna").is_file() for t in tasks
                                          for split in ("train", "test")):
        make_demo_tasks(data_root, cfg.run.seed, {t: (i.train, i.test) for t, i in task_table("demo").items()})
        print0(f"wrote the synthetic demo tasks to {data_root}")
    elif ft.benchmark in BENCHMARKS:
        repo = BENCHMARKS[ft.benchmark]["repo"]
        revision = ft.revision or BENCHMARKS[ft.benchmark]["revision"]
        for task in tasks:
            fetch_task(ft.base_url, repo, revision, task, data_root / task)
        print0(f"benchmark: {repo} at revision {revision} in {data_root}")
    for init in [i for i in ft.inits if i.startswith("hf:")]:  # published checkpoints, also by rank 0 alone
        hf_hub.fetch(ft.hub_url, ft.hf_dir, init)


def load_inits(cfg) -> dict[str, Init]:
    """-> each init's Init: an hf: init's from its download; pretrained and scratch share the run's tokenizer."""
    ft = cfg.finetune
    inits = {i: Init(i, *hf_hub.load(hf_hub.checkpoint_dir(ft.hf_dir, i)), {}) for i in ft.inits if i.startswith("hf:")}
    if not {"pretrained", "scratch"} & set(ft.inits):
        return inits  # published checkpoints only: no run of 02/03 needed
    tok_path = cfg.out_dir / "tokenizer.json"
    tok, special = load_tokenizer(tok_path, cfg.model)
    hashes = {"tokenizer": file_hash(tok_path), "weights": None}
    inits["scratch"] = Init("scratch", cfg.model, tok, special.pad, None, hashes)
    if "pretrained" in ft.inits:
        weights_path = Path(ft.pretrained) if ft.pretrained else cfg.out_dir / "final" / "model.pt"
        if not weights_path.is_file():
            raise UserError(f"{weights_path}: pretrained weights not found (run 03_pretrain.py first, "
                            f"or fine-tune from scratch only: --finetune.inits=[scratch])")
        weights = load_final_weights(weights_path, hashes["tokenizer"])  # refused if trained with another tokenizer
        hashes = hashes | {"weights": file_hash(weights_path)}
        inits["pretrained"] = Init("pretrained", cfg.model, tok, special.pad, weights, hashes)
    return inits


class Plan:
    """The tasks, their files and the inits made ready (by rank 0, while the others wait), then every run of the config
    with its hash: a run is finished when its metrics.json (written last, atomically) records the same hash."""

    def __init__(self, cfg, world: World):
        ft = cfg.finetune
        self.world = world
        table = task_table(ft.benchmark)
        tasks = list(ft.tasks) or list(table)  # default: all of the benchmark's
        if not tasks:
            raise UserError(f"finetune.benchmark = local needs --finetune.tasks=[...] (folders in {ft.data_dir})", 2)
        if unknown := [t for t in tasks if ft.benchmark != "local" and t not in table]:
            raise UserError(f"unknown {ft.benchmark} task(s) {', '.join(unknown)}; valid: {', '.join(table)}", 2)
        self.tasks = {t: table.get(t, TaskInfo(t, None, None, None)) for t in tasks}  # in order -> published facts
        self.data_root = Path(ft.data_dir) if ft.benchmark == "local" else Path(ft.data_dir) / ft.benchmark
        if world.is_distributed:  # a gloo group that waits up to a week (nccl's default is 10 minutes)
            self.group = torch.distributed.new_group(backend="gloo", timeout=timedelta(days=7))
        if world.is_main:
            get_data(cfg, self.tasks, self.data_root)
        self.wait_for_all_ranks()
        self.inits = load_inits(cfg)
        recipe = {k: v for k, v in asdict(ft).items() if k not in NOT_IN_HASH}
        self.runs = []  # sorted by task, then init: a rank loads and tokenizes each task once per init
        for task in self.tasks:  # a missing task file: run_main's one line "<path>: No such file or directory"
            task_files = {split: file_hash(self.data_root / task / f"{split}.fna") for split in ("train", "test")}
            for init, size, k in product(ft.inits, ft.train_sizes, range(ft.num_seeds)):
                ident = {"recipe": recipe, "seed": cfg.run.seed, "task": task, "task_files": task_files, "init": init,
                         "model": asdict(self.inits[init].model), **self.inits[init].hashes, "train_size": size,
                         "seed_index": k}
                run_hash = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
                folder = init.replace(":", "-").replace("/", "--")  # hf:org/name@commit -> hf-org--name@commit
                name = f"{task}/{folder}/labels-{size or 'all'}/seed-{k}"
                self.runs.append(Run(task, init, size, k, run_hash, name, cfg.out_dir / "finetune" / name))
        self.unfinished = [run for run in self.runs if recorded_hash(run) != run.config_hash]
        print0(f"{len(self.runs):,} runs ({len(self.tasks)} tasks x {len(ft.inits)} inits x {len(ft.train_sizes)} "
               f"label budgets x {ft.num_seeds} seeds): {len(self.runs) - len(self.unfinished):,} finished (skipped), "
               f"{len(self.unfinished):,} to do" + (f", shared by {world.size} ranks" if world.is_distributed else ""))

    def wait_for_all_ranks(self) -> None:
        if self.world.is_distributed:
            torch.distributed.barrier(group=self.group)

    def log(self, text: str) -> None:
        prefix = f"[rank {self.world.rank}] " if self.world.is_distributed else ""
        print(prefix + text, flush=True)

    def todo(self) -> Iterator[Job]:
        """This rank's share of the unfinished runs, as Jobs; then waits for every rank's."""
        mine = self.unfinished[self.world.rank::self.world.size]
        data = ids = None  # the task in memory, tokenized by the last run's init
        for n, run in enumerate(mine, start=1):
            init = self.inits[run.init]
            if data is None or data.folder.name != run.task or ids.tok is not init.tok:
                data = load_task(self.data_root / run.task, self.tasks[run.task])
                ids = tokenize(data, init)
                if any(ids.truncated.values()):
                    self.log(f"warning: {run.task}: {ids.truncated['train']:,} of {len(data.train_y):,} train and "
                             f"{ids.truncated['test']:,} of {len(data.test_y):,} test sequences are longer than "
                             f"model.max_seq_len = {init.model.max_seq_len} tokens and were truncated")
            yield Job(run, init, data, ids, f"{run.name} ({n}/{len(mine)})")
        self.wait_for_all_ranks()
