"""
Figure 1: one training step (forward + backward + AdamW) of the tinydnabert shape, ours vs Hugging Face.

    python bench/bench_model.py                          # issue size: batch 8 x 512, CPU fp32
    python bench/bench_model.py --batch 2 --seq-len 128 --repeats 3     # quick
    python bench/bench_model.py --profile                # + a torch.profiler table per contender
    python bench/bench_model.py --device cuda            # GPU: bf16 autocast, eager, and compiled ours
    python bench/bench_model.py --check                  # the GPU rows' code path on CPU, tiny model (no figure)

Contenders, same weights (ours_to_hf(..., "roberta")), same batch, same masking (15%, 80/10/10), both in train
mode with the same dropout (0.1 hidden, 0.1 attention), one AdamW each:
    hf          transformers.RobertaForMaskedLM, attn_implementation="sdpa", loss over all positions
                with ignore_index (its logits are (B, T, V))
    ours        MaskedLM(input_ids) -> (B, T, V) logits, then the same cross-entropy: the same work as HF
    ours-masked MaskedLM(input_ids, positions=...) -> the LM head only at the K = 15% masked positions per row
The steps are interleaved round by round (the machine is shared), and each figure is the median over
rounds of ours/hf measured in the same round. Printed as a table, written to bench/results/bench_model.csv.
"""

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from benchlib import (cuda_call, format_table, gpu_peak_tflops, interleaved_times, load_script, load_str,  # noqa: E402
                      machine_info, paired_ratio, row, write_rows)
from model import MaskedLM, ModelConfig, flops_per_token, mlm_loss  # noqa: E402
from shelf.hf_keys import ours_to_hf  # noqa: E402

BPE_SPECIALS, MASK_ID = [0, 1, 2, 3, 4], 4  # <s> <pad> </s> <unk> <mask>, never masked
TINY = dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, ffn_size=64, max_seq_len=64)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=7, help="timed rounds (median over them)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--tiny", action="store_true", help=f"a tiny model ({TINY}) to check the code runs")
    p.add_argument("--check", action="store_true", help="run the GPU rows' code (bf16, compile) on CPU, --tiny")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (aot_eager: a quick --check)")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table per contender")
    p.add_argument("--out", type=Path, default=None, help="CSV path (default bench/results/bench_model.csv)")
    p.add_argument("--seed", type=int, default=1337)
    args = p.parse_args(argv)
    if args.check:
        args.tiny, args.device = True, "cpu"
    return args


def hf_roberta_config(cfg: ModelConfig, attn_implementation="sdpa"):
    """The transformers.RobertaConfig of a RoBERTa-shaped ModelConfig (post-LN, learned positions, GELU)."""
    import transformers

    return transformers.RobertaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.ffn_size,
        max_position_embeddings=cfg.max_seq_len + cfg.pad_token_id + 1, pad_token_id=cfg.pad_token_id,
        type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.layer_norm_eps, hidden_act="gelu",
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attention_dropout,
        attn_implementation=attn_implementation)


def masked_batch(cfg: ModelConfig, batch, seq_len, seed, mask_prob=0.15):
    """A packed batch (no padding) of plain tokens, MLM-masked by 03_pretrain.py's own Masker: 15% targets,
    80% <mask> / 10% random / 10% kept. Returns input_ids (B, T), the masked positions (B, K), their labels
    (B, K), and the same labels spread over (B, T) for HF (-100 = no target)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(BPE_SPECIALS), cfg.vocab_size, (batch, seq_len), generator=g)
    masker = load_script("03_pretrain.py").Masker(cfg.vocab_size, BPE_SPECIALS, MASK_ID, mask_prob, "cpu")
    inputs, positions, labels = masker(ids, seed, batch, slice(None))
    return inputs, positions, labels, torch.full_like(ids, -100).scatter(1, positions, labels)


def build_models(cfg: ModelConfig, device, seed):
    """Ours and HF with the same weights, both in train mode."""
    from transformers import RobertaForMaskedLM

    torch.manual_seed(seed)
    ours = MaskedLM(cfg).to(device).train()
    hf = RobertaForMaskedLM(hf_roberta_config(cfg)).to(device).train()
    hf.load_state_dict(ours_to_hf(ours.state_dict(), "roberta"), strict=True)
    return ours, hf


def loss_fns(ours, hf, batch, V):
    """name -> () -> scalar loss (mean CE over the targets), the three contenders."""
    inputs, positions, labels, full_labels = batch

    def hf_loss():
        return hf(input_ids=inputs, labels=full_labels).loss  # (B*T, V) logits, CE ignoring -100

    def ours_loss():
        logits = ours(inputs)  # (B, T, V): the same work as HF
        return F.cross_entropy(logits.view(-1, V).float(), full_labels.view(-1), ignore_index=-100)

    def ours_masked_loss():  # LM head at the K = 15% drawn positions only, as 03 trains
        return mlm_loss(ours(inputs, positions=positions), labels) / (labels != -100).sum()
    return {"hf": hf_loss, "ours": ours_loss, "ours-masked": ours_masked_loss}


@torch.no_grad()
def check_same_loss(ours, hf, fns):
    """Eval mode (no dropout): the three losses must agree, else the timing compares different models."""
    ours.eval(), hf.eval()
    losses = {n: fn().item() for n, fn in fns.items()}
    ours.train(), hf.train()
    return max(abs(v - losses["hf"]) for v in losses.values()), losses["hf"]


def make_step(model, fn, autocast_dtype=None, device="cpu"):
    """One training step: zero grads, forward + loss (under autocast on GPU), backward, AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-5)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.split(":")[0], dtype=autocast_dtype,
                            enabled=autocast_dtype is not None):
            loss = fn()
        loss.backward()
        opt.step()
    return step


def profile_steps(steps, top=15):
    from torch.profiler import ProfilerActivity, profile

    for name, step in steps.items():
        step()  # warm
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(f"\n--- profile: {name} (one step, sorted by self CPU time) ---")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch.cuda.is_available() is False")
    cfg = ModelConfig(**TINY) if args.tiny else ModelConfig()  # the defaults ARE tinydnabert
    B, T, V = args.batch, args.seq_len, cfg.vocab_size
    shape = f"{'tiny' if args.tiny else 'tinydnabert'} {B}x{T}"
    load_before = load_str()
    print(f"figure 1: training step, {shape}, {device}, torch threads {torch.get_num_threads()}, "
          f"load {load_before}")

    ours, hf = build_models(cfg, device, args.seed)
    batch = [t.to(device) for t in masked_batch(cfg, B, T, args.seed)]
    fns = loss_fns(ours, hf, batch, V)
    max_diff, ref_loss = check_same_loss(ours, hf, fns)
    print(f"same weights, eval-mode loss {ref_loss:.4f}, max |ours - hf| = {max_diff:.2e}")
    if max_diff > 1e-3 * max(1.0, abs(ref_loss)):
        raise SystemExit(f"error: ours and HF disagree (loss diff {max_diff:.2e}): not the same model")

    rows = []
    if device == "cpu" and not args.check:
        models = {"hf": hf, "ours": ours, "ours-masked": ours}
        steps = {n: make_step(models[n], fn) for n, fn in fns.items()}
        if args.profile:
            profile_steps(steps)
        times = interleaved_times(steps, args.repeats, args.warmup)
        med = {n: statistics.median(t) for n, t in times.items()}
        what = f"train step {shape} CPU fp32, time ours/HF"
        note = f"median of {args.repeats} interleaved rounds; {args.threads} threads"
        rows.append(row(1, what + " (full logits)", f"HF sdpa {med['hf'] * 1e3:,.0f} ms",
                        f"{med['ours'] * 1e3:,.0f} ms", paired_ratio(times["ours"], times["hf"]), "<= 1.0", note))
        rows.append(row(1, what + " (logits at masked only)", f"HF sdpa {med['hf'] * 1e3:,.0f} ms",
                        f"{med['ours-masked'] * 1e3:,.0f} ms",
                        paired_ratio(times["ours-masked"], times["hf"]), "<= 0.85", note))
        for what in ("GPU bf16 step, eager, time ours/HF", "GPU bf16 step, compiled ours vs eager HF"):
            rows.append(row(1, what, target="<= 1.0", note="not measured (no GPU)"))
    else:
        rows += gpu_rows(cfg, ours, hf, fns, batch, args, shape)

    load_after = load_str()
    print(format_table(rows))
    meta = {"machine": machine_info(), "load before/after": f"{load_before} | {load_after}"}
    path = write_rows("bench_model", rows, meta, args.out)
    print(f"load (1/5/15 min) before {load_before}, after {load_after}; wrote {path}")
    return rows


def gpu_rows(cfg, ours, hf, fns, batch, args, shape):
    """GPU: bf16 autocast; HF eager vs ours eager, and ours under torch.compile. Also tokens/s and MFU
    of ours-masked (model FLOPs, LM head counted at the masked fraction). --check: the same on CPU."""
    device, check = args.device, args.check
    models = {"hf": hf, "ours": ours, "ours-masked": ours}
    steps = {n: make_step(models[n], fn, torch.bfloat16, device) for n, fn in fns.items()}
    compiled = torch.compile(ours, backend=args.compile_backend)  # shares ours' parameters; its own AdamW
    steps["ours-masked-compiled"] = make_step(
        ours, loss_fns(compiled, hf, batch, cfg.vocab_size)["ours-masked"], torch.bfloat16, device)
    steps["ours-masked-compiled"]()  # compile outside the timing (first call)
    times = interleaved_times(steps, args.repeats, args.warmup, device, check)
    med = {n: statistics.median(t) for n, t in times.items()}
    tokens = args.batch * args.seq_len
    peak = gpu_peak_tflops(check=check)
    rows = []
    gpu = cuda_call("get_device_name", 0, check=check, default="no GPU")
    note = f"{gpu}{'; CPU code-path check, not a figure' if check else ''}; median of {args.repeats} interleaved rounds"
    for name, what, target in (("ours", "eager, full logits", "<= 1.0"),
                               ("ours-masked", "eager, logits at masked only", "<= 0.85"),
                               ("ours-masked-compiled", "compiled, logits at masked only", "<= 0.85")):
        tok_s = tokens / med[name]
        fpt = flops_per_token(cfg, args.seq_len, head_fraction=1.0 if name == "ours" else 0.15)
        mfu = f", MFU {fpt * tok_s / (peak * 1e12):.1%}" if peak else ""
        rows.append(row(1, f"train step {shape} GPU bf16 {what}, time ours/HF eager",
                        f"HF sdpa eager {tokens / med['hf']:,.0f} tok/s", f"{tok_s:,.0f} tok/s{mfu}",
                        paired_ratio(times[name], times["hf"]), "" if check else target, note))
    return rows


if __name__ == "__main__":
    main()
