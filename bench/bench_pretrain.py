"""
Figure 4, and the tinydnabert rows of figure 5: 03_pretrain.py's own training step and data pipeline.

    python bench/bench_pretrain.py                   # CPU: tinydnabert shape, batch 4 x 512, fp32
    python bench/bench_pretrain.py --quick           # CPU: batch 2 x 128, a few rounds (seconds)
    python bench/bench_pretrain.py --device cuda     # GPU: batch 128 x 512 (the preset's per-GPU batch),
                                                     # bf16, eager and compiled: tokens/s and MFU
    python bench/bench_pretrain.py --check           # the GPU rows' code path on CPU, tiny shape (no figure)

Everything timed is 03's code, not a copy: parallelize() (per-block compile), configure_optimizer(),
get_batch() (memmap read of packed blocks, pinned non-blocking copy, Masker on the device) and
forward_backward() + AdamW, with the same one host sync per step as the training loop.

Rows (bench/results/pretrain.csv):
  4  data loading + masking of one batch vs the training step of that batch, timed in interleaved
     rounds: ratio = step / data (how many times faster the data is), target >= 20
  4  the training step's tokens/s on CPU (fp32), for reference
  5  GPU, bf16, seq_len 512: tokens/s and MFU, eager and compiled (target MFU >= 0.35 on an H100,
     i.e. TinyDNABERT's 26 B tokens in under 4 GPU-hours); "not measured (no GPU)" without one
"""

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from benchlib import (cuda_call, format_table, gpu_peak_tflops, interleaved_times, load_script, load_str,  # noqa: E402
                      machine_info, paired_ratio, row, write_rows)
from shelf.config import load_config  # noqa: E402
from shelf.distributed import World  # noqa: E402
from model import MaskedLM, flops_per_token  # noqa: E402

SPECIALS, MASK_ID = [0, 1, 2, 3, 4], 4  # bpe: <s> <pad> </s> <unk> <mask>
TINY = ["--model.hidden_size=32", "--model.num_layers=2", "--model.num_heads=2", "--model.ffn_size=64",
        "--model.vocab_size=64"]
MFU_TARGET = ">= 0.35"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--batch", type=int, default=None, help="sequences per step (CPU 4, GPU 128)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (512; --quick 128)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (median over them)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (compilation happens here)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (CPU)")
    p.add_argument("--quick", action="store_true", help="CPU batch 2 x 128, 3 rounds")
    p.add_argument("--check", action="store_true", help="run the GPU rows' code (bf16, compile) on CPU, tiny shape")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="bf16 peak of the GPU, if not in 03's table")
    p.add_argument("--out", type=Path, default=None, help="CSV path (default bench/results/pretrain.csv)")
    return p.parse_args(argv)


def token_file(directory: Path, n_tokens: int, vocab_size: int, seed: int = 0) -> Path:
    """A flat uint16 token file like 02's: random real tokens, segments of ~150 tokens wrapped <s> … </s>."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(len(SPECIALS), vocab_size, n_tokens, dtype=np.uint16)
    ids[::150], ids[149::150] = 0, 2
    path = directory / "train.bin"
    ids.tofile(path)
    return path


class Setup:
    """One model + optimizer + data pipeline, built the way 03_pretrain.py builds them."""

    def __init__(self, overrides: list[str], device: str, compile: bool, tmp: Path):
        self.pretrain = load_script("03_pretrain.py")
        cfg, _ = load_config(["--config", str(ROOT / "configs" / "tinydnabert.toml"), f"--run.device={device}",
                              f"--pretrain.compile={'true' if compile else 'false'}", *overrides])
        self.cfg, train = cfg, cfg.pretrain
        self.world = World(device=torch.device(device))
        self.bf16 = device == "cuda" or train.precision == "bf16"
        torch.manual_seed(cfg.run.seed)
        self.model = self.pretrain.parallelize(MaskedLM(cfg.model), cfg, self.world, self.bf16, cfg.run.seed)
        self.optimizer = self.pretrain.configure_optimizer(self.model, train, torch.device(device))
        self.autocast = (torch.autocast(device, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext())
        n_tokens = train.seq_len * max(4 * train.batch_size, 4096)  # far more blocks than the run reads: random rows
        self.stream = self.pretrain.BlockStream(token_file(tmp, n_tokens, cfg.model.vocab_size), train.seq_len,
                                                cfg.run.seed)
        self.masker = self.pretrain.Masker(cfg.model.vocab_size, SPECIALS, MASK_ID,
                                           train.mask_prob, torch.device(device))
        self.step_no = 0
        self.batch = self.get_batch()  # the step below reuses one batch: it times the model alone

    def get_batch(self):
        self.step_no += 1
        return self.pretrain.get_batch(self.stream, self.masker, self.step_no, self.cfg.pretrain, self.world)

    def data(self):
        return sum(t.sum().item() for t in self.get_batch())  # wait until the batch is really on the device

    def step(self):
        loss, grad_norm = self.pretrain.forward_backward(self.model, self.batch, self.cfg.pretrain, self.world,
                                                         self.autocast)
        values = torch.stack([loss, grad_norm])  # no host sync: the loop reads these back once per log interval
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return values


def main(argv=None):
    args = parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch.cuda.is_available() is False")
    torch.set_num_threads(args.threads)
    batch = args.batch or (128 if cuda else 2 if args.quick else 4)
    seq_len = args.seq_len or (128 if args.quick and not cuda else 512)
    repeats = 3 if args.quick else args.repeats
    shape = [f"--pretrain.batch_size={batch}", f"--pretrain.seq_len={seq_len}", "--pretrain.grad_accum=1"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # ---- figure 4 (and the CPU step's tokens/s): 03's data pipeline vs 03's step, same batch
        device = "cuda" if cuda else "cpu"
        s = Setup(shape, device, compile=False, tmp=tmp)
        times = interleaved_times({"data": s.data, "step": s.step}, repeats, args.warmup, device)
        data_s, step_s = statistics.median(times["data"]), statistics.median(times["step"])
        precision = "bf16" if s.bf16 else "fp32"
        where = f"{device} {precision}, tinydnabert shape, batch {batch} x {seq_len}"
        rows.append(row(4, f"data loading + masking per batch vs the training step ({where})",
                        baseline=f"step {step_s * 1e3:,.1f} ms", ours=f"data {data_s * 1e3:,.2f} ms",
                        ratio=paired_ratio(times["step"], times["data"]), target=">= 20",
                        note=f"ratio = step / data; median of {repeats} interleaved rounds"))
        if not cuda:
            rows.append(row(4, f"training step tokens/s ({where})", ours=f"{batch * seq_len / step_s:,.0f} tok/s",
                            note=f"{torch.get_num_threads()} threads; forward + backward + clip + AdamW"))

        # ---- figure 5, tinydnabert rows: bf16 on the GPU, eager vs per-block compiled
        if cuda or args.check:
            rows += gpu_rows(shape if cuda else shape[:1] + ["--pretrain.seq_len=64", "--model.max_seq_len=64"] + TINY
                             + ["--pretrain.precision=bf16"], device, repeats, args, tmp)
        else:
            rows += [row(5, f"GPU bf16 training step, tinydnabert, seq_len 512, {mode}: MFU", target=MFU_TARGET,
                         note="not measured (no GPU)") for mode in ("eager", "compiled")]
    meta = {"machine": machine_info(), "load": load_str()}
    print(format_table(rows))
    print(f"wrote {write_rows('pretrain', rows, meta, args.out)}")
    return rows


def gpu_rows(overrides: list[str], device: str, repeats: int, args, tmp: Path) -> list[dict]:
    eager = Setup(overrides, device, compile=False, tmp=tmp)
    compiled = Setup(overrides, device, compile=True, tmp=tmp)
    compiled.step()  # compile outside the timing
    check = args.check  # on CPU: the same torch.cuda calls (benchlib.cuda_call), answered by its defaults or a mock
    times = interleaved_times({"eager": eager.step, "compiled": compiled.step}, repeats, args.warmup, device, check)
    train, mcfg = eager.cfg.pretrain, eager.cfg.model
    tokens = train.batch_size * train.seq_len
    flops_token = flops_per_token(mcfg, train.seq_len, head_fraction=train.mask_prob)
    peak = gpu_peak_tflops(args.peak_tflops, check)
    name = cuda_call("get_device_name", 0, check=check, default="no GPU")
    name += "; CPU code-path check, not a figure" if check else ""
    out = []
    for mode in ("eager", "compiled"):
        dt = statistics.median(times[mode])
        tok_s = tokens / dt
        mfu = flops_token * tok_s / (peak * 1e12) if peak else None
        note = f"{name}; median of {repeats} steps"
        if mode == "compiled":
            note += f"; {paired_ratio(times['eager'], times['compiled']):.2f}x the eager speed"
        note += f"; peak mem {cuda_call('max_memory_allocated', check=check, default=0) / 2**30:,.1f} GiB"
        note += "" if peak else "; MFU not computed: unknown GPU peak (--peak-tflops)"
        out.append(row(5, f"GPU bf16 training step, tinydnabert, seq_len {train.seq_len}, {mode}: MFU",
                       f"peak {peak:,.0f} TFLOP/s" if peak else "", f"{tok_s:,.0f} tok/s", mfu,
                       "" if check else MFU_TARGET, note))
    return out


if __name__ == "__main__":
    main()
