"""
Masked-language-model pretraining: one process, DDP or FSDP2 under torchrun, exact resume.

Reads <run dir>/tokenizer.json and tokens/{train,val}.bin + meta.json (02_train_tokenizer.py); writes
checkpoints/step-N/, pretrain_log.csv, loss.png, config.toml and final/model.pt (04 reads it).

    python 03_pretrain.py --config configs/demo.toml                 # one process: CPU or one GPU
    torchrun --standalone --nproc_per_node=2 03_pretrain.py          # tinydnabert: DDP on 2 GPUs
    torchrun --nnodes=32 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=$HOST:29500 \\
        03_pretrain.py --config configs/dnafm_7b.toml                # FSDP2 (its preset: parallel = "fsdp")
    python 03_pretrain.py --config configs/dnafm_7b.toml --dry-run   # memory plan, FLOPs, run time; no GPU needed
    ... --resume                                                     # continue from the latest complete checkpoint
    ... --restart                                                    # discard an earlier run's checkpoints, start over

One optimizer step (global batch = batch_size x grad_accum x world_size blocks of seq_len tokens):
  data    packed blocks of the flat uint16 token stream (segments joined by their special tokens, no
          padding), visited in a seeded random order per epoch; rank r reads its own rows of each
          global micro-batch. The position (epoch, index) is saved in every checkpoint.
  mask    15% of non-special tokens: 80% -> <mask>, 10% -> a random token, 10% kept, re-drawn every
          step. The noise is drawn for the whole global batch from a generator seeded by (seed, step),
          so it is a pure function of the step: the same on 1 or N ranks, and nothing to save.
  loss    cross-entropy at the masked positions, averaged over every masked token of the global batch
          (so DDP, FSDP and gradient accumulation give the single-process gradient).
  update  AdamW (no decay on biases and norms), lr a pure function of the step (linear warm-up, linear
          decay to min_lr), gradient clipping.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from tqdm import tqdm

import model as modeling
from model import configure_optimizer, lr_at
from shelf.checkpoint import atomic_torch_save, complete_checkpoints, load_checkpoint, save_checkpoint
from shelf.config import Config, load_config, save_config
from shelf.distributed import World, parallelize, print0, setup_distributed, teardown_distributed
from shelf.dry_run import dry_run, gpu_spec
from shelf.errors import ConfigError, UserError, run_main
from shelf.files import atomic_write
from shelf.plots import plot_losses
from shelf.tokens import load_tokenizer, read_token_meta


def check_config(cfg: Config) -> None:
    pc = cfg.pretrain
    if pc.parallel not in ("ddp", "fsdp"):
        raise ConfigError(f"pretrain.parallel = '{pc.parallel}': expected 'ddp' or 'fsdp'")
    if pc.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"pretrain.precision = '{pc.precision}': expected 'auto', 'fp32' or 'bf16'")
    if pc.seq_len > cfg.model.max_seq_len:
        raise ConfigError(f"pretrain.seq_len = {pc.seq_len} > model.max_seq_len = {cfg.model.max_seq_len}")
    for key in ("seq_len", "batch_size", "grad_accum", "max_steps", "log_interval", "eval_interval",
                "eval_batches", "ckpt_interval", "keep_checkpoints", "dry_run_gpus"):
        if getattr(pc, key) < 1:
            raise ConfigError(f"pretrain.{key} = {getattr(pc, key)}: must be at least 1")
    if not 0 <= pc.warmup_steps <= pc.max_steps:
        raise ConfigError(f"pretrain.warmup_steps = {pc.warmup_steps}: must be in [0, max_steps = {pc.max_steps}]")
    if not 0 < pc.mask_prob < 1:
        raise ConfigError(f"pretrain.mask_prob = {pc.mask_prob}: must be in (0, 1)")


# -----------------------------------------------------------------------------
# --dry-run: what a run needs per GPU and how long it takes, from the config alone (meta device)


# -----------------------------------------------------------------------------
# data: packed blocks from the flat uint16 token file, and MLM masking


class BlockStream:
    """A token file cut into n_blocks consecutive blocks of seq_len tokens (packing: a block may span
    segments; each segment carries its own special tokens). take(n) returns the next n block ids in a
    seeded random order; a new epoch (new order) starts when fewer than n remain. (epoch, index) is all
    the state: the order is a pure function of (seed, epoch)."""

    def __init__(self, path: Path, seq_len: int, seed: int):
        tokens = np.memmap(path, dtype=np.uint16, mode="r")
        self.n_blocks = len(tokens) // seq_len
        self.blocks = tokens[: self.n_blocks * seq_len].reshape(self.n_blocks, seq_len)  # (N, T) view, nothing read
        self.seed, self.epoch, self.index = seed, 0, 0
        self._order: tuple[int, np.ndarray] | None = None

    def order(self) -> np.ndarray:
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, np.random.default_rng([self.seed, self.epoch]).permutation(self.n_blocks))
        return self._order[1]

    def take(self, n: int) -> np.ndarray:
        if self.index + n > self.n_blocks:
            self.epoch, self.index = self.epoch + 1, 0
        ids = self.order()[self.index: self.index + n]
        self.index += n
        return ids

    def read(self, ids: np.ndarray, device: torch.device) -> torch.Tensor:
        """(len(ids), T) int64 on device. A fancy-indexed read of the memmap (a copy of just these rows),
        pinned and copied asynchronously on CUDA."""
        x = torch.from_numpy(self.blocks[ids].astype(np.int64))
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True)
        return x


def seed_for(*keys: int) -> int:
    """A 63-bit seed for one independent random stream, e.g. seed_for(seed, 0, step)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, np.uint64)[0] >> np.uint64(1))


class Masker:
    """BERT's MLM corruption, vectorised on the device. Each call draws the noise for a global batch of
    `global_rows` rows from a generator seeded with `seed`, and applies this rank's `rows` of it, so
    every rank (and a single process holding all rows) sees the same masks for the same rows."""

    def __init__(self, table_size: int, vocab_size: int, special_ids: list[int], mask_id: int, mask_prob: float,
                 device: torch.device):
        self.is_special = torch.zeros(table_size, dtype=torch.bool, device=device)
        self.is_special[special_ids] = True
        # random replacements: any real (non-special) token of the tokenizer
        self.regular = torch.tensor([i for i in range(vocab_size) if i not in set(special_ids)], device=device)
        self.mask_id, self.mask_prob, self.device = mask_id, mask_prob, device
        self.gen = torch.Generator(device=device)

    def __call__(self, ids: torch.Tensor, seed: int, global_rows: int,
                 rows: slice | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, T), the rows `rows` (a slice or index tensor) of a global batch of `global_rows` rows
        -> inputs (B, T) corrupted, labels (B, T) = original id at the targets, -100 elsewhere."""
        self.gen.manual_seed(seed)
        shape = (global_rows, ids.shape[1])
        u = torch.rand(shape, generator=self.gen, device=self.device)[rows]  # (B, T) uniform [0, 1)
        rnd = torch.randint(len(self.regular), shape, generator=self.gen, device=self.device)[rows]
        target = (u < self.mask_prob) & ~self.is_special[ids]
        labels = ids.masked_fill(~target, -100)
        r = u / self.mask_prob  # uniform [0, 1) again at the targets: splits them 80 / 10 / 10
        inputs = torch.where(target & (r < 0.8), self.mask_id, ids)
        inputs = torch.where(target & (r >= 0.8) & (r < 0.9), self.regular[rnd], inputs)
        return inputs, labels


# -----------------------------------------------------------------------------
# model: build (maybe on the meta device), then activation checkpointing -> per-block compile ->
# FSDP2 or DDP, torchtitan's order


# -----------------------------------------------------------------------------
# one training step: this rank's share of the global batch, forward + backward, clip


def get_batch(stream: BlockStream, masker: Masker, step: int, pc, d: World,
              seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's rows of step `step`'s global batch, masked: inputs, labels (grad_accum * B, T) on the device.
    The global batch is grad_accum micro-batches of world_size x batch_size rows; the rank reads its
    batch_size rows of each. The mask noise is drawn for the whole global batch (seeded by the step), so
    the result does not depend on how the batch is split over ranks and micro-batches."""
    rows_micro = pc.batch_size * d.size
    mine = slice(d.rank * pc.batch_size, (d.rank + 1) * pc.batch_size)
    ids = np.concatenate([stream.take(rows_micro)[mine] for _ in range(pc.grad_accum)])  # (accum * B,) block ids
    rows = torch.arange(pc.grad_accum * rows_micro).view(pc.grad_accum, rows_micro)[:, mine].flatten()
    device = masker.device
    return masker(stream.read(ids, device), seed_for(seed, 0, step), pc.grad_accum * rows_micro, rows.to(device))


def forward_backward(model, inputs: torch.Tensor, labels: torch.Tensor, pc, d: World,
                     autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulate the gradient of the global batch's mean MLM loss over grad_accum micro-batches, then clip.
    Returns (loss, grad norm before clipping) as device tensors: no host sync here."""
    sharded = hasattr(model, "set_requires_gradient_sync")  # an FSDP2 module
    n_targets = (labels != -100).sum().double()
    if d.is_distributed:
        dist.all_reduce(n_targets)  # masked tokens in the whole global batch
    n_targets.clamp_(min=1)
    loss_sum = torch.zeros((), dtype=torch.float64, device=inputs.device)
    micro_batches = list(zip(inputs.split(pc.batch_size), labels.split(pc.batch_size)))
    for micro, (x, y) in enumerate(micro_batches):
        last = micro == len(micro_batches) - 1
        if sharded:  # reduce-scatter the gradients after the last micro-batch only
            model.set_requires_gradient_sync(last)
        no_sync = d.is_distributed and not sharded and not last  # DDP: all-reduce after the last only
        with model.no_sync() if no_sync else contextlib.nullcontext():
            with autocast:
                _, loss = model(x, labels=y)  # mean CE over this micro-batch's targets
            n = (y != -100).sum()
            # DDP / FSDP average gradients over ranks, hence x world_size: the sum over ranks and micro-batches
            # is the gradient of (sum of CE over all targets of the global batch) / (their number)
            (loss * (n * d.size / n_targets).float()).backward()
        loss_sum += loss.detach().double() * n
    if d.is_distributed:
        dist.all_reduce(loss_sum)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), pc.grad_clip if pc.grad_clip > 0 else math.inf)
    if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
        grad_norm = grad_norm.full_tensor()
    return loss_sum / n_targets, grad_norm.double()


# -----------------------------------------------------------------------------
# checkpoints: checkpoints/step-N/ appears by renaming a finished step-N.tmp/, so a crash mid-write
# leaves the older checkpoints as they were; --resume takes the highest complete step-N.


# -----------------------------------------------------------------------------
# validation: a fixed subset of val blocks with fixed masks, so every evaluation scores the same task


@torch.no_grad()
def evaluate(net, stream: BlockStream, eval_ids: np.ndarray, masker: Masker, rows_per_rank: int, seed: int,
             d: World, autocast, vocab_size: int) -> tuple[float, float, float]:
    """-> (MLM loss, masked-token accuracy, accuracy of always guessing the most frequent target)."""
    net.eval()
    device = torch.device(d.device)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, targets
    counts = torch.zeros(vocab_size, dtype=torch.float64, device=device)  # target histogram
    chunk = rows_per_rank * d.size
    for i, start in enumerate(range(0, len(eval_ids), chunk)):
        ids = eval_ids[start: start + chunk]  # len is a multiple of world_size
        per_rank = len(ids) // d.size
        rows = slice(d.rank * per_rank, (d.rank + 1) * per_rank)
        inputs, labels = masker(stream.read(ids[rows], device), seed_for(seed, 1, i), len(ids), rows)
        with autocast:
            logits, loss = net(inputs, labels=labels)
        targets = labels[labels != -100]
        totals += torch.stack([loss.double() * len(targets), (logits.argmax(-1) == targets).sum().double(),
                               torch.tensor(len(targets), dtype=torch.float64, device=device)])
        counts += torch.bincount(targets, minlength=vocab_size)[:vocab_size].double()
    if d.is_distributed:
        dist.all_reduce(totals)
        dist.all_reduce(counts)
    net.train()
    n = max(totals[2].item(), 1.0)
    return totals[0].item() / n, totals[1].item() / n, counts.max().item() / n


# -----------------------------------------------------------------------------
# log: pretrain_log.csv (one row per log step and per evaluation) and loss.png

LOG_COLUMNS = ["step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "mem_gb",
               "val_loss", "val_acc", "val_const_acc"]


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # CPU: peak resident set (KB on Linux)


# -----------------------------------------------------------------------------


def main() -> None:
    cfg, flags = load_config(flags=("--resume", "--restart", "--dry-run"))
    check_config(cfg)
    if "--dry-run" in flags:
        dry_run(cfg)
        return
    d = setup_distributed(cfg.run.device)
    try:
        pretrain(cfg, d, resume="--resume" in flags, restart="--restart" in flags)
    finally:
        teardown_distributed()


def pretrain(cfg: Config, d: World, resume: bool, restart: bool = False) -> None:
    pc, seed = cfg.pretrain, cfg.run.seed
    out = cfg.out_dir
    device = torch.device(d.device)
    sharded = pc.parallel == "fsdp" and d.is_distributed
    bf16 = pc.precision == "bf16" or (pc.precision == "auto" and device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls (precision = "fp32") on tensor cores
        torch.backends.cudnn.allow_tf32 = True

    # ---- tokenizer and token files (02's outputs), checked against each other and the model
    _, special = load_tokenizer(out / "tokenizer.json", cfg.model)
    meta = read_token_meta(out / "tokens", out / "tokenizer.json")  # refuses token files of another tokenizer
    train = BlockStream(out / "tokens" / "train.bin", pc.seq_len, seed)
    val = BlockStream(out / "tokens" / "val.bin", pc.seq_len, seed)
    rows_step = pc.batch_size * d.size  # rows of one global micro-batch
    if train.n_blocks < rows_step:
        raise UserError(f"{out / 'tokens' / 'train.bin'}: {train.n_blocks:,} blocks of {pc.seq_len} tokens, fewer "
                        f"than one global micro-batch ({pc.batch_size} x {d.size} ranks); "
                        "lower pretrain.batch_size")
    if val.n_blocks < d.size:
        raise UserError(f"{out / 'tokens' / 'val.bin'}: {val.n_blocks} blocks of {pc.seq_len} tokens; need at least "
                        f"{d.size}: lower pretrain.seq_len or hold out more validation data")
    n_eval = min(pc.eval_batches * rows_step, val.n_blocks) // d.size * d.size
    eval_ids = np.random.default_rng([seed, 2]).permutation(val.n_blocks)[:n_eval]  # the fixed validation subset
    special_ids = sorted(set(special.all) | set(meta["special_ids"]))
    masker = Masker(cfg.model.vocab_size, meta["vocab_size"], special_ids, meta["mask_id"], pc.mask_prob, device)

    # ---- model and optimizer; parallelize() initialises the weights from the seed, the same on every rank
    with torch.device("meta") if pc.meta_init else contextlib.nullcontext():
        net = modeling.MaskedLM(cfg.model)
    n_params = modeling.num_parameters(net)
    model = parallelize(net, cfg, d, bf16, seed)
    optimizer = configure_optimizer(model, pc, device)
    # bf16 autocast for single process / DDP; FSDP casts through its MixedPrecisionPolicy instead
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16 and not sharded
                else contextlib.nullcontext())
    torch.manual_seed(seed_for(seed, 2, d.rank))  # dropout: a different stream on every rank

    # ---- resume, or start fresh
    ckpt_dir = out / "checkpoints"
    log_path = out / "pretrain_log.csv"
    step, history = 0, []  # history: the log rows, for the plot
    latest = complete_checkpoints(ckpt_dir)[-1:] if ckpt_dir.is_dir() else []
    if resume and latest:
        extra = load_checkpoint(latest[0], model, optimizer, d, sharded)
        if extra["config"]["model"] != dataclasses.asdict(cfg.model):
            raise UserError(f"{latest[0]}: saved with a different [model] config than this run's; "
                            f"resume with the run's {out / 'config.toml'}")
        step = extra["step"]
        train.epoch, train.index = extra["data"]["epoch"], extra["data"]["index"]
        if log_path.is_file():  # drop rows logged after this checkpoint: the resumed run logs them again
            with open(log_path, newline="") as f:
                history = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        print0(f"resumed from {latest[0]} (step {step:,}, epoch {train.epoch}, block {train.index:,})")
    elif resume:
        print0(f"--resume: no checkpoint in {ckpt_dir}; starting from step 0")
    elif latest and not restart:  # never throw away days of training because a flag was forgotten
        raise UserError(f"{ckpt_dir} holds an earlier run's checkpoints (latest: {latest[0].name}); "
                        f"pass --resume to continue it or --restart to discard them")
    elif latest and d.is_main:
        print0(f"--restart: removing the checkpoints of an earlier run in {ckpt_dir}")
        shutil.rmtree(ckpt_dir)
        shutil.rmtree(out / "final", ignore_errors=True)
    if d.is_main:
        save_config(cfg, out)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        with atomic_write(log_path) as f:
            f.write(buf.getvalue())
        log_file = open(log_path, "a", newline="")
        log = csv.DictWriter(log_file, fieldnames=LOG_COLUMNS, lineterminator="\n")

    stop = min(pc.stop_at or pc.max_steps, pc.max_steps)
    tokens_step = pc.batch_size * pc.seq_len * pc.grad_accum * d.size
    flops_token = modeling.flops_per_token(cfg.model, pc.seq_len, head_fraction=pc.mask_prob)
    spec = gpu_spec(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    peak_flops = (pc.gpu_peak_tflops or (spec[0] if spec else 0.0)) * 1e12 * d.size
    print0(f"{cfg.run.name}: {n_params:,} parameters on {d.size} x {device.type}"
           f"{' (FSDP2)' if sharded else ' (DDP)' if d.is_distributed else ''}, {'bf16' if bf16 else 'fp32'}; "
           f"{tokens_step:,} tokens per step; train {train.n_blocks:,} blocks, validation subset {n_eval:,} blocks")

    # ---- the training loop
    def checkpoint_now() -> None:
        extra = {"step": step, "data": {"epoch": train.epoch, "index": train.index},
                 "config": dataclasses.asdict(cfg), "world_size": d.size}
        if d.is_main:  # the log up to here is durable together with the checkpoint
            log_file.flush()
            os.fsync(log_file.fileno())
        save_checkpoint(ckpt_dir, step, model, optimizer, extra, d, sharded, pc.keep_checkpoints)

    def log_row(**values) -> None:
        row = {k: values.get(k, "") for k in LOG_COLUMNS}
        history.append(row)
        log.writerow(row)
        log_file.flush()

    model.train()
    t_last, step_last, loss_window = time.perf_counter(), step, []
    with tqdm(total=pc.max_steps, initial=step, desc="pretrain", unit="step", disable=not d.is_main,
              dynamic_ncols=True) as bar:
        while step < stop:
            lr = lr_at(step, pc)
            for group in optimizer.param_groups:
                group["lr"] = lr
            inputs, labels = get_batch(train, masker, step, pc, d, seed)
            loss, grad_norm = forward_backward(model, inputs, labels, pc, d, autocast)
            loss_value, norm_value = torch.stack([loss, grad_norm]).tolist()  # the one host sync of the step
            if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
                good = complete_checkpoints(ckpt_dir)
                raise UserError(f"step {step + 1}: loss {loss_value} / grad norm {norm_value} is not finite; stopped "
                                f"before the update. Last good checkpoint: {good[-1] if good else 'none'} "
                                f"(lower pretrain.lr or raise warmup_steps, then --resume)")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            loss_window.append(loss_value)

            if step % pc.log_interval == 0 or step == stop:
                now = time.perf_counter()
                tok_s = (step - step_last) * tokens_step / (now - t_last)
                train_loss = sum(loss_window) / len(loss_window)  # mean over the steps since the last log line
                t_last, step_last, loss_window = now, step, []
                mfu = flops_token * tok_s / peak_flops if peak_flops else None
                mem = peak_memory_gb(device)
                if d.is_main:
                    log_row(step=step, tokens=step * tokens_step, loss=f"{train_loss:.8g}", lr=f"{lr:.6g}",
                            grad_norm=f"{norm_value:.6g}", tokens_per_s=f"{tok_s:.0f}",
                            mfu="" if mfu is None else f"{mfu:.4f}", mem_gb=f"{mem:.2f}")
                    bar.set_postfix(loss=f"{train_loss:.4f}")
                    bar.write(f"step {step:,}/{pc.max_steps:,} | loss {train_loss:.4f} | lr {lr:.2e} | grad norm "
                              f"{norm_value:.3f} | {tok_s:,.0f} tok/s | MFU {'n/a' if mfu is None else f'{mfu:.1%}'}"
                              f" | mem {mem:.2f} GB")
            t_pause = time.perf_counter()  # evaluation and checkpoints do not count towards tokens/s
            if step % pc.eval_interval == 0 or step == pc.max_steps:
                val_loss, val_acc, const_acc = evaluate(model, val, eval_ids, masker, pc.batch_size, seed, d, autocast,
                                                        meta["vocab_size"])
                if d.is_main:
                    log_row(step=step, tokens=step * tokens_step, val_loss=f"{val_loss:.8g}", val_acc=f"{val_acc:.6f}",
                            val_const_acc=f"{const_acc:.6f}")
                    bar.write(f"step {step:,}: validation loss {val_loss:.4f}, masked-token accuracy {val_acc:.2%} "
                              f"(most frequent token: {const_acc:.2%})")
                    plot_losses(history, out / "loss.png")
            if step % pc.ckpt_interval == 0 or step == stop:
                checkpoint_now()
            t_last += time.perf_counter() - t_pause

    # ---- outputs: the plot, and the final weights as one unsharded fp32 file for 04
    if d.is_main:
        log_file.close()
        if not (history and history[-1]["val_loss"] and int(history[-1]["step"]) == step):  # else just drawn
            plot_losses(history, out / "loss.png")
    if step == pc.max_steps:
        # collective under FSDP: every rank takes part, rank 0 receives the full tensors on the CPU
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if d.is_main:
            atomic_torch_save({k: v.float().cpu() for k, v in state.items()}, out / "final" / "model.pt")
            save_config(cfg, out / "final")
            print0(f"final weights: {out / 'final' / 'model.pt'}")
    else:
        print0(f"stopped at step {step:,} of {pc.max_steps:,} (pretrain.stop_at); continue with --resume")


if __name__ == "__main__":
    run_main(main)
