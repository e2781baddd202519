"""
Figure 5, second part: tokens/s and MFU of the dnafm_7b block shape (hidden 4,352, 32 heads, SwiGLU FFN
11,584, RoPE, pre-LN, seq 4,000) with a few layers, under FSDP2 (fully_shard) with activation
checkpointing and bf16 mixed precision: the path 03_pretrain.py takes for configs/dnafm_7b.toml.

    python bench/bench_fsdp.py                                  # one GPU (world size 1), 4 layers, 4 x 4000
    torchrun --standalone --nproc_per_node=8 bench/bench_fsdp.py --layers 8
    python bench/bench_fsdp.py --check                          # CPU + gloo, a tiny shape: the GPU row's code runs

The model is built exactly as 03 builds it: 03_pretrain.py's own parallelize() (activation checkpointing
-> fully_shard per block and the root with MixedPrecisionPolicy(bf16, fp32) -> meta-device to_empty +
init_weights), configure_optimizer() (AdamW, fused on CUDA) and Masker (15% MLM, 80/10/10); the loss is
MaskedLM's own (LM head at masked positions only). 03 shards only when world_size > 1; here FSDP2 is
forced on a 1-GPU mesh too, so the figure is of that code path.

MFU = model FLOPs per token (model.flops_per_token, LM head at the 15% masked fraction; the activation
recompute is not counted, the usual convention) x tokens/s per GPU / the GPU's bf16 dense peak.
Without a GPU (and without --check) it only writes the row "not measured (no GPU)".
"""

import argparse
import dataclasses
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from benchlib import (cuda_call, format_table, gpu_peak_tflops, load_script, load_str, machine_info, row,  # noqa: E402
                      sync, write_rows)
from shelf.config import load_config  # noqa: E402
from shelf.distributed import World, setup_distributed, teardown_distributed  # noqa: E402
from model import MaskedLM, flops_per_token, mlm_loss  # noqa: E402

CHAR_SPECIALS, MASK_ID = [0, 1, 2, 3, 4, 9, 10, 11, 12, 13, 14, 15], 1  # all but A G C T (ids 5-8)
TINY = ["--model.hidden_size=64", "--model.num_heads=4", "--model.ffn_size=96", "--model.max_seq_len=64"]
TARGET = ">= 0.40"  # MFU on an H100 (the target)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4, help="blocks of the 7B shape (32 in the full model)")
    p.add_argument("--batch", type=int, default=4, help="sequences per GPU per step")
    p.add_argument("--seq-len", type=int, default=4000)
    p.add_argument("--steps", type=int, default=10, help="timed steps (median step time)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=0.0, help="GPU bf16 peak; 0 = look it up")
    p.add_argument("--check", "--tiny", dest="check", action="store_true",
                   help="tiny shape, CPU + gloo, 2 steps: the GPU row's code path, a crash test (no figure)")
    p.add_argument("--out", type=Path, default=None, help="CSV path (default bench/results/bench_fsdp.csv)")
    args = p.parse_args(argv)
    if args.check:
        args.layers, args.batch, args.seq_len, args.steps, args.warmup = 2, 2, 64, 2, 1
    return args


class AlwaysSharded(World):
    """03 shards only when world_size > 1 (sharding over one GPU saves nothing in training); the bench
    wants the FSDP2 code path itself, so it says "distributed" on a 1-process mesh too."""

    @property
    def is_distributed(self):
        return True


def join_process_group(device):
    """torchrun's process group if there is one, else a 1-process group on a free local port."""
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return AlwaysSharded(**dataclasses.asdict(setup_distributed(device)))


def main(argv=None):
    args = parse_args(argv)
    check = args.check
    cuda = torch.cuda.is_available() and not check
    what = (f"dnafm_7b block shape x{args.layers} layers, {args.batch}x{args.seq_len}, FSDP2 + activation "
            f"checkpointing, bf16: MFU")
    meta = {"machine": machine_info(), "load": load_str()}
    if not cuda and not check:
        rows = [row(5, what, target=TARGET, note="not measured (no GPU)")]
        print(format_table(rows))
        print(f"wrote {write_rows('bench_fsdp', rows, meta, args.out)}")
        return rows

    # the dnafm_7b preset with fewer layers (and, for --check, a tiny width), the way 03 would run it
    overrides = [f"--model.num_layers={args.layers}", f"--pretrain.seq_len={args.seq_len}",
                 f"--pretrain.batch_size={args.batch}", "--pretrain.parallel=fsdp", "--pretrain.meta_init=true",
                 "--pretrain.activation_checkpointing=true", "--pretrain.compile=false",
                 f"--run.device={'cuda' if cuda else 'cpu'}"] + (TINY if check else [])
    cfg, _ = load_config(["--config", str(ROOT / "configs" / "dnafm_7b.toml"), *overrides])
    pretrain = load_script("03_pretrain.py")
    world = join_process_group(cfg.run.device)
    device = torch.device(world.device)
    try:
        with torch.device("meta"):
            net = MaskedLM(cfg.model)
        net = pretrain.parallelize(net, cfg, world, bf16=True, seed=cfg.run.seed)
        opt = pretrain.configure_optimizer(net, cfg.pretrain, device)
        masker = pretrain.Masker(cfg.model.vocab_size, CHAR_SPECIALS, MASK_ID, cfg.pretrain.mask_prob, device)
        g = torch.Generator(device=device).manual_seed(cfg.run.seed + world.rank)
        ids = torch.randint(5, 9, (args.batch, args.seq_len), generator=g, device=device)  # A G C T
        inputs, positions, labels = masker(ids, cfg.run.seed, args.batch, slice(None))

        def step():  # FSDP's MixedPrecisionPolicy runs the blocks in bf16
            loss = mlm_loss(net(inputs, positions=positions), labels) / (labels != -100).sum()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        for _ in range(args.warmup):
            step()
        times = []
        for _ in range(args.steps):
            sync(device, check)
            t0 = time.perf_counter()
            loss = step()
            sync(device, check)
            times.append(time.perf_counter() - t0)
        if not torch.isfinite(loss.detach()):
            raise RuntimeError(f"loss is {loss.item()}")
    finally:
        teardown_distributed()

    dt = statistics.median(times)
    tok_s = args.batch * args.seq_len / dt  # per GPU
    flops_token = flops_per_token(cfg.model, args.seq_len, head_fraction=cfg.pretrain.mask_prob)
    params = sum(p.numel() for p in net.parameters())  # a DTensor's numel() is its global size
    peak = gpu_peak_tflops(args.peak_tflops, check)
    mfu = flops_token * tok_s / (peak * 1e12) if peak else None
    mem = cuda_call("max_memory_allocated", check=check, default=0) / 2**30
    rows = [row(5, what.replace("dnafm_7b block shape", "tiny shape") if check else what,
                f"peak {peak:,.0f} TFLOP/s" if peak else "peak unknown",
                f"{tok_s:,.0f} tok/s/GPU, {flops_token * tok_s / 1e12:,.0f} TFLOP/s", mfu, "" if check else TARGET,
                f"{cuda_call('get_device_name', 0, check=check, default='no GPU')} x{world.size}; "
                f"{params / 1e9:.2f} B params; peak mem {mem:,.1f} GiB; median of {args.steps} steps"
                + ("" if peak else "; MFU not computed: unknown GPU peak (--peak-tflops)")
                + (f"; CPU + gloo code-path check (loss {loss.item():.3f}), not a figure" if check else ""))]
    if world.is_main:
        print(format_table(rows))
        print(f"wrote {write_rows('bench_fsdp', rows, meta, args.out)}")
    return rows


if __name__ == "__main__":
    main()
