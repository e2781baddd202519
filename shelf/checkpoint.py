"""
Pretraining checkpoints: checkpoints/step-N/ appears by renaming a finished step-N.tmp/, so a crash
mid-write leaves the older checkpoints as they were; --resume takes the highest complete step-N.
Saved: model, optimizer, step, data position, config and every rank's RNG state (bit-exact resume).
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from shelf.distributed import World, print0
from shelf.errors import UserError
from shelf.files import atomic_write


def atomic_torch_save(obj, path: Path) -> None:
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def rng_state(device: torch.device) -> dict:
    return {"python": random.getstate(),
            "numpy": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    kind, key, *rest = state["numpy"]
    np.random.set_state((kind, np.array(key, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (step-N.tmp folders are unfinished writes and never listed)."""
    found = [(int(m.group(1)), p) for p in ckpt_dir.glob("step-*") if (m := re.fullmatch(r"step-(\d+)", p.name))]
    return [p for _, p in sorted(found)]


def _barrier(world: World) -> None:
    if world.is_distributed:
        dist.barrier()


def save_checkpoint(ckpt_dir: Path, step: int, net, optimizer, extra: dict, world: World, sharded: bool, keep: int) -> Path:
    """Single process / DDP: rank 0 writes one state.pt (model and optimizer as full state dicts keyed by
    parameter name, every rank's RNG state, `extra`). FSDP: a torch.distributed.checkpoint folder (each
    rank writes its shards; it reloads on any number of ranks) + meta.pt + rng-rank<r>.pt."""
    final, tmp = ckpt_dir / f"step-{step}", ckpt_dir / f"step-{step}.tmp"
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier(world)
    model_sd, optim_sd = get_state_dict(net, optimizer)  # DDP's "module." prefix is dropped
    rng = rng_state(torch.device(world.device))
    if sharded:
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp)
        atomic_torch_save(rng, tmp / f"rng-rank{world.rank}.pt")
        if world.is_main:
            atomic_torch_save(extra, tmp / "meta.pt")
    else:
        rngs = [None] * world.size
        if world.is_distributed:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if world.is_main:
            atomic_torch_save({"model": model_sd, "optimizer": optim_sd, "rng": rngs, **extra}, tmp / "state.pt")
    _barrier(world)
    if world.is_main:
        if final.exists():  # only if an earlier run got this far: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        fd = os.open(ckpt_dir, os.O_RDONLY)  # make the rename itself durable
        os.fsync(fd)
        os.close(fd)
        for old in complete_checkpoints(ckpt_dir)[:-keep]:
            shutil.rmtree(old)
        for stale in ckpt_dir.glob("step-*.tmp"):  # left by a crash
            shutil.rmtree(stale, ignore_errors=True)
    _barrier(world)
    return final


def load_checkpoint(path: Path, net, optimizer, world: World, sharded: bool) -> dict:
    """Load model + optimizer into the (possibly wrapped or sharded) model; restore this rank's RNG state
    when the world size is unchanged. Returns the saved `extra` (step, data position, config...)."""
    device = torch.device(world.device)
    if (path / "state.pt").is_file():
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        # full (unsharded) state dicts: under FSDP every rank keeps just its shard of them
        options = StateDictOptions(full_state_dict=True) if sharded else None
        set_state_dict(net, optimizer, model_state_dict=state.pop("model"), optim_state_dict=state.pop("optimizer"),
                       options=options)
        rngs = state.pop("rng")
        rng = rngs[world.rank] if len(rngs) == world.size else None
        extra = state
    elif (path / "meta.pt").is_file():
        model_sd, optim_sd = get_state_dict(net, optimizer)  # the layout to load into
        loaded = {"model": model_sd, "optimizer": optim_sd}
        dcp.load(loaded, checkpoint_id=path)  # reshards to this world size
        set_state_dict(net, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optimizer"])
        extra = torch.load(path / "meta.pt", weights_only=True)
        rng_file = path / f"rng-rank{world.rank}.pt"
        rng = (torch.load(rng_file, weights_only=True)
               if extra["world_size"] == world.size and rng_file.is_file() else None)
    else:
        raise UserError(f"{path}: not a checkpoint (no state.pt or meta.pt)")
    if rng is not None:
        set_rng_state(rng, device)
    else:
        print0(f"note: {path} was written by {extra['world_size']} processes, this run has {world.size}: "
               "random streams re-seeded, so this resume is not bit-exact")
        keys = [extra["config"]["run"]["seed"], 3, extra["step"], world.rank]
        torch.manual_seed(int(np.random.SeedSequence(keys).generate_state(2, np.uint64)[0] >> np.uint64(1)))
    return extra
