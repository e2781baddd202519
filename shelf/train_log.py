"""03's progress report: a tqdm bar, a printed line per log step and per evaluation, and pretrain_log.csv (a row
for each, from which loss.png is drawn). Only rank 0 writes. On --resume the rows after the checkpoint's step are
dropped (the resumed run logs them again) and the losses of the log interval so far (saved with the checkpoint)
are restored; sync() makes the rows durable together with a checkpoint."""

import contextlib
import csv
import os
import resource
import time

import torch

import model as modeling
from shelf.config import save_config
from shelf.dry_run import gpu_spec
from shelf.files import atomic_write
from shelf.plots import plot_losses
from shelf.progress import progress

COLUMNS = ["step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "mem_gb",
           "val_loss", "val_acc", "val_const_acc", "val_unigram_loss"]


class TrainLog:
    def __init__(self, cfg, world, step: int, losses=()):
        train, self.out, self.enabled = cfg.pretrain, cfg.out_dir, world.is_main
        self.device, self.max_steps = world.device, train.max_steps
        self.tokens_step = train.batch_size * train.seq_len * train.grad_accum * world.size
        # MFU: model FLOPs per token x tokens/s / the GPUs' bf16 peak (pretrain.gpu_peak_tflops, or looked up)
        spec = gpu_spec(torch.cuda.get_device_name(self.device)) if self.device.type == "cuda" else None
        self.peak_flops = (train.gpu_peak_tflops or (spec[0] if spec else 0.0)) * 1e12 * world.size
        self.flops_token = modeling.flops_per_token(cfg.model, train.seq_len, head_fraction=train.mask_prob)
        self.rows, self.t_last, self.step_last, self.plotted = [], time.perf_counter(), step, -1
        self.losses = list(losses)  # the training losses since the last row (on --resume: from the checkpoint)
        self.bar = progress(total=train.max_steps, initial=step, desc="pretrain", unit="step", disable=not self.enabled,
                        dynamic_ncols=True)
        if not self.enabled:
            return
        save_config(cfg, self.out)  # the run's resolved config.toml, beside its log
        path = self.out / "pretrain_log.csv"
        if step and path.is_file():
            with open(path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        with atomic_write(path) as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.rows)
        self.file = open(path, "a", newline="")
        self.csv = csv.DictWriter(self.file, fieldnames=COLUMNS, lineterminator="\n")

    def _write(self, message: str, **values) -> None:
        if self.enabled:
            row = {k: values.get(k, "") for k in COLUMNS}
            self.rows.append(row)
            self.csv.writerow(row)
            self.file.flush()
            self.bar.write(message)

    def steps(self, losses: list[float]) -> None:
        """The training losses of the steps since the last call."""
        self.losses += losses
        self.bar.update(len(losses))

    def train_row(self, step: int, lr: float, grad_norm: float) -> None:
        """The mean training loss over the steps since the last row, tokens/s, MFU and peak memory."""
        now = time.perf_counter()
        tok_s = (step - self.step_last) * self.tokens_step / (now - self.t_last)
        loss = sum(self.losses) / len(self.losses)
        self.t_last, self.step_last, self.losses = now, step, []
        mfu = self.flops_token * tok_s / self.peak_flops if self.peak_flops else None
        if self.device.type == "cuda":
            mem = torch.cuda.max_memory_allocated(self.device) / 1e9
        else:  # CPU: peak resident set (KB on Linux)
            mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        self.bar.set_postfix(loss=f"{loss:.4f}")
        self._write(f"step {step:,}/{self.max_steps:,} | loss {loss:.4f} | lr {lr:.2e} | grad norm {grad_norm:.3f} | "
                    f"{tok_s:,.0f} tok/s | MFU {'n/a' if mfu is None else f'{mfu:.1%}'} | mem {mem:.2f} GB",
                    step=step, tokens=step * self.tokens_step, loss=f"{loss:.8g}", lr=f"{lr:.6g}",
                    grad_norm=f"{grad_norm:.6g}", tokens_per_s=f"{tok_s:.0f}", mfu="" if mfu is None else f"{mfu:.4f}",
                    mem_gb=f"{mem:.2f}")

    def val_row(self, step: int, loss: float, acc: float, const_acc: float, unigram: float) -> None:
        self._write(f"step {step:,}: validation loss {loss:.4f} (unigram: {unigram:.4f}), masked-token accuracy "
                    f"{acc:.2%} (most frequent token: {const_acc:.2%})", step=step, tokens=step * self.tokens_step,
                    val_loss=f"{loss:.8g}", val_acc=f"{acc:.6f}", val_const_acc=f"{const_acc:.6f}",
                    val_unigram_loss=f"{unigram:.8g}")
        self.plot()

    def plot(self) -> None:
        """loss.png from the rows so far, unless it already shows them all."""
        if self.enabled and len(self.rows) != self.plotted:
            plot_losses(self.rows, self.out / "loss.png")
            self.plotted = len(self.rows)

    @contextlib.contextmanager
    def paused(self):
        """Time spent in here (evaluation, checkpoints) does not count towards tokens/s."""
        start = time.perf_counter()
        yield
        self.t_last += time.perf_counter() - start

    def sync(self) -> None:
        """Make the rows so far durable: called with every checkpoint, so the two agree after a crash."""
        if self.enabled:
            self.file.flush()
            os.fsync(self.file.fileno())

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:  # the bar ends before an error's message is printed
        self.bar.close()
        if self.enabled:
            self.file.close()
        self.plot()
