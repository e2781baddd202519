"""
Use a trained model: load a run's final weights, and turn sequences into embeddings.

    from shelf.inference import load_run, embed
    model, tok, special = load_run("out/demo")              # final/model.pt, final/config.toml, tokenizer.json
    per_token, mask, pooled = embed(model, tok, ["ACGT...", "GATTACA..."])  # (B, T, C), (B, T), (B, C)
"""

from __future__ import annotations

from pathlib import Path

import torch

from model import MaskedLM
from shelf.checkpoint import load_final_weights
from shelf.config import load_config
from shelf.errors import UserError
from shelf.files import file_hash
from shelf.tokens import load_tokenizer


def load_run(run_dir: str | Path, device: str = "cpu"):
    """03's final weights of the run in `run_dir` -> (MaskedLM in eval mode on `device`, tokenizer, SpecialIds).
    The model is built from final/config.toml; the weights must be of the run's tokenizer.json."""
    run_dir = Path(run_dir)
    weights, config, tok_path = run_dir / "final/model.pt", run_dir / "final/config.toml", run_dir / "tokenizer.json"
    for path in (weights, config):
        if not path.is_file():
            raise UserError(f"{path}: not found; expected a run folder whose 03_pretrain.py reached max_steps")
    cfg, _ = load_config(["--config", str(config)])
    tok, special = load_tokenizer(tok_path, cfg.model)
    model = MaskedLM(cfg.model)
    try:
        model.load_state_dict(load_final_weights(weights, file_hash(tok_path)))
    except Exception as e:  # not a dict, or a key or shape mismatch
        raise UserError(f"{weights}: not a MaskedLM state_dict of final/config.toml's [model] "
                        f"({str(e).splitlines()[0]})")
    return model.to(device).eval(), tok, special


def pad_batch(ids: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of token ids -> input_ids (B, T) right-padded to the longest, mask (B, T) bool, on `device`."""
    x = torch.full((len(ids), max(map(len, ids))), pad_id, dtype=torch.long)
    mask = torch.zeros_like(x, dtype=torch.bool)
    for r, row in enumerate(ids):
        x[r, :len(row)], mask[r, :len(row)] = torch.tensor(row), True
    return x.to(device), mask.to(device)


@torch.no_grad()
def embed(model: MaskedLM, tok, seqs: list[str], batch_size: int = 32):
    """Sequences -> the encoder's last hidden states, in eval mode, float32 on the CPU:
      per_token (B, T, C): one row per token of the tokenizer, its specials included (<cls> ... ; <s> ... </s>),
                 T = the longest tokenized sequence, zeros past a sequence's end;
      mask      (B, T) bool: True at a sequence's real tokens;
      pooled    (B, C): the mean of per_token over the real tokens only (specials included, as NT's model card),
                 so a sequence's embedding does not depend on the batch it is padded into.
    Batches of `batch_size`, each padded to its longest; a sequence longer than max_seq_len tokens is an error."""
    ids = [enc.ids for enc in tok.encode_batch(seqs)]
    pad_id, device = model.cfg.pad_token_id, next(model.parameters()).device
    if too_long := [i for i, x in enumerate(ids) if len(x) > model.cfg.max_seq_len]:
        raise UserError(f"sequence {too_long[0] + 1}: {len(ids[too_long[0]]):,} tokens > model.max_seq_len = "
                        f"{model.cfg.max_seq_len:,}; cut it into windows")
    T, C = max(map(len, ids)), model.cfg.hidden_size
    per_token, mask = torch.zeros(len(ids), T, C), torch.zeros(len(ids), T, dtype=torch.bool)
    model.eval()
    for start in range(0, len(ids), batch_size):
        x, m = pad_batch(ids[start:start + batch_size], pad_id, device)
        h = model.encoder(x, m).float() * m.unsqueeze(-1)  # (b, t, C), zero at the pads
        per_token[start:start + len(x), :x.shape[1]], mask[start:start + len(x), :x.shape[1]] = h.cpu(), m.cpu()
    pooled = per_token.sum(1) / mask.sum(1, keepdim=True)  # (B, C): pads are zero, so this is the real-token mean
    return per_token, mask, pooled
