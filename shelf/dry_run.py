"""
03_pretrain.py --dry-run: what a run needs per GPU and how long it takes, from the config alone
(the model is built on the meta device: no memory, no GPU). Also the GPU table MFU is computed from.
"""

from __future__ import annotations

import os

import torch

import model as modeling
from shelf.config import Config
from shelf.errors import ConfigError


# bf16 dense tensor-core peak (TFLOP/s) and memory (GB) of the GPUs a lab is likely to have; for MFU and
# the --dry-run plan. The first name that occurs in torch.cuda.get_device_name() wins.
GPUS = [("H100 PCIe", 756, 80), ("H100", 989, 80), ("H200", 989, 141), ("A100", 312, 80), ("RTX 4090", 165, 24)]


def gpu_spec(name: str) -> tuple[float, float] | None:
    for key, tflops, mem_gb in GPUS:
        if key.lower() in name.lower():
            return tflops, mem_gb
    return None


def activation_elements(mcfg: modeling.ModelConfig) -> int:
    """Activations one block keeps for backward, in elements per token (flash attention: no T x T scores).
    ln_attn in C, qkv in C, SDPA q k v + out 4C, proj in C, ln_mlp in C, fc1 in C = 9C, plus the MLP
    inner tensors: GELU in + out 2F, SwiGLU fc1 out 2F + silu out F + product F = 4F. With F = 4C
    this is 17C elements = 34C bytes in bf16, Korthikanti et al.'s 34 s b h per layer."""
    return 9 * mcfg.hidden_size + (4 if mcfg.mlp == "swiglu" else 2) * mcfg.ffn_size


def dry_run(cfg: Config) -> None:
    pc, mcfg = cfg.pretrain, cfg.model
    world = int(os.environ.get("WORLD_SIZE", 0)) or pc.dry_run_gpus
    fsdp = pc.parallel == "fsdp" and world > 1
    spec = gpu_spec(pc.dry_run_gpu)
    if spec is None:
        raise ConfigError(f"pretrain.dry_run_gpu = '{pc.dry_run_gpu}': known GPUs: {', '.join(g[0] for g in GPUS)}")
    peak_tflops, gpu_mem_gb = pc.gpu_peak_tflops or spec[0], spec[1]
    with torch.device("meta"):  # no memory, no time: 7 B parameters are just shapes here
        net = modeling.MaskedLM(mcfg)
    n_params = modeling.num_parameters(net)
    n_block = sum(p.numel() for p in net.encoder.blocks[0].parameters())
    fpt = modeling.flops_per_token(mcfg, pc.seq_len, head_fraction=pc.mask_prob)
    tokens_gpu = pc.batch_size * pc.seq_len  # per micro-batch per GPU
    tokens_step = tokens_gpu * pc.grad_accum * world
    bf16 = pc.precision != "fp32"  # "auto" means bf16 on the GPUs this plan is for
    act_bytes = 2 if bf16 else 4
    GB = 1e9

    # Per-GPU memory. fp32 master weights, fp32 gradients and AdamW's two fp32 moments: 16 bytes per
    # parameter, divided by the world size under FSDP. FSDP also holds unsharded bf16 copies of about two
    # blocks at a time (the one computing and the one prefetched), their params and their grads.
    shard = world if fsdp else 1
    plan = {"weights (fp32)": 4 * n_params / shard, "gradients (fp32)": 4 * n_params / shard,
            "AdamW moments (2 x fp32)": 8 * n_params / shard}
    if fsdp:
        plan["FSDP unsharded blocks (~2, params + grads)"] = 2 * 2 * n_block * act_bytes
    per_layer = tokens_gpu * activation_elements(mcfg) * act_bytes
    # embeddings; the LM head at the masked tokens (dense, GELU, LayerNorm; fp32 logits and their gradient)
    embed_head = tokens_gpu * 2 * mcfg.hidden_size * act_bytes + pc.mask_prob * tokens_gpu * (
        3 * mcfg.hidden_size * act_bytes + 8 * mcfg.vocab_size)
    act_full = mcfg.num_layers * per_layer + embed_head
    # activation checkpointing keeps only each block's input and recomputes one block at a time
    act_ckpt = mcfg.num_layers * tokens_gpu * mcfg.hidden_size * act_bytes + per_layer + embed_head
    state_total = sum(plan.values())

    print(f"{cfg.run.name}: {n_params:,} parameters ({n_block:,} per block x {mcfg.num_layers} blocks)")
    print(f"  FLOPs per token (training, LM head at the {pc.mask_prob:.0%} masked tokens): {fpt:.3e}")
    print(f"  tokens per step: {tokens_step:,} = {pc.batch_size} x {pc.seq_len:,} tokens x {pc.grad_accum} "
          f"accumulation x {world} GPUs; {pc.max_steps:,} steps = {tokens_step * pc.max_steps:.3e} tokens")
    layout = f"FSDP2 over {world} GPUs" if fsdp else ("DDP, full replica per GPU" if world > 1 else "one GPU")
    print(f"  memory per GPU ({layout}, {'bf16' if bf16 else 'fp32'} activations, "
          f"micro-batch {pc.batch_size} x {pc.seq_len:,}):")
    for name, b in plan.items():
        print(f"    {name:<44} {b / GB:>9.2f} GB")
    for ac, act in ((False, act_full), (True, act_ckpt)):
        chosen = " <- configured" if ac == pc.activation_checkpointing else ""
        total = state_total + act
        verdict = "fits" if total < 0.9 * gpu_mem_gb * GB else "does NOT fit"
        label = f"activations, checkpointing {'on' if ac else 'off'}"
        print(f"    {label:<44} {act / GB:>9.2f} GB   -> total {total / GB:.2f} GB: {verdict} in "
              f"{pc.dry_run_gpu}'s {gpu_mem_gb:g} GB{chosen}")
    print("    (estimate: flash attention, no allocator fragmentation or communication buffers; keep ~10% spare)")
    total_flops = fpt * tokens_step * pc.max_steps
    seconds = total_flops / (world * peak_tflops * 1e12 * pc.dry_run_mfu)
    wall = f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
    gpu_hours = seconds * world / 3600
    print(f"  time: {total_flops:.3e} FLOPs at {pc.dry_run_mfu:.0%} MFU on {world} x {pc.dry_run_gpu} "
          f"({peak_tflops:g} TFLOP/s bf16 dense) = {wall} wall-clock, "
          f"{gpu_hours:,.{0 if gpu_hours >= 100 else 1}f} GPU-hours")
