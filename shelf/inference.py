"""Use a trained model: load a run's final weights, and turn sequences into embeddings.

    from shelf.inference import load_run, embed
    model, tok, special = load_run("out/demo")              # final/model.pt, final/config.toml, tokenizer.json
    per_token, mask, pooled = embed(model, tok, ["ACGT...", "GATTACA..."])  # (B, T, C), (B, T), (B, C)
"""

from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence

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


def pad_batch(ids: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Lists of token ids -> input_ids (B, T), right-padded to the longest, and the attention mask (B, T), True at
    the real tokens, on `device`. The mask is None when no row is padded: the model then attends to every token."""
    x = pad_sequence([torch.tensor(row) for row in ids], batch_first=True, padding_value=pad_id)  # (B, T)
    mask = torch.arange(x.shape[1]) < torch.tensor([len(row) for row in ids])[:, None]  # (B, T)
    return x.to(device), None if mask.all() else mask.to(device)


def mean_pool(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Hidden states (B, T, C) -> (B, C), their mean over the real tokens (mask (B, T); None: all), specials
    included as NT's model card does: a sequence's embedding does not depend on the batch it is padded into."""
    m = torch.ones(h.shape[:2], device=h.device) if mask is None else mask.to(h.dtype)  # (B, T)
    return (h * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True)


@torch.no_grad()
def embed(model: MaskedLM, tok, seqs: list[str], batch_size: int = 32):
    """Sequences -> the encoder's last hidden states, in eval mode, float32 on the CPU:
      per_token (B, T, C): one row per token of the tokenizer, its specials included (<cls> ... ; <s> ... </s>),
                 T = the longest tokenized sequence, zeros past a sequence's end;
      mask      (B, T) bool: True at a sequence's real tokens;
      pooled    (B, C): mean_pool of per_token.
    Batches of `batch_size`, each padded to its longest; a sequence longer than max_seq_len tokens is an error."""
    ids = [enc.ids for enc in tok.encode_batch(seqs)]
    device = next(model.parameters()).device
    if too_long := [i for i, x in enumerate(ids) if len(x) > model.cfg.max_seq_len]:
        raise UserError(f"sequence {too_long[0] + 1}: {len(ids[too_long[0]]):,} tokens > model.max_seq_len = "
                        f"{model.cfg.max_seq_len:,}; cut it into windows")
    per_token = torch.zeros(len(ids), max(map(len, ids)), model.cfg.hidden_size)
    model.eval()
    for start in range(0, len(ids), batch_size):
        x, mask = pad_batch(ids[start:start + batch_size], model.cfg.pad_token_id, device)
        per_token[start:start + len(x), :x.shape[1]] = model.encoder(x, mask).float().cpu()  # (b, t, C)
    mask = torch.arange(per_token.shape[1]) < torch.tensor([len(x) for x in ids])[:, None]  # (B, T)
    per_token *= mask.unsqueeze(-1)  # zeros at the pads
    return per_token, mask, mean_pool(per_token, mask)
