"""
Step 5 (optional): in-silico mutagenesis. Score every single-nucleotide substitution of each sequence in a
FASTA file with the run's pretrained masked LM (03's final/model.pt):

    python 05_mutagenesis.py --config configs/demo.toml seqs.fa [more.fa ...]
    python 05_mutagenesis.py --config configs/demo.toml --demo    # fresh demo promoters and splice donors

score(pos, alt) = log p(alt) - log p(ref), in nats; < 0: the model finds the substitution unlikely there.
Reference and mutant are each tokenized in full; the substitution's window = the tokens of either one that
the other lacks (the same id at the same span in bp). score = PLL(mutant's window) - PLL(reference's window),
PLL = the sum over the window's tokens of log p(token | the rest of its own sequence), that one token masked.
  char tokens: the window is the one nucleotide, both masked inputs the same sequence: one forward per bp, and
  the score is exactly log p(alt) - log p(ref) at the masked position (the masked-marginal ratio).
  6-mers: likewise with the 6-mer holding pos (one forward per 6 bp): log p(alt 6-mer) - log p(ref 6-mer).
  BPE: a substitution may re-merge several tokens, each masked in a forward of its own (more forwards).
Tokens outside the window are not scored, though their probabilities may move with the new context.

Writes <run>/mutagenesis/: mutations.tsv (seq, pos (1-based), ref, alt, score), one heatmap per sequence
(<n>_<name>.png: 4 x L, rows A C G T, dots = the reference base) and config.toml + inputs.json.
"""

import re
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from shelf.config import load_config, save_config
from shelf.demo_data import TATA_AT, TSS_AT, Grammar, promoter_example, splice_example
from shelf.distributed import setup_distributed
from shelf.errors import ConfigError, UserError, run_main
from shelf.fasta import read_fasta
from shelf.files import atomic_write, file_hash, prepare_dir, write_json
from shelf.inference import load_run, pad_batch
from shelf.plots import plt, save_png
from shelf.seeds import rng

BASES = "ACGT"  # heatmap rows
BATCH_SIZE = 64  # masked inputs per forward


def demo_fasta(path: Path, seed: int, n: int = 4) -> Path:
    """n fresh core promoters (TATA box, Inr at fixed offsets; CAAT box near 11) and n splice donors (exon |
    GT[AG]AGT at 51), 100 bp each; each header names its motifs (1-based, inclusive)."""
    g = Grammar(rng(seed, "mutagenesis demo"))
    records = []
    for i in range(n):
        s = promoter_example(g, 1).tobytes().decode()
        caat = s.find("GGCCAATCT", 0, 22)  # planted at 10 +- 3
        motifs = [(TSS_AT - TATA_AT, 6), (TSS_AT - 2, 6)] + ([(caat, 9)] if caat >= 0 else [])
        records.append((f"promoter_{i + 1}", s, motifs))
    records += [(f"donor_{i + 1}", splice_example(g, 1).tobytes().decode(), [(50, 6)]) for i in range(n)]
    with atomic_write(path) as f:
        for name, s, motifs in records:
            f.write(f">{name} motifs={','.join(f'{a + 1}-{a + k}' for a, k in motifs)}\n{s}\n")
    return path


def motif_spans(header: str) -> list[tuple[int, int]]:
    """`name motifs=61-66,70-75` (the --demo headers; a header of yours may say the same) -> [(61, 66), (70, 75)]."""
    m = re.search(r"motifs=([\d,-]+)", header)
    return [(int(a), int(b)) for a, b in re.findall(r"(\d+)-(\d+)", m.group(1))] if m else []


def changed(a, b) -> list[int]:
    """Indices of a's tokens that b does not have, same id at the same span (bp): the re-tokenized window."""
    other = set(zip(b.ids, b.offsets))
    return [t for t, key in enumerate(zip(a.ids, a.offsets)) if key not in other]


@torch.no_grad()
def masked_log_probs(model, inputs: list[list[int]], positions: list[int]) -> torch.Tensor:
    """log p(. | input) at each input's one masked position -> (N, V). The LM head runs at that position only."""
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(inputs), BATCH_SIZE):
        x, mask = pad_batch(inputs[s:s + BATCH_SIZE], model.cfg.pad_token_id, device)
        at = torch.tensor(positions[s:s + BATCH_SIZE], device=device)[:, None]  # (b, 1)
        out.append(F.log_softmax(model(x, mask, positions=at)[:, 0].float(), dim=-1).cpu())  # (b, V)
    return torch.cat(out)


def score_sequence(model, tok, mask_id: int, seq: str) -> np.ndarray:
    """Every substitution of seq -> scores (4, L), rows A C G T: log p(alt) - log p(ref) as the module docstring
    defines it; 0 at the reference base, NaN where the reference is not A/C/G/T."""
    seq, L = seq.upper(), len(seq)
    sites = [(i, a) for i, r in enumerate(seq) if r in BASES for a in BASES if a != r]
    ref = tok.encode(seq)
    alts = tok.encode_batch([seq[:i] + a + seq[i + 1:] for i, a in sites])
    if max(len(e.ids) for e in [ref, *alts]) > model.cfg.max_seq_len:
        raise UserError(f"{len(ref.ids):,} tokens > model.max_seq_len = {model.cfg.max_seq_len}; cut it into windows")
    queries = {}  # (masked input, position) -> its row
    terms = []  # per site [(sign, row, token id)]
    for alt in alts:
        term = []
        for sign, enc, other in ((1, alt, ref), (-1, ref, alt)):
            for t in changed(enc, other):
                masked = enc.ids[:t] + [mask_id] + enc.ids[t + 1:]
                term.append((sign, queries.setdefault((tuple(masked), t), len(queries)), enc.ids[t]))
        terms.append(term)
    scores = np.full((4, L), np.nan)
    if not sites:
        return scores
    logp = masked_log_probs(model, [list(m) for m, _ in queries], [t for _, t in queries])  # (N, V)
    for (i, a), term in zip(sites, terms):
        scores[BASES.index(seq[i]), i] = 0.0  # the reference base
        scores[BASES.index(a), i] = sum(sign * logp[row, token].item() for sign, row, token in term)
    return scores


def plot_heatmap(scores: np.ndarray, seq: str, title: str, path: Path, spans=()) -> None:
    """4 x L heatmap, rows A C G T; blue: the model dislikes the substitution, red: prefers it; dots: reference;
    boxes: `spans` [(first, last) bp, 1-based], e.g. the motifs a --demo header names."""
    L, lim = scores.shape[1], float(np.nanmax(np.abs(scores))) or 1.0
    fig, ax = plt.subplots(figsize=(min(40.0, 2.5 + 0.1 * L), 2.4))
    im = ax.imshow(scores, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest",
                   extent=(0.5, L + 0.5, 3.5, -0.5))
    ref = [(i + 1, BASES.index(c)) for i, c in enumerate(seq.upper()) if c in BASES]
    ax.scatter(*zip(*ref), s=2, c="black", marker=".")
    for first, last in spans:
        ax.add_patch(plt.Rectangle((first - 0.5, -0.5), last - first + 1, 4, fill=False, lw=1.2, ec="black"))
    ax.set(yticks=range(4), yticklabels=list(BASES), xlabel="position (bp)", title=title)
    fig.colorbar(im, ax=ax, label="log p(alt) - log p(ref)", fraction=0.03, pad=0.01)
    fig.tight_layout()
    save_png(fig, path, dpi=110)


def main() -> None:
    argv = sys.argv[1:]  # the FASTA files (the arguments that are not options), and load_config's options
    fasta = [a for i, a in enumerate(argv) if not a.startswith("-") and (i == 0 or argv[i - 1] != "--config")]
    cfg, flags = load_config([a for a in argv if a not in fasta], flags=("--demo",), doc=__doc__, sections=("run",))
    if bool(fasta) == ("--demo" in flags):
        raise ConfigError("usage: 05_mutagenesis.py --config FILE (seqs.fa [more.fa ...] | --demo)")
    out = prepare_dir(cfg.out_dir / "mutagenesis")
    device = setup_distributed(cfg.run.device, cfg.run.deterministic).device  # run.device "auto": cuda if there is one

    # 1. the run's model and tokenizer; the sequences (from the files, or fresh demo ones)
    model, tok, special = load_run(cfg.out_dir, device)
    paths = [demo_fasta(out / "demo_sequences.fa", cfg.run.seed)] if "--demo" in flags else [Path(a) for a in fasta]
    records = [(path, rec) for path in paths for rec in read_fasta(path)]

    # 2. every substitution of every sequence scored, a heatmap each
    rows, contrast = ["seq\tpos\tref\talt\tscore"], {}  # contrast: kind (promoter_3 -> promoter) -> [(in, out)]
    for n, (path, rec) in enumerate(records, 1):
        name = rec.header.split()[0] if rec.header else f"seq{n}"
        try:
            scores = score_sequence(model, tok, special.mask, rec.sequence)
        except UserError as e:
            raise UserError(f"{path}:{rec.line}: {e}")
        if spans := motif_spans(rec.header):  # mean |score| per bp (over its 3 substitutions), in the motifs and out
            inside = np.isin(np.arange(1, scores.shape[1] + 1), [p for a, b in spans for p in range(a, b + 1)])
            size = np.abs(scores).sum(0) / 3  # (L,)
            contrast.setdefault(name.rsplit("_", 1)[0], []).append((size[inside], size[~inside]))
        subs = [(i, r, a, scores[k, i]) for i, r in enumerate(rec.sequence.upper()) if r in BASES
                for k, a in enumerate(BASES) if a != r]
        rows += [f"{name}\t{i + 1}\t{r}\t{a}\t{score:.4f}" for i, r, a, score in subs]
        plot_heatmap(scores, rec.sequence, f"{name}: in-silico mutagenesis ({cfg.run.name})",
                     out / f"{n:03d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)[:60]}.png", spans)
    for kind, parts in contrast.items():  # what the model learned without labels, in one number per kind
        inside, outside = (np.nanmean(np.concatenate(part)) for part in zip(*parts))
        print(f"{kind}: mean |score| inside the named motifs / outside = {inside / outside:.2f}x")

    # 3. the table, and what made it
    with atomic_write(out / "mutations.tsv") as f:
        f.write("\n".join(rows) + "\n")
    save_config(cfg, out)
    write_json(out / "inputs.json", {str(p): file_hash(p) for p in paths} | {"weights": file_hash(
        cfg.out_dir / "final" / "model.pt")})
    print(f"{len(rows) - 1:,} substitutions of {len(records)} sequences -> {out / 'mutations.tsv'}, heatmaps in {out}")


if __name__ == "__main__":
    run_main(main)
