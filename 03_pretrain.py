"""
Pretrain model.py's MaskedLM by masked-language modelling on 02's token files: one process, or DDP or
FSDP2 under torchrun; checkpointed and resumable (bit for bit on CPU; on CUDA with run.deterministic).

    python 03_pretrain.py --config configs/demo.toml                 # one process: CPU or one GPU
    torchrun --standalone --nproc_per_node=2 03_pretrain.py          # tinydnabert: DDP on 2 GPUs
    torchrun --nnodes=32 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=$HOST:29500 \\
        03_pretrain.py --config configs/dnafm_7b.toml                # FSDP2 (its preset: parallel = "fsdp")
    python 03_pretrain.py --config configs/dnafm_7b.toml --dry-run   # memory plan, FLOPs, run time; no GPU needed
    ... --resume                                                     # continue from the latest intact checkpoint
    ... --restart                                                    # discard an earlier run's checkpoints, start over

Reads <run dir>/tokenizer.json and tokens/{train,val}.bin + meta.json; writes checkpoints/step-N/,
pretrain_log.csv, loss.png, config.toml and final/model.pt + meta.json (step, tokenizer_sha256; 04 reads them).
"""

import contextlib
import dataclasses
import math
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from model import MaskedLM, configure_optimizer, lr_at, mlm_loss, num_parameters
from shelf.checkpoint import atomic_torch_save, load_checkpoint, not_finite, resume_point, save_checkpoint
from shelf.config import Config, load_config, save_config
from shelf.distributed import (World, mixed_precision, parallelize, print0, setup_distributed, teardown_distributed,
                               uses_bf16)
from shelf.dry_run import dry_run
from shelf.errors import ConfigError, UserError, run_main
from shelf.files import write_json
from shelf.seeds import rng, torch_seed
from shelf.tokens import load_tokenizer, read_token_meta
from shelf.train_log import TrainLog


# ---- data: packed blocks from the flat uint16 token file, and MLM masking ----------------------------
class BlockStream:
    """A token file cut into n_blocks blocks of seq_len tokens (a block may span segments; each segment
    carries its own special tokens). take(n): the next n block ids in a seeded random order, a new epoch (new
    order) when fewer than n remain. (epoch, index) is all the state: the order is rng(seed, "blocks", epoch)."""

    def __init__(self, path, seq_len: int, seed: int, need: int = 1):
        tokens = np.memmap(path, dtype=np.uint16, mode="r")
        self.n_blocks = len(tokens) // seq_len
        if self.n_blocks < need:
            raise UserError(f"{path}: {self.n_blocks:,} blocks of {seq_len} tokens, fewer than the {need} a step "
                            "reads; lower pretrain.batch_size or pretrain.seq_len")
        self.blocks = tokens[: self.n_blocks * seq_len].reshape(self.n_blocks, seq_len)  # (N, T) view, nothing read
        self.seed, self.epoch, self.index = seed, 0, 0  # index: blocks of this epoch's order already taken
        self.order_epoch = -1  # the epoch self.order was drawn for

    def take(self, n: int) -> np.ndarray:
        if self.index + n > self.n_blocks:
            self.epoch, self.index = self.epoch + 1, 0
        if self.order_epoch != self.epoch:  # drawn once per epoch
            self.order = rng(self.seed, "blocks", self.epoch).permutation(self.n_blocks)
            self.order_epoch = self.epoch
        self.index += n
        return self.order[self.index - n: self.index]

    def read(self, ids: np.ndarray, device: torch.device) -> torch.Tensor:
        """(len(ids), T) int64 on device: a copy of just these rows, pinned and copied asynchronously on CUDA."""
        x = torch.from_numpy(self.blocks[ids].astype(np.int64))
        return x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x


def is_fsdp(model) -> bool:  # wrapped by FSDP2's fully_shard
    return hasattr(model, "set_requires_gradient_sync")


class Masker:
    """BERT's MLM corruption with static shapes (cramming): in each row of T tokens, K = round(mask_prob * T)
    positions are drawn uniformly without replacement; the non-special tokens among them are the targets, so
    on average mask_prob of the non-special tokens are targets, as in BERT. A target becomes <mask> (80%),
    a random real token (10%) or stays (10%). A fixed K per row means no data-dependent shape and no host sync.
    Each call draws the noise for a global batch of `global_rows` rows from a generator seeded with `seed`
    and applies this rank's `rows` of it, so every rank (and one process holding all rows) masks alike."""

    def __init__(self, vocab_size: int, special_ids, mask_id: int, mask_prob: float, device):
        self.is_special = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        self.is_special[list(special_ids)] = True
        self.regular = (~self.is_special).nonzero().flatten()  # random replacements: any non-special token
        self.vocab_size = vocab_size
        self.mask_id = mask_id
        self.mask_prob = mask_prob
        self.device = torch.device(device)
        self.gen = torch.Generator(device=device)  # seeded per call

    def __call__(self, ids: torch.Tensor, seed: int, global_rows: int, rows):
        """ids (B, T): the rows `rows` (a slice or index tensor) of a global batch of `global_rows` rows ->
        inputs (B, T) corrupted, positions (B, K) drawn, labels (B, K): the original id, -100 if special."""
        self.gen.manual_seed(seed)
        T = ids.shape[1]
        K = max(1, round(self.mask_prob * T))  # positions drawn per row

        def noise(fn, *args):  # this rank's rows of a (global_rows, ...) draw
            return fn(*args, generator=self.gen, device=self.device)[rows]
        positions = noise(torch.rand, global_rows, T).topk(K, dim=1).indices  # (B, K): K distinct per row
        split = noise(torch.rand, global_rows, K)  # uniform [0, 1): 80 / 10 / 10
        replacement = noise(torch.randint, len(self.regular), (global_rows, K))
        original = ids.gather(1, positions)  # (B, K)
        special = self.is_special[original]
        labels = original.masked_fill(special, -100)
        corrupted = torch.where(split < 0.9, self.regular[replacement], original)  # 10% random, 10% kept
        corrupted = torch.where(split < 0.8, self.mask_id, corrupted)  # 80% <mask>
        return ids.scatter(1, positions, torch.where(special, original, corrupted)), positions, labels


# ---- one training step: this rank's share of the global batch, forward + backward, clip --------------
def get_batch(stream: BlockStream, masker: Masker, step: int, pretrain, world: World):
    """This rank's rows of step `step`'s global batch, masked: inputs (grad_accum * B, T), positions and labels
    (grad_accum * B, K) on the device. The global batch is grad_accum micro-batches of world_size x B rows; the
    rank reads its B rows of each."""
    accum, rows_micro = pretrain.grad_accum, pretrain.batch_size * world.size
    mine = slice(world.rank * pretrain.batch_size, (world.rank + 1) * pretrain.batch_size)
    ids = np.concatenate([stream.take(rows_micro)[mine] for _ in range(accum)])  # (accum * B,) block ids
    rows = torch.arange(accum * rows_micro, device=masker.device).view(accum, rows_micro)[:, mine].flatten()
    return masker(stream.read(ids, masker.device), torch_seed(stream.seed, "masks", step), accum * rows_micro, rows)


def forward_backward(model, batch, pretrain, world: World, autocast):
    """Accumulate the gradient of the global batch's mean MLM loss over grad_accum micro-batches, then clip.
    batch = (inputs, positions, labels). Returns (loss, grad norm before clipping) as device tensors: no host
    sync here."""
    n_targets = (batch[2] != -100).sum().double()
    if world.is_distributed:
        dist.all_reduce(n_targets)  # targets in the whole global batch
    n_targets.clamp_(min=1)
    loss_sum = torch.zeros((), dtype=torch.float64, device=n_targets.device)
    micro_batches = list(zip(*(t.split(pretrain.batch_size) for t in batch)))
    for micro, (x, positions, y) in enumerate(micro_batches):
        last = micro == len(micro_batches) - 1
        if is_fsdp(model):  # reduce-scatter the gradients after the last micro-batch only
            model.set_requires_gradient_sync(last)
        no_sync = world.is_distributed and not is_fsdp(model) and not last  # DDP: all-reduce after the last only
        with model.no_sync() if no_sync else contextlib.nullcontext():
            with autocast:
                loss = mlm_loss(model(x, positions=positions), y)  # summed CE over this micro-batch's targets
            # DDP / FSDP average gradients over ranks, hence x world_size: the sum over ranks and micro-batches
            # is the gradient of (sum of CE over all targets of the global batch) / (their number)
            (loss * (world.size / n_targets).float()).backward()
        loss_sum += loss.detach().double()
    if world.is_distributed:
        dist.all_reduce(loss_sum)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), pretrain.grad_clip or math.inf)
    if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
        grad_norm = grad_norm.full_tensor()
    return loss_sum / n_targets, grad_norm.double()


# ---- validation: a fixed subset of val blocks with fixed masks, so every evaluation scores the same task
class Data(NamedTuple):
    train: BlockStream
    val: BlockStream
    eval_ids: np.ndarray  # the fixed validation subset (block ids), a multiple of world_size long
    masker: Masker
    log_freq: torch.Tensor  # (V,) log of each token's frequency in train: the unigram baseline's prediction
    tokenizer_sha256: str  # recorded with the weights: a resume or 04 with another tokenizer is refused


def token_log_freq(stream: BlockStream, vocab_size: int, device) -> torch.Tensor:
    """(V,) log-frequencies of the tokens of (the first 10^8 of) a token file, add-half smoothed."""
    counts = np.bincount(stream.blocks.reshape(-1)[:100_000_000], minlength=vocab_size)[:vocab_size] + 0.5
    return torch.from_numpy(np.log(counts / counts.sum())).to(device)


class Validation(NamedTuple):
    loss: float  # MLM loss on the fixed validation subset and masks
    accuracy: float  # masked-token accuracy
    const_accuracy: float  # always guessing the most frequent target token
    unigram_loss: float  # knowing only the train tokens' frequencies: the loss must go below it to show that
    # the model learned something from the context


@torch.no_grad()
def evaluate(model, data: Data, rows_per_rank: int, world: World, autocast) -> Validation:
    model.eval()
    device, vocab_size = data.masker.device, data.masker.vocab_size
    chunk = rows_per_rank * world.size  # validation rows per step, all ranks
    stats = torch.zeros(3 + vocab_size, dtype=torch.float64, device=device)  # loss sum, correct, targets, histogram
    for i, ids in enumerate(np.split(data.eval_ids, range(chunk, len(data.eval_ids), chunk))):
        per_rank = len(ids) // world.size  # len(ids) is a multiple of world_size
        rows = slice(world.rank * per_rank, (world.rank + 1) * per_rank)
        seed = torch_seed(data.val.seed, "validation masks", i)
        inputs, positions, labels = data.masker(data.val.read(ids[rows], device), seed, len(ids), rows)
        with autocast:
            logits = model(inputs, positions=positions)  # (B, K, V)
        targets = labels != -100
        stats[:3] += torch.stack([mlm_loss(logits, labels).double(), (logits.argmax(-1) == labels)[targets].sum(),
                                  targets.sum()]).double()
        stats[3:] += torch.bincount(labels[targets], minlength=vocab_size).double()
    if world.is_distributed:
        dist.all_reduce(stats)
    model.train()
    n, histogram = max(stats[2].item(), 1.0), stats[3:]
    return Validation(stats[0].item() / n, stats[1].item() / n, histogram.max().item() / n,
                      -(histogram * data.log_freq).sum().item() / n)


# ---- the pipeline's steps, in the order main() runs them ---------------------------------------------
def load_data(cfg: Config, world: World) -> Data:
    """02's token files as packed blocks, the fixed validation subset, and the Masker."""
    out, pretrain, seed = cfg.out_dir, cfg.pretrain, cfg.run.seed  # short names
    if pretrain.seq_len > cfg.model.max_seq_len:
        raise ConfigError(f"pretrain.seq_len = {pretrain.seq_len} > model.max_seq_len = {cfg.model.max_seq_len}")
    tokenizer, special = load_tokenizer(out / "tokenizer.json", cfg.model)
    meta = read_token_meta(out / "tokens", out / "tokenizer.json")  # refuses token files of another tokenizer
    rows_micro = pretrain.batch_size * world.size  # rows of one global micro-batch
    train = BlockStream(out / "tokens" / "train.bin", pretrain.seq_len, seed, need=rows_micro)
    val = BlockStream(out / "tokens" / "val.bin", pretrain.seq_len, seed, need=world.size)  # a block per rank
    n_eval = min(pretrain.eval_batches * rows_micro, val.n_blocks) // world.size * world.size
    eval_ids = rng(seed, "validation subset").permutation(val.n_blocks)[:n_eval]
    masker = Masker(tokenizer.get_vocab_size(with_added_tokens=True), special.all, special.mask, pretrain.mask_prob,
                    world.device)
    return Data(train, val, eval_ids, masker, token_log_freq(train, masker.vocab_size, world.device),
                meta["tokenizer_sha256"])


def build_model(cfg: Config, world: World):
    """-> MaskedLM wrapped for this world (weights from the seed, the same on every rank), AdamW, autocast."""
    pretrain, device = cfg.pretrain, world.device
    bf16 = uses_bf16(pretrain.precision, device)
    if device.type == "cuda":  # fp32 matmuls (precision = "fp32") on tensor cores
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    with torch.device("meta") if pretrain.meta_init else contextlib.nullcontext():
        net = MaskedLM(cfg.model)
    model = parallelize(net, cfg, world, bf16, cfg.run.seed)
    optimizer = configure_optimizer(model, pretrain, device)
    # bf16 autocast for single process / DDP; FSDP casts through its MixedPrecisionPolicy instead
    autocast = mixed_precision(bf16 and not is_fsdp(model), device)
    torch.manual_seed(torch_seed(cfg.run.seed, "dropout", world.rank))  # a different stream on every rank
    print0(f"{cfg.run.name}: {num_parameters(net):,} parameters, {'bf16' if bf16 else 'fp32'}, on {world.size} x "
           f"{device.type}{' (FSDP2)' if is_fsdp(model) else ' (DDP)' if world.is_distributed else ''}")
    return model, optimizer, autocast


def resume_or_start(cfg: Config, world: World, model, optimizer, data: Data, flags) -> tuple[int, list[float]]:
    """-> the first step and the losses of its log interval so far: (0, []), or with --resume the latest intact
    checkpoint's, after loading its model, optimizer, RNG and data position."""
    path = resume_point(cfg.out_dir, "--resume" in flags, "--restart" in flags, world)
    if path is None:
        return 0, []
    saved = load_checkpoint(path, model, optimizer, world, is_fsdp(model), cfg.model,
                            data.tokenizer_sha256, verified=True)
    if saved["step"] > cfg.pretrain.max_steps:
        raise ConfigError(f"pretrain.max_steps = {cfg.pretrain.max_steps:,}: {path} is past it; raise it to at least "
                          f"{saved['step']:,}, or --restart")
    if saved["world_size"] != world.size:  # the RNG states saved are those of other ranks: fresh streams
        torch.manual_seed(torch_seed(saved["config"]["run"]["seed"], "dropout after resize", saved["step"], world.rank))
    data.train.epoch = saved["data"]["epoch"]
    data.train.index = saved["data"]["index"]
    print0(f"resumed from {path} (step {saved['step']:,}, epoch {data.train.epoch}, block {data.train.index:,})")
    return saved["step"], saved.get("log_losses", [])


def read_back(pending: list[torch.Tensor], step: int, ckpt_dir, world: World) -> list[list[float]]:
    """The loop's one host sync, every log interval and before any evaluation or checkpoint: the (loss, grad
    norm) of each step since the last one. Syncing every step would stall a GPU that the CPU can keep busy only
    by queueing steps ahead. A non-finite value stops the run here: its weights never reach a checkpoint."""
    values = torch.stack(pending).tolist()
    for i, (loss, norm) in enumerate(values):
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise not_finite(f"step {step - len(values) + i + 1:,}: loss {loss} / grad norm {norm} is not finite; "
                             f"stopped at step {step:,}, nothing saved since", ckpt_dir, world)
    return values


def train(cfg: Config, world: World, model, optimizer, autocast, data: Data, step: int, losses: list[float]) -> int:
    """Optimizer steps up to pretrain.stop_at (or max_steps): log, evaluate, checkpoint. -> the last step."""
    pretrain, ckpt_dir = cfg.pretrain, cfg.out_dir / "checkpoints"
    stop = min(pretrain.stop_at or pretrain.max_steps, pretrain.max_steps)
    pending = []  # (loss, grad norm) of the steps since the last read_back, on the device
    with TrainLog(cfg, world, step, losses) as log:  # and config.toml
        while step < stop:
            lr = lr_at(step, pretrain)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = get_batch(data.train, data.masker, step, pretrain, world)
            pending.append(torch.stack(forward_backward(model, batch, pretrain, world, autocast)))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            evaluating = step % pretrain.eval_interval == 0 or step == pretrain.max_steps
            saving = step % pretrain.ckpt_interval == 0 or step == stop
            if step % pretrain.log_interval == 0 or evaluating or saving:
                values = read_back(pending, step, ckpt_dir, world)
                pending = []
                log.steps([loss for loss, _ in values])
            if step % pretrain.log_interval == 0 or step == stop:
                log.train_row(step, lr, values[-1][1])
            with log.paused():
                if evaluating:
                    log.val_row(step, *evaluate(model, data, pretrain.batch_size, world, autocast))
                if saving:
                    log.sync()  # the log up to here is durable together with the checkpoint
                    extra = {"step": step, "data": {"epoch": data.train.epoch, "index": data.train.index},
                             "config": dataclasses.asdict(cfg), "tokenizer_sha256": data.tokenizer_sha256,
                             "log_losses": log.losses}  # so that a resume logs this interval's mean exactly
                    save_checkpoint(ckpt_dir, step, model, optimizer, extra, world, is_fsdp(model),
                                    pretrain.keep_checkpoints)
    return step


def save_final_weights(cfg: Config, world: World, model, step: int, tokenizer_sha256: str) -> None:
    """final/model.pt: one unsharded fp32 state dict for 04 (if the run got to max_steps), and meta.json."""
    if step < cfg.pretrain.max_steps:
        return print0(f"stopped at step {step:,} of {cfg.pretrain.max_steps:,} (pretrain.stop_at); --resume goes on")
    # collective under FSDP: every rank takes part, rank 0 receives the full tensors on the CPU
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if world.is_main:
        atomic_torch_save({k: v.float().cpu() for k, v in state.items()}, cfg.out_dir / "final" / "model.pt")
        write_json(cfg.out_dir / "final" / "meta.json", {"step": step, "tokenizer_sha256": tokenizer_sha256})
        save_config(cfg, cfg.out_dir / "final")
        print0(f"final weights: {cfg.out_dir / 'final' / 'model.pt'}")


def main() -> None:
    cfg, flags = load_config(flags=("--resume", "--restart", "--dry-run"), doc=__doc__,
                             sections=("run", "model", "pretrain"))
    if "--dry-run" in flags:
        return dry_run(cfg)
    world = setup_distributed(cfg.run.device, cfg.run.deterministic)
    try:
        data = load_data(cfg, world)
        model, optimizer, autocast = build_model(cfg, world)
        step, losses = resume_or_start(cfg, world, model, optimizer, data, flags)
        step = train(cfg, world, model, optimizer, autocast, data, step, losses)
        save_final_weights(cfg, world, model, step, data.tokenizer_sha256)
    finally:
        teardown_distributed()


if __name__ == "__main__":
    run_main(main)
