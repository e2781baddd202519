"""
Distributed set-up for torchrun (nccl on CUDA, gloo on CPU) and the model wrapping of torchtitan's
order: activation checkpointing -> per-block compile -> FSDP2 (fully_shard) or DDP.

torchrun sets RANK / LOCAL_RANK / WORLD_SIZE; a plain `python` run is a world of size 1.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from shelf.errors import ConfigError


@dataclass
class World:
    """This process's place in the torchrun job (a plain `python` run: rank 0 of 1)."""
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1


def resolve_device(preference: str) -> str:
    """run.device -> a torch device name ("auto": cuda if there is one, else cpu)."""
    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"run.device = '{preference}' but no CUDA GPU is visible; use 'cpu' or 'auto'")
    return preference


def setup_distributed(device_preference: str = "auto") -> World:
    """Join the torchrun process group if there is one: nccl on CUDA, gloo on CPU."""
    device = resolve_device(device_preference)
    if "RANK" not in os.environ:
        return World(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
        dist.init_process_group("nccl", device_id=torch.device(device))
    else:
        dist.init_process_group("gloo")
    return World(rank=rank, local_rank=local_rank, size=world_size, device=device)


def teardown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def print0(*args, **kwargs) -> None:
    """print on rank 0 only (torchrun sets RANK), flushed so logs interleave sanely."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs, flush=True)


def parallelize(net, cfg, world: World, bf16: bool, seed: int) -> torch.nn.Module:
    pc, device = cfg.pretrain, torch.device(world.device)
    if not pc.meta_init:  # full tensors, before any sharding: the same weights on every rank, and the
        torch.manual_seed(seed)  # same as a meta-device build on the CPU (init_weights from a fresh seed)
        net.init_weights()
    if pc.activation_checkpointing:
        # keep each block's input only; recompute its insides in backward. Patching forward (not wrapping
        # the module) keeps the state-dict keys unchanged.
        from torch.utils.checkpoint import checkpoint
        for block in net.encoder.blocks:
            block.forward = _checkpointed(checkpoint, block.forward)
    if pc.compile:
        for block in net.encoder.blocks:  # per block: static shapes; the data-dependent LM-head gather stays eager
            block.compile()
    fsdp = pc.parallel == "fsdp" and world.is_distributed
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        mesh = init_device_mesh(device.type, (world.size,))  # always explicit (pytorch#132471)
        # bf16 compute, fp32 gradient reduction (and fp32 master weights in the optimizer)
        mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
              else MixedPrecisionPolicy())
        for block in net.encoder.blocks:
            fully_shard(block, mesh=mesh, mp_policy=mp)
        # the root unit: embeddings, final norm and LM head, so the tied word embedding / decoder is one unit
        fully_shard(net, mesh=mesh, mp_policy=mp)
    if pc.meta_init:  # materialise (only this rank's shards under FSDP), then initialise once
        net.to_empty(device=device)
        torch.manual_seed(seed)
        net.init_weights()
        if fsdp:
            _zero_sharded_padding_rows(net, world)
    else:
        net.to(device)
    if world.is_distributed and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        return DDP(net, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True)
    return net


def _checkpointed(checkpoint, forward):
    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return run


@torch.no_grad()
def _zero_sharded_padding_rows(net, world: World) -> None:
    """init_weights() zeroes an embedding's padding row with weight[pad].zero_(), which is a silent no-op on
    a dim-0-sharded DTensor (torch 2.13). FSDP2 shards dim 0 like torch.chunk: rank r holds rows
    [r * ceil(V / W), ...), so zero the row in the rank that holds it."""
    for emb in (net.encoder.wte, net.encoder.wpe):
        if emb is None or emb.padding_idx is None:
            continue
        local = emb.weight.to_local()
        row = emb.padding_idx - world.rank * math.ceil(emb.weight.shape[0] / world.size)
        if 0 <= row < local.shape[0]:
            local[row].zero_()
