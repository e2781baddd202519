"""Pretraining checkpoints. checkpoints/step-N/ appears by renaming a finished step-N.tmp/, so a crash mid-write
leaves the older checkpoints as they were. Each holds the model and optimizer (state.pt; under FSDP a
torch.distributed.checkpoint folder, which reloads on any number of ranks), meta.pt (03's step, data position,
config, tokenizer hash), every rank's RNG state and, written last, SHA256SUMS (`sha256sum -c SHA256SUMS` checks it
by hand). --resume takes the newest checkpoint whose files all match it, so no file is unpickled unverified
(dcp.load unpickles .metadata). A checkpoint whose weights or optimizer state are not finite is never written."""

import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.utils._pytree import tree_leaves

from shelf.distributed import World, print0
from shelf.errors import UserError
from shelf.files import atomic_write, file_hash

SUMS = "SHA256SUMS"  # "<sha256>  <file name>" lines, as sha256sum writes them


def atomic_torch_save(obj, path: Path) -> None:
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (step-N.tmp folders are unfinished writes and never listed)."""
    found = [(int(m.group(1)), p) for p in ckpt_dir.glob("step-*") if (m := re.fullmatch(r"step-(\d+)", p.name))]
    return [p for _, p in sorted(found)]


def hash_files(folder: Path, world: World) -> dict[str, str]:
    """{name: sha256} of the files in `folder` but SHA256SUMS. Collective: each rank hashes its share of them."""
    names = sorted(p.name for p in folder.iterdir() if p.name != SUMS and p.is_file())
    mine = {name: file_hash(folder / name) for name in names[world.rank::world.size]}
    parts = [mine] * world.size
    if world.is_distributed:  # every rank gets every rank's share
        dist.all_gather_object(parts, mine)
    return dict(sorted(item for part in parts for item in part.items()))


def checkpoint_problem(path: Path, world: World) -> str | None:
    """Why the checkpoint `path` must not be read (a file missing, corrupt, or not in its SHA256SUMS), or None."""
    try:
        listed = {name: sha for sha, name in (line.split("  ", 1) for line in (path / SUMS).read_text().splitlines())}
        found = hash_files(path, world)
    except (OSError, ValueError) as e:  # no SHA256SUMS (older code wrote none), not text, not "sha  name" lines
        return f"unreadable ({e})"
    for name in sorted(found.keys() | listed.keys() | {"meta.pt"}):
        if name not in found or found[name] != listed.get(name):
            return (f"{name} missing" if name not in found else f"{name} not listed in {SUMS}" if name not in listed
                    else f"{name} corrupt (its sha256 differs from {SUMS})")
    return None


def verified_checkpoint(ckpt_dir: Path, world: World, quiet: bool = False) -> Path | None:
    """The newest checkpoint that passes checkpoint_problem(), or None. Unless quiet: a warning line for each
    newer one, and a UserError if there are checkpoints but none passes."""
    bad = []
    for path in reversed(complete_checkpoints(ckpt_dir)):
        if not (why := checkpoint_problem(path, world)):
            for problem in [] if quiet else bad:
                print0(f"warning: {problem}; resuming from {path}", file=sys.stderr)
            return path
        bad.append(f"{path}: {why}")
    if bad and not quiet:
        raise UserError(f"{bad[0]}; no older checkpoint is intact either: --restart to start over")
    return None


def not_finite(problem: str, ckpt_dir: Path, world: World) -> UserError:
    """The error for a loss or state that is not finite, naming the checkpoint to go back to."""
    return UserError(f"{problem}. Last good checkpoint: {verified_checkpoint(ckpt_dir, world, quiet=True) or 'none'} "
                     "(lower pretrain.lr or raise warmup_steps, then --resume)")


def all_finite(state, world: World) -> bool:
    """Every floating-point tensor in `state` (nested dicts and lists; this rank's shards) finite, on all ranks."""
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tree_leaves(state) if torch.is_tensor(t)]
    finite = torch.tensor(float(all(torch.isfinite(t).all() for t in local if t.is_floating_point())),
                          device=world.device)
    if world.is_distributed:  # all ranks write the checkpoint, or none does
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite)


def resume_point(out: Path, resume: bool, restart: bool, world: World) -> Path | None:
    """--resume: the latest complete checkpoint, if any. Else an earlier run's checkpoints are refused (days of
    training are not thrown away for a forgotten flag) or, with --restart, removed. Unfinished writes are removed."""
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
    if world.is_main:
        # unfinished checkpoints, and atomic_write's temp files (the log, loss.png, config.toml, final/)
        for tmp in [*ckpt_dir.glob("step-*.tmp"), *out.glob(".*.tmp"), *(out / "final").glob(".*.tmp")]:
            (shutil.rmtree if tmp.is_dir() else os.remove)(tmp)
    return verified_checkpoint(ckpt_dir, world) if resume and latest else None


def save_checkpoint(ckpt_dir: Path, step: int, net, optimizer, extra: dict, world: World, sharded: bool,
                    keep: int) -> Path:
    """Write checkpoints/step-`step`/ (every rank takes part), keep the last `keep`; refuse state not finite."""
    final, tmp = ckpt_dir / f"step-{step}", ckpt_dir / f"step-{step}.tmp"
    model_sd, optim_sd = get_state_dict(net, optimizer)  # keyed by parameter name: DDP's "module." is dropped
    if not all_finite([model_sd, optim_sd], world):
        raise not_finite(f"step {step}: the weights or optimizer state are not finite; not saved", ckpt_dir, world)
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    world.barrier()
    if sharded:  # each rank writes its shards
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp)
    elif world.is_main:
        atomic_torch_save({"model": model_sd, "optimizer": optim_sd}, tmp / "state.pt")
    if world.is_main:
        atomic_torch_save({**extra, "world_size": world.size}, tmp / "meta.pt")
    # dropout's random streams (data order and masks come from their own seeded generators)
    cuda = torch.cuda.get_rng_state(world.device) if world.device.type == "cuda" else None
    atomic_torch_save({"torch": torch.get_rng_state(), "cuda": cuda}, tmp / f"rng-rank{world.rank}.pt")
    world.barrier()
    sums = "".join(f"{sha}  {name}\n" for name, sha in hash_files(tmp, world).items())
    if world.is_main:
        with atomic_write(tmp / SUMS) as f:
            f.write(sums)
        shutil.rmtree(final, ignore_errors=True)  # there only if an earlier run got this far: replace it
        os.replace(tmp, final)
        fd = os.open(ckpt_dir, os.O_RDONLY)  # make the rename itself durable
        os.fsync(fd)
        os.close(fd)
        for old in complete_checkpoints(ckpt_dir)[:-keep] + list(ckpt_dir.glob("step-*.tmp")):  # tmp: a crash's
            shutil.rmtree(old, ignore_errors=True)
    world.barrier()
    return final


def load_checkpoint(path: Path, net, optimizer, world: World, sharded: bool, model_config=None,
                    tokenizer_sha256: str | None = None, verified: bool = False) -> dict:
    """Load model + optimizer into the (possibly wrapped or sharded) model, and this rank's RNG state if the world
    size is unchanged (else the caller re-seeds). Returns meta.pt: step, data position, config. Unless `verified`,
    the files are checked against SHA256SUMS first. A checkpoint of another [model] or tokenizer is refused before
    any weight is touched; a [model] key added since takes its default, so older checkpoints resume."""
    if not verified and (why := checkpoint_problem(path, world)):
        raise UserError(f"{path}: {why}")
    extra = torch.load(path / "meta.pt", weights_only=True)
    try:
        same = model_config is None or type(model_config)(**extra["config"]["model"]) == model_config
    except (TypeError, ValueError):  # a key this code does not know, or a value it refuses
        same = False
    if not same:
        raise UserError(f"{path}: saved with another [model] config; resume with the run's config.toml")
    if tokenizer_sha256 and extra.get("tokenizer_sha256", tokenizer_sha256) != tokenizer_sha256:
        raise UserError(f"{path}: trained with another tokenizer.json (sha256 {extra['tokenizer_sha256'][:12]}… vs "
                        f"{tokenizer_sha256[:12]}…); put back its tokenizer and token files, or --restart")
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
        if rng["cuda"] is not None and world.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], world.device)
    else:
        print0(f"note: {path} was written by {extra['world_size']} processes, this run has {world.size}: "
               "random streams re-seeded, so this resume is not bit-exact")
    return extra


def load_final_weights(weights_path: Path, tokenizer_sha256: str) -> dict:
    """03's final/model.pt as a MaskedLM state_dict, memory-mapped (read when used; 04's dry run costs nothing),
    refused in one line if the final/meta.json beside it names another tokenizer (older code wrote none)."""
    meta = weights_path.parent / "meta.json"
    trained_with = json.loads(meta.read_text()).get("tokenizer_sha256") if meta.is_file() else None
    if trained_with not in (None, tokenizer_sha256):
        raise UserError(f"{weights_path}: pretrained with another tokenizer (sha256 {trained_with[:12]}… vs "
                        f"{tokenizer_sha256[:12]}…); use the run's own tokenizer.json")
    try:
        return torch.load(weights_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # unpickling: not a file torch.save wrote, or truncated
        raise UserError(f"{weights_path}: not a loadable state_dict ({str(e).splitlines()[0]})")
