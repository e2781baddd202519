"""03_pretrain.py --dry-run: what a run needs per GPU and how long it takes, from the config alone (the
model is built on the meta device: no memory, no GPU). Also the GPU table MFU is computed from."""

import os

import torch

import model as modeling
from shelf.config import Config
from shelf.errors import ConfigError

# bf16 dense peak (TFLOP/s) and memory (GB) of likely GPUs; the first name in get_device_name() wins.
GPUS = [("H100 PCIe", 756, 80), ("H100", 989, 80), ("H200", 989, 141), ("A100", 312, 80), ("RTX 4090", 165, 24)]


def gpu_spec(name: str) -> tuple[float, float] | None:
    return next(((tflops, mem_gb) for key, tflops, mem_gb in GPUS if key.lower() in name.lower()), None)


def dry_run(cfg: Config) -> None:
    train, mcfg = cfg.pretrain, cfg.model
    gpus = int(os.environ.get("WORLD_SIZE", 0)) or train.dry_run_gpus
    fsdp = train.parallel == "fsdp" and gpus > 1
    if (spec := gpu_spec(train.dry_run_gpu)) is None:
        raise ConfigError(f"pretrain.dry_run_gpu = '{train.dry_run_gpu}': known GPUs: {', '.join(g[0] for g in GPUS)}")
    peak_tflops, gpu_gb = train.gpu_peak_tflops or spec[0], spec[1]
    if cfg.run.device == "cpu":  # a CPU preset (the demo): say so, rather than plan GPUs silently
        print(f"run.device = 'cpu': this config trains on the CPU, which this plan does not time; below: the plan for "
              f"{gpus} x {train.dry_run_gpu} (--pretrain.dry_run_gpu, --pretrain.dry_run_gpus), with --run.device=cuda")
    with torch.device("meta"):  # no memory, no time: 7 B parameters are just shapes here
        net = modeling.MaskedLM(mcfg)
    n_params, n_block = modeling.num_parameters(net), sum(p.numel() for p in net.encoder.blocks[0].parameters())
    flops_token = modeling.flops_per_token(mcfg, train.seq_len, head_fraction=train.mask_prob)
    tokens_gpu = train.batch_size * train.seq_len  # per micro-batch per GPU; tokens_step: per optimizer step
    tokens_step, GB = tokens_gpu * train.grad_accum * gpus, 1e9
    act_bytes = 4 if train.precision == "fp32" else 2  # "auto" means bf16 on the GPUs this plan is for

    # Per-GPU memory: fp32 weights, gradients and AdamW's two moments, 16 bytes per parameter (/ world size
    # under FSDP). FSDP also holds unsharded bf16 params and grads of ~2 blocks (computing, prefetched).
    plan = {name: size * n_params / (gpus if fsdp else 1) for name, size in
            (("weights (fp32)", 4), ("gradients (fp32)", 4), ("AdamW moments (2 x fp32)", 8))}
    if fsdp:
        plan["FSDP unsharded blocks (~2, params + grads)"] = 2 * 2 * n_block * act_bytes
    # Activations a block keeps for backward, per token (flash attention: no T x T scores): ln_attn in C, qkv in C,
    # SDPA q k v + out 4C, proj in C, ln_mlp in C, fc1 in C = 9C, plus the MLP's inner tensors: GELU in + out 2F,
    # SwiGLU fc1 out 2F + silu out F + product F = 4F. With F = 4C: 17C elements = 34C bytes in bf16, Korthikanti
    # et al.'s 34 s b h per layer.
    per_layer = tokens_gpu * (9 * mcfg.hidden_size + (4 if mcfg.mlp == "swiglu" else 2) * mcfg.ffn_size) * act_bytes
    # embeddings; the LM head at the masked tokens (dense, GELU, LayerNorm; fp32 logits and their gradient)
    embed_head = tokens_gpu * 2 * mcfg.hidden_size * act_bytes + train.mask_prob * tokens_gpu * (
        3 * mcfg.hidden_size * act_bytes + 8 * mcfg.vocab_size)
    # activation checkpointing keeps only each block's input and recomputes one block at a time
    activations = {False: mcfg.num_layers * per_layer + embed_head,
                   True: mcfg.num_layers * tokens_gpu * mcfg.hidden_size * act_bytes + per_layer + embed_head}
    print(f"{cfg.run.name}: {n_params:,} parameters ({n_block:,} per block x {mcfg.num_layers} blocks)")
    print(f"  FLOPs per token (training, LM head at the {train.mask_prob:.0%} masked tokens): {flops_token:.3e}")
    print(f"  tokens per step: {tokens_step:,} = {train.batch_size} x {train.seq_len:,} tokens x {train.grad_accum} "
          f"accumulation x {gpus} GPUs; {train.max_steps:,} steps = {tokens_step * train.max_steps:.3e} tokens")
    layout = f"FSDP2 over {gpus} GPUs" if fsdp else ("DDP, full replica per GPU" if gpus > 1 else "one GPU")
    print(f"  memory per GPU ({layout}, {'bf16' if act_bytes == 2 else 'fp32'} activations, "
          f"micro-batch {train.batch_size} x {train.seq_len:,}):")
    print("\n".join(f"    {name:<44} {size / GB:>9.2f} GB" for name, size in plan.items()))
    for ac, act in activations.items():
        total = sum(plan.values()) + act
        label = f"activations, checkpointing {'on' if ac else 'off'}"
        verdict = "fits" if total < 0.9 * gpu_gb * GB else "does NOT fit"
        print(f"    {label:<44} {act / GB:>9.2f} GB   -> total {total / GB:.2f} GB: {verdict} in {train.dry_run_gpu}'s "
              f"{gpu_gb:g} GB{' <- configured' if ac == train.activation_checkpointing else ''}")
    print("    (estimate: flash attention, no allocator fragmentation or communication buffers; keep ~10% spare)")
    total_flops = flops_token * tokens_step * train.max_steps
    seconds = total_flops / (gpus * peak_tflops * 1e12 * train.dry_run_mfu)
    wall = f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
    gpu_hours = seconds * gpus / 3600
    print(f"  time: {total_flops:.3e} FLOPs at {train.dry_run_mfu:.0%} MFU on {gpus} x {train.dry_run_gpu} "
          f"({peak_tflops:g} TFLOP/s bf16 dense) = {wall} wall-clock, "
          f"{gpu_hours:,.{0 if gpu_hours >= 100 else 1}f} GPU-hours")
