"""Pretraining checkpoints. checkpoints/step-N/ appears by renaming a finished step-N.tmp/, so a crash
mid-write leaves the older checkpoints as they were; --resume takes the highest complete step-N. Each holds
the model and optimizer (state.pt; under FSDP a torch.distributed.checkpoint folder, which reloads on any
number of ranks), meta.pt (03's step, data position, config) and every rank's RNG state."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from shelf.distributed import World, print0
from shelf.errors import UserError
from shelf.files import atomic_write


def atomic_torch_save(obj, path: Path) -> None:
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (step-N.tmp folders are unfinished writes and never listed)."""
    found = [(int(m.group(1)), p) for p in ckpt_dir.glob("step-*") if (m := re.fullmatch(r"step-(\d+)", p.name))]
    return [p for _, p in sorted(found)]


def resume_point(out: Path, resume: bool, restart: bool, world: World) -> Path | None:
    """--resume: the latest complete checkpoint, if any. Else an earlier run's checkpoints are refused (days
    of training are not thrown away for a forgotten flag) or, with --restart, removed with its final weights."""
    ckpt_dir = out / "checkpoints"
    latest = (complete_checkpoints(ckpt_dir) or [None])[-1]
    if resume and latest is None:
        print0(f"--resume: no checkpoint in {ckpt_dir}; starting from step 0")
    elif latest and not resume and not restart:
        raise UserError(f"{ckpt_dir} holds an earlier run's checkpoints (latest: {latest.name}); "
                        f"pass --resume to continue it or --restart to discard them")
    elif latest and not resume and world.is_main:
        print0(f"--restart: removing the checkpoints of an earlier run in {ckpt_dir}")
        shutil.rmtree(ckpt_dir)
        shutil.rmtree(out / "final", ignore_errors=True)
    return latest if resume else None


def save_checkpoint(ckpt_dir: Path, step: int, net, optimizer, extra: dict, world: World, sharded: bool,
                    keep: int) -> Path:
    """Write checkpoints/step-`step`/ (every rank takes part) and keep the last `keep` checkpoints."""
    final, tmp = ckpt_dir / f"step-{step}", ckpt_dir / f"step-{step}.tmp"
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    world.barrier()
    model_sd, optim_sd = get_state_dict(net, optimizer)  # keyed by parameter name: DDP's "module." is dropped
    if sharded:  # each rank writes its shards
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp)
    elif world.is_main:
        atomic_torch_save({"model": model_sd, "optimizer": optim_sd}, tmp / "state.pt")
    if world.is_main:
        atomic_torch_save({**extra, "world_size": world.size}, tmp / "meta.pt")
    # dropout's random streams (data order and masks come from their own seeded generators)
    cuda = torch.cuda.get_rng_state(world.device) if world.device.startswith("cuda") else None
    atomic_torch_save({"torch": torch.get_rng_state(), "cuda": cuda}, tmp / f"rng-rank{world.rank}.pt")
    world.barrier()
    if world.is_main:
        shutil.rmtree(final, ignore_errors=True)  # there only if an earlier run got this far: replace it
        os.replace(tmp, final)
        fd = os.open(ckpt_dir, os.O_RDONLY)  # make the rename itself durable
        os.fsync(fd)
        os.close(fd)
        for old in complete_checkpoints(ckpt_dir)[:-keep] + list(ckpt_dir.glob("step-*.tmp")):  # tmp: a crash's
            shutil.rmtree(old, ignore_errors=True)
    world.barrier()
    return final


def load_checkpoint(path: Path, net, optimizer, world: World, sharded: bool, model_config: dict | None = None) -> dict:
    """Load model + optimizer into the (possibly wrapped or sharded) model, and this rank's RNG state if
    the world size is unchanged (else the caller re-seeds). Returns meta.pt: step, data position, config.
    With `model_config`, a checkpoint of another [model] is refused before any weight is touched."""
    if not (path / "meta.pt").is_file():
        raise UserError(f"{path}: not a checkpoint (no meta.pt)")
    extra = torch.load(path / "meta.pt", weights_only=True)
    if model_config is not None and extra["config"]["model"] != model_config:
        raise UserError(f"{path}: saved with another [model] config; resume with the run's config.toml")
    if (path / "state.pt").is_file():  # full state dicts: under FSDP every rank keeps just its shard of them
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        options = StateDictOptions(full_state_dict=True) if sharded else None
    else:  # a torch.distributed.checkpoint folder: loads into this run's layout, resharded
        model_sd, optim_sd = get_state_dict(net, optimizer)
        state, options = {"model": model_sd, "optimizer": optim_sd}, None
        dcp.load(state, checkpoint_id=path)
    set_state_dict(net, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=options)
    if extra["world_size"] == world.size:
        rng = torch.load(path / f"rng-rank{world.rank}.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and world.device.startswith("cuda"):
            torch.cuda.set_rng_state(rng["cuda"], world.device)
    else:
        print0(f"note: {path} was written by {extra['world_size']} processes, this run has {world.size}: "
               "random streams re-seeded, so this resume is not bit-exact")
    return extra
