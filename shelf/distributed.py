"""torchrun set-up (nccl on CUDA, gloo on CPU) and the model wrapping in torchtitan's order:
activation checkpointing -> compile (per block under FSDP2, else the whole model) -> FSDP2 (fully_shard) or DDP."""

import functools
import math
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from shelf.errors import ConfigError
from shelf.seeds import torch_seed


@dataclass
class World:
    """This process's place in the torchrun job (a plain `python` run: rank 0 of 1)."""
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    is_main = property(lambda self: self.rank == 0)
    is_distributed = property(lambda self: self.size > 1)

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()


def setup_distributed(preference: str = "auto", deterministic: bool = False) -> World:
    """Join the torchrun process group if there is one. run.device "auto": cuda if there is one, else cpu.
    deterministic (run.deterministic): only deterministic kernels, so that two CUDA runs of the same config are
    bit-identical (cuBLAS reads its workspace setting when it starts: set here, before any CUDA work)."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if preference == "auto" else preference
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"run.device = '{preference}' but no CUDA GPU is visible; use 'cpu' or 'auto'")
    if deterministic:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    if "RANK" not in os.environ:
        return World(device=torch.device(device))
    local_rank = int(os.environ["LOCAL_RANK"])
    if cuda := device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    dist.init_process_group("nccl" if cuda else "gloo", device_id=torch.device(device) if cuda else None)
    return World(int(os.environ["RANK"]), local_rank, int(os.environ["WORLD_SIZE"]), torch.device(device))


def uses_bf16(precision: str, device: torch.device) -> bool:
    """The one precision rule (pretrain.precision, finetune.precision): "auto" = bf16 on CUDA, fp32 elsewhere."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def mixed_precision(bf16: bool, device: torch.device):
    """bf16 autocast around a forward (matmuls in bf16, reductions in fp32), or nothing."""
    return torch.autocast(device.type, torch.bfloat16, enabled=bf16)


def teardown_distributed() -> None:
    """Leave the process group, after a success together: gloo may abort a rank that leaves while rank 0 writes."""
    if dist.is_available() and dist.is_initialized():
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


def print0(*args, **kwargs) -> None:
    """print on rank 0 only (torchrun sets RANK), flushed so logs interleave sanely."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs, flush=True)


def parallelize(net, cfg, world: World, bf16: bool, seed: int) -> torch.nn.Module:
    """Wrap `net` for this world; its weights come from rng stream "weights" of `seed`, the same on every rank
    and either way of init."""
    pretrain, device = cfg.pretrain, world.device
    if not pretrain.meta_init:  # full tensors, initialised before any sharding
        torch.manual_seed(torch_seed(seed, "weights"))
        net.init_weights()
        net.to(device)
    fsdp = pretrain.parallel == "fsdp" and world.is_distributed
    for block in net.encoder.blocks:
        if pretrain.activation_checkpointing:  # keep each block's input, recompute its insides in backward;
            from torch.utils.checkpoint import checkpoint  # patching forward keeps the state-dict keys
            block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
        if pretrain.compile and fsdp:  # FSDP2 shards and gathers per block: compile per block (torchtitan)
            block.compile()
    if pretrain.compile and not fsdp:  # the whole model as one graph: the step has no sync, no dynamic shape
        net.compile()
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        mesh = init_device_mesh(device.type, (world.size,))  # always explicit (pytorch#132471)
        # bf16 compute, fp32 gradient reduction (and fp32 master weights in the optimizer)
        mp = MixedPrecisionPolicy(torch.bfloat16, torch.float32) if bf16 else MixedPrecisionPolicy()
        for block in net.encoder.blocks:
            fully_shard(block, mesh=mesh, mp_policy=mp)
        fully_shard(net, mesh=mesh, mp_policy=mp)  # the root: embeddings, final norm, LM head (tied: one unit)
    if pretrain.meta_init:  # materialise (only this rank's shards under FSDP), then initialise once
        net.to_empty(device=device)
        torch.manual_seed(torch_seed(seed, "weights"))
        net.init_weights()
        if fsdp:
            _zero_sharded_padding_rows(net, world)
    if world.is_distributed and not fsdp:
        return DDP(net, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True)
    return net


@torch.no_grad()
def _zero_sharded_padding_rows(net, world: World) -> None:
    """init_weights() zeroes the padding row with weight[pad].zero_(), a silent no-op on a dim-0-sharded
    DTensor (torch 2.13). FSDP2 shards dim 0 like torch.chunk: rank r holds rows [r * ceil(V / W), ...)."""
    for emb in (net.encoder.wte, net.encoder.wpe):
        if emb is not None and emb.padding_idx is not None:
            row = emb.padding_idx - world.rank * math.ceil(emb.weight.shape[0] / world.size)
            if 0 <= row < emb.weight.to_local().shape[0]:
                emb.weight.to_local()[row].zero_()
