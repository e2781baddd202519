"""
Figure 1: one training step (forward + backward + AdamW) of the tinydnabert shape, ours vs Hugging Face.

    python bench/bench_model.py                          # issue size: batch 8 x 512, CPU fp32
    python bench/bench_model.py --batch 2 --seq-len 128 --repeats 3     # quick
    python bench/bench_model.py --profile                # + a torch.profiler table per contender
    python bench/bench_model.py --device cuda            # GPU: bf16 autocast, eager, and compiled ours

Contenders, same weights (ours_to_hf_roberta), same batch, same masking (15%, 80/10/10), both in train
mode with the same dropout (0.1 hidden, 0.1 attention), one AdamW each:
    hf          transformers.RobertaForMaskedLM, attn_implementation="sdpa", loss over all positions
                with ignore_index (its logits are (B, T, V))
    ours        MaskedLM(input_ids) -> (B, T, V) logits, then the same cross-entropy: the same work as HF
    ours-masked MaskedLM(input_ids, labels=...) -> the LM head only at the ~15% masked positions
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
from benchlib import (format_table, gpu_peak_tflops, interleaved_times, load_script, load_str,  # noqa: E402
                      machine_info, paired_ratio, row, write_rows)
from model import MaskedLM, ModelConfig, flops_per_token  # noqa: E402
from shelf.hf_keys import ours_to_hf_roberta  # noqa: E402

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
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table per contender")
    p.add_argument("--out", type=Path, default=None, help="CSV path (default bench/results/bench_model.csv)")
    p.add_argument("--seed", type=int, default=1337)
    return p.parse_args(argv)


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
    80% <mask> / 10% random / 10% kept. Returns input_ids (B, T) and labels (B, T), -100 = no target."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(BPE_SPECIALS), cfg.vocab_size, (batch, seq_len), generator=g)
    masker = load_script("03_pretrain.py").Masker(cfg.vocab_size, cfg.vocab_size, BPE_SPECIALS, MASK_ID,
                                                   mask_prob, torch.device("cpu"))
    return masker(ids, seed, batch, slice(None))


def build_models(cfg: ModelConfig, device, seed):
    """Ours and HF with the same weights, both in train mode."""
    from transformers import RobertaForMaskedLM

    torch.manual_seed(seed)
    ours = MaskedLM(cfg).to(device).train()
    hf = RobertaForMaskedLM(hf_roberta_config(cfg)).to(device).train()
    hf.load_state_dict(ours_to_hf_roberta(ours.state_dict()), strict=True)
    return ours, hf


def loss_fns(ours, hf, inputs, labels, V):
    """name -> () -> scalar loss, the three contenders."""
    def hf_loss():
        return hf(input_ids=inputs, labels=labels).loss  # (B*T, V) logits, CE ignoring -100

    def ours_loss():
        logits, _ = ours(inputs)  # (B, T, V): the same work as HF
        return F.cross_entropy(logits.view(-1, V).float(), labels.view(-1), ignore_index=-100)

    def ours_masked_loss():
        return ours(inputs, labels=labels)[1]  # LM head at the ~15% targets only
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
    inputs, labels = masked_batch(cfg, B, T, args.seed)
    inputs, labels = inputs.to(device), labels.to(device)
    fns = loss_fns(ours, hf, inputs, labels, V)
    max_diff, ref_loss = check_same_loss(ours, hf, fns)
    print(f"same weights, eval-mode loss {ref_loss:.4f}, max |ours - hf| = {max_diff:.2e}")
    if max_diff > 1e-3 * max(1.0, abs(ref_loss)):
        raise SystemExit(f"error: ours and HF disagree (loss diff {max_diff:.2e}): not the same model")

    rows = []
    if device == "cpu":
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
        rows += gpu_rows(cfg, ours, hf, fns, inputs, labels, args, shape)

    load_after = load_str()
    print(format_table(rows))
    meta = {"machine": machine_info(), "load before/after": f"{load_before} | {load_after}"}
    path = write_rows("bench_model", rows, meta, args.out)
    print(f"load (1/5/15 min) before {load_before}, after {load_after}; wrote {path}")
    return rows


def gpu_rows(cfg, ours, hf, fns, inputs, labels, args, shape):
    """GPU: bf16 autocast; HF eager vs ours eager, and ours under torch.compile. Also tokens/s and MFU
    of ours-masked (model FLOPs, LM head counted at the masked fraction)."""
    device = args.device
    models = {"hf": hf, "ours": ours, "ours-masked": ours}
    steps = {n: make_step(models[n], fn, torch.bfloat16, device) for n, fn in fns.items()}
    compiled = torch.compile(ours)  # shares ours' parameters; its own AdamW like every contender
    steps["ours-masked-compiled"] = make_step(
        ours, lambda: compiled(inputs, labels=labels)[1], torch.bfloat16, device)
    steps["ours-masked-compiled"]()  # compile outside the timing (first call)
    times = interleaved_times(steps, args.repeats, args.warmup, device)
    med = {n: statistics.median(t) for n, t in times.items()}
    tokens = args.batch * args.seq_len
    peak = gpu_peak_tflops()
    rows = []
    note = f"{torch.cuda.get_device_name(0)}; median of {args.repeats} interleaved rounds"
    for name, what, target in (("ours", "eager, full logits", "<= 1.0"),
                               ("ours-masked", "eager, logits at masked only", "<= 0.85"),
                               ("ours-masked-compiled", "compiled, logits at masked only", "<= 0.85")):
        tok_s = tokens / med[name]
        fpt = flops_per_token(cfg, args.seq_len, head_fraction=1.0 if name == "ours" else 0.15)
        mfu = f", MFU {fpt * tok_s / (peak * 1e12):.1%}" if peak else ""
        rows.append(row(1, f"train step {shape} GPU bf16 {what}, time ours/HF eager",
                        f"HF sdpa eager {tokens / med['hf']:,.0f} tok/s", f"{tok_s:,.0f} tok/s{mfu}",
                        paired_ratio(times[name], times["hf"]), target, note))
    return rows


if __name__ == "__main__":
    main()
