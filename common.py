"""
What every numbered script needs, in one place:

- typed configs: one dataclass per TOML section, `--config FILE` plus `--section.key=value` overrides,
  unknown keys and wrong types rejected with a one-line error, the resolved config saved as TOML;
- errors for people: `UserError` + `run_main()` print one line and exit non-zero, no traceback;
- atomic writes (temp file in the same folder, fsync, rename), so a crash never leaves half a file;
- distributed set-up / teardown for torchrun (nccl on CUDA, gloo on CPU) and rank-0 printing;
- FASTA reading (plain, gzip or bgzip) for the NT task files.

Everything else lives in the script that uses it, right before its first use.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import sys
import tempfile
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

PROJECT_ROOT = Path(__file__).resolve().parent
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "tinydnabert.toml"

# -----------------------------------------------------------------------------
# errors for people


class UserError(Exception):
    """A problem with the user's input (config, files, data): printed as one line, no traceback.

    exit_code 2 = bad configuration or command line, 1 = bad input data or failed download.
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class ConfigError(UserError):
    def __init__(self, message: str):
        super().__init__(message, exit_code=2)


def run_main(main: Callable[[], Any]) -> None:
    """Run a script's main(); turn UserError into 'error: ...' on stderr and its exit code."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)


# -----------------------------------------------------------------------------
# configs: one dataclass per TOML section. The defaults are the tinydnabert preset, so a key a preset
# leaves out means "as in TinyDNABERT". ModelConfig lives here, not in model.py, so that importing the
# configs does not import torch (01 and 02 start in 0.1 s instead of ~3 s).


@dataclass
class ModelConfig:
    vocab_size: int = 1024
    pad_token_id: int = 1  # the tokenizer's real pad id
    hidden_size: int = 512
    num_layers: int = 6
    num_heads: int = 8
    ffn_size: int = 2048
    max_seq_len: int = 512  # tokens per sequence the model accepts
    position_embedding: str = "learned"  # "learned" (RoBERTa/ESM, pad-aware) | "rope"
    rope_theta: float = 10000.0
    type_vocab_size: int = 2  # 0 = no token-type embeddings
    norm_position: str = "post"  # "post" (RoBERTa) | "pre" (ESM, AgroNT, DNA FM)
    mlp: str = "gelu"  # "gelu" (exact erf GELU) | "swiglu"
    bias: bool = True  # biases in linear layers
    dropout: float = 0.1  # hidden dropout
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self):
        def check(ok, field, msg):
            if not ok:
                raise ValueError(f"ModelConfig.{field}={getattr(self, field)!r}: {msg}")

        check(self.vocab_size > 0, "vocab_size", "must be positive")
        check(0 <= self.pad_token_id < self.vocab_size, "pad_token_id", "must be in [0, vocab_size)")
        check(self.hidden_size > 0, "hidden_size", "must be positive")
        check(self.num_layers > 0, "num_layers", "must be positive")
        check(self.num_heads > 0, "num_heads", "must be positive")
        check(self.hidden_size % self.num_heads == 0, "hidden_size",
              f"must be divisible by num_heads={self.num_heads}")
        check(self.ffn_size > 0, "ffn_size", "must be positive")
        check(self.max_seq_len > 0, "max_seq_len", "must be positive")
        check(self.position_embedding in ("learned", "rope"), "position_embedding",
              "must be 'learned' or 'rope'")
        if self.position_embedding == "rope":
            check((self.hidden_size // self.num_heads) % 2 == 0, "num_heads",
                  "RoPE needs an even head size (hidden_size / num_heads)")
        check(self.rope_theta > 0, "rope_theta", "must be positive")
        check(self.type_vocab_size >= 0, "type_vocab_size", "must be >= 0 (0 = none)")
        check(self.norm_position in ("post", "pre"), "norm_position", "must be 'post' or 'pre'")
        check(self.mlp in ("gelu", "swiglu"), "mlp", "must be 'gelu' or 'swiglu'")
        check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        check(0.0 <= self.attention_dropout < 1.0, "attention_dropout", "must be in [0, 1)")
        check(self.layer_norm_eps > 0, "layer_norm_eps", "must be positive")
        check(self.init_std > 0, "init_std", "must be positive")

    @property
    def head_size(self):
        return self.hidden_size // self.num_heads


@dataclass
class RunConfig:
    name: str = "tinydnabert"
    out_dir: str = "out/tinydnabert"  # every script reads and writes inside this folder
    seed: int = 1337  # every random choice of every script derives from this
    device: str = "auto"  # "auto" (cuda if available, else cpu) | "cpu" | "cuda"


@dataclass
class PreprocessConfig:
    # FASTA sources: local paths or https URLs, plain or gzip; the GRCh38.p14 assembly from NCBI
    sources: list[str] = field(default_factory=lambda: [
        "https://ftp.ncbi.nlm.nih.gov/genomes/all/GCF/000/001/405/GCF_000001405.40_GRCh38.p14/"
        "GCF_000001405.40_GRCh38.p14_genomic.fna.gz"
    ])
    md5: list[str] = field(default_factory=list)  # one per source; empty = NCBI's md5checksums.txt beside the URL
    manifest: str = ""  # a file listing many genomes (1B/7B presets); split train/val/test by genome
    download_dir: str = "data/downloads"  # shared cache: a verified download is never fetched twice
    min_len: int = 256  # segment lengths are drawn uniformly from [min_len, max_len], both inclusive
    max_len: int = 1024
    val_fraction: float = 0.01  # seeded random share of segments held out for validation
    val_genomes: float = 0.0  # with a manifest: share of genomes held out for validation
    test_genomes: float = 0.0  # with a manifest: share of genomes held out for test


@dataclass
class TokenizerConfig:
    kind: str = "bpe"  # "bpe" (tinydnabert) | "kmer" (agront_1b) | "char" (dnafm_7b)
    vocab_size: int = 1024  # bpe only: total vocabulary, special tokens included
    min_frequency: int = 4  # bpe only
    sample_fraction: float = 0.1  # bpe only: seeded uniform sample of train segments to train on
    # bpe only: cap on that sample in Mbp, 0 = none. BPE training holds ~50 B per sampled bp (measured,
    # bench/bench_tokenizer.py): GRCh38's 1/10 sample (~310 Mbp) needs ~15 GiB; set e.g. 100 on smaller machines
    max_train_mbp: float = 0.0
    k: int = 6  # kmer only
    encode_batch_size: int = 1024  # segments per encode_batch call while writing token files


@dataclass
class PretrainConfig:
    parallel: str = "ddp"  # under torchrun: "ddp" | "fsdp" (FSDP2 fully_shard); ignored in one process
    seq_len: int = 512  # tokens per packed block
    batch_size: int = 128  # sequences per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 200_000
    warmup_steps: int = 20_000  # linear warm-up, then linear decay to min_lr at max_steps
    lr: float = 1e-4
    min_lr: float = 0.0
    weight_decay: float = 1e-5  # not applied to biases and norms
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0
    mask_prob: float = 0.15  # of non-special tokens; 80% <mask> / 10% random / 10% kept
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU) | "fp32" | "bf16"
    compile: bool = False
    activation_checkpointing: bool = False
    meta_init: bool = False  # build on the meta device, then to_empty + init_weights (big presets)
    log_interval: int = 10
    eval_interval: int = 1000
    eval_batches: int = 20  # fixed validation subset: this many batches
    ckpt_interval: int = 5000
    keep_checkpoints: int = 3
    gpu_peak_tflops: float = 0.0  # for MFU; 0 = look the GPU up (H100 bf16 dense: 989)
    stop_at: int = 0  # end this run after this step, checkpointed (0 = max_steps); the lr schedule still
    #                   runs to max_steps, so `--resume` continues as if never stopped (time-limited jobs)
    dry_run_gpus: int = 2  # --dry-run plans for this many GPUs (the preset's intended count); WORLD_SIZE wins
    dry_run_gpu: str = "H100"  # --dry-run: the GPU to plan for: "H100", "H200", "A100", "RTX 4090"
    dry_run_mfu: float = 0.4  # --dry-run: the model-FLOPs utilisation the time estimate assumes


@dataclass
class FinetuneConfig:
    # "revised" (18 tasks, TinyDNABERT's table) | "original" (the first 18) | "demo" (synthetic tasks 04
    # generates itself) | "local" (your own folders <data_dir>/<task>/{train,test}.fna, never downloaded)
    benchmark: str = "revised"
    base_url: str = "https://huggingface.co/datasets/InstaDeepAI"  # + /<repo>/resolve/<revision>/<task>/<split>.fna
    revision: str = ""  # hub revision; "" = the benchmark's pinned default (BENCHMARKS in 04_finetune_nt.py)
    data_dir: str = "data/nt_benchmark"  # task files live in <data_dir>/<benchmark>/<task>/ ("local": <data_dir>/<task>/)
    pretrained: str = ""  # MaskedLM state_dict for init "pretrained"; "" = <run.out_dir>/final/model.pt
    tasks: list[str] = field(default_factory=list)  # empty = every task of the benchmark
    inits: list[str] = field(default_factory=lambda: ["pretrained", "scratch"])
    num_seeds: int = 3  # runs per (task, init); each seed also draws its own validation split
    batch_size: int = 64
    max_steps: int = 5000
    warmup_steps: int = 500  # linear warm-up, then linear decay to 0 at max_steps
    lr: float = 1e-4
    min_lr: float = 0.0
    weight_decay: float = 1e-5  # AdamW, not on biases and norms
    beta1: float = 0.9  # AdamW betas and eps: Hugging Face Trainer's defaults, which TinyDNABERT used
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0  # as Hugging Face Trainer's default max_grad_norm, which TinyDNABERT used
    eval_interval: int = 200  # validation MCC every this many steps (and at the last); the best weights are kept
    val_fraction: float = 0.1  # stratified, seeded split of train
    classifier_dropout: float = 0.1
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU) | "fp32" | "bf16"


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    @property
    def out_dir(self) -> Path:
        return Path(self.run.out_dir)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, where: str) -> Any:
    """Check `value` (parsed from TOML) against a dataclass field type; return it converted."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(v, item_tp, where) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {tp} at {where}")


def _section_types(section_cls) -> dict[str, Any]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def _apply(cfg: Config, section: str, key: str, value: Any, source: str) -> None:
    sections = {f.name: f for f in dataclasses.fields(Config)}
    if section not in sections:
        raise ConfigError(f"{source}: unknown section [{section}]; valid sections: {', '.join(sections)}")
    target = getattr(cfg, section)
    types = _section_types(type(target))
    if key not in types:
        raise ConfigError(
            f"{source}: unknown key '{section}.{key}'; valid keys of [{section}]: {', '.join(types)}"
        )
    where = source if source.startswith("--") else f"{source}: {section}.{key}"
    setattr(target, key, _coerce(value, types[key], where))


def _parse_cli_value(text: str) -> Any:
    """`--a.b=3` -> 3, `=[x,y]` -> ['x','y'], `=true` -> True, `=out/run` -> 'out/run' (quotes optional)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    if text.startswith("[") and text.endswith("]"):  # a list of bare words: [promoter_all, enhancers]
        inner = text[1:-1].strip()
        return [_parse_cli_value(item.strip()) for item in inner.split(",")] if inner else []
    return text


def load_config(argv: list[str] | None = None, flags: tuple[str, ...] = ()) -> tuple[Config, set[str]]:
    """Parse `--config FILE`, `--section.key=value` overrides and the script's own boolean `flags`.

    Returns the resolved Config and the set of flags given (e.g. {"--resume"}). Without --config the
    tinydnabert preset is used, so `python 01_preprocess.py` runs the reference reproduction.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    config_path: str | None = None
    overrides: list[tuple[str, str]] = []
    given: set[str] = set()
    usage = f"usage: --config FILE, --section.key=value{''.join(', ' + f for f in flags)}"
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(usage + "\nsections and keys:")
            for section, value in vars(Config()).items():
                print(f"  [{section}] " + ", ".join(_section_types(type(value))))
            sys.exit(0)
        if arg in flags:
            given.add(arg)
        elif arg == "--config" or arg.startswith("--config="):
            if "=" in arg:
                config_path = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                i += 1
                config_path = argv[i]
            else:
                raise ConfigError("--config needs a file name")
        elif arg.startswith("--") and "=" in arg and "." in arg.split("=", 1)[0]:
            key, value = arg[2:].split("=", 1)
            overrides.append((key, value))
        else:
            raise ConfigError(f"unknown argument '{arg}'; {usage}")
        i += 1

    cfg = Config()
    path = Path(config_path) if config_path else DEFAULT_CONFIG
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})")
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: '{section}' must be a [section] table, got {table!r}")
        for key, value in table.items():
            _apply(cfg, section, key, value, str(path))
    for dotted, text in overrides:
        section, _, key = dotted.partition(".")
        _apply(cfg, section, key, _parse_cli_value(text), f"--{dotted}")
    try:  # cross-field checks of the model config (ModelConfig.__post_init__) on the final values
        cfg.model = ModelConfig(**dataclasses.asdict(cfg.model))
    except ValueError as e:
        raise ConfigError(f"{path}: [model] {e}")
    return cfg, given


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def config_to_toml(cfg: Config) -> str:
    lines = ["# resolved config: every key, after the preset and command-line overrides"]
    for f in dataclasses.fields(cfg):
        lines.append(f"\n[{f.name}]")
        for key, value in dataclasses.asdict(getattr(cfg, f.name)).items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def save_config(cfg: Config, directory: str | Path, name: str = "config.toml") -> Path:
    """Write the resolved config beside an output; it loads back with `--config`."""
    path = Path(directory) / name
    atomic_write_text(path, config_to_toml(cfg))
    return path


# -----------------------------------------------------------------------------
# atomic writes: write to a temp file in the same folder, fsync, then rename over the target.
# rename is atomic on POSIX, so readers see the old file or the new one, never half of one.


def _temp_beside(path: Path) -> tuple[int, str]:
    """A temp file in the target's folder (rename is only atomic within one file system), with the
    permissions a plain open() would give (mkstemp makes 0600 files)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, tmp


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


class atomic_open:
    """`with atomic_open(path, "w") as f:` streams into a temp file that replaces `path` on success
    and is deleted on any error, so large outputs (segment files, token files) are never half-written."""

    def __init__(self, path: str | Path, mode: str = "w"):
        assert mode in ("w", "wb"), mode
        self.path, self.mode = Path(path), mode

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = _temp_beside(self.path)
        self.file = os.fdopen(fd, self.mode)
        return self.file

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.file.flush()
                os.fsync(self.file.fileno())
            self.file.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
        finally:
            if Path(self.tmp).exists():
                Path(self.tmp).unlink()
        return False


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


# -----------------------------------------------------------------------------
# the training recipe both 03 and 04 use; `c` is a [pretrain] or [finetune] section


def lr_at(step: int, c) -> float:
    """Learning rate as a pure function of the step: linear warm-up over warmup_steps (step 0 already
    gets lr/warmup_steps), then linear decay to min_lr at max_steps (Hugging Face's linear schedule)."""
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    frac = (step - c.warmup_steps) / max(1, c.max_steps - c.warmup_steps)
    return c.min_lr + (c.lr - c.min_lr) * max(0.0, 1.0 - frac)


def configure_optimizer(net, c, device):
    """AdamW that decays the matrices (linear weights, embeddings) but not biases and LayerNorm weights
    (all 1-D), as RoBERTa / Hugging Face's no_decay = ["bias", "LayerNorm.weight"]."""
    import torch

    params = [p for p in net.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": c.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = torch.device(device).type == "cuda"  # one kernel for the whole update; foreach elsewhere
    return torch.optim.AdamW(groups, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps,
                             fused=fused, foreach=None if fused else True)


# -----------------------------------------------------------------------------
# distributed: torchrun sets RANK / LOCAL_RANK / WORLD_SIZE; a plain `python` run is world size 1.


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str) -> str:
    import torch

    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"run.device = '{preference}' but no CUDA GPU is visible; use 'cpu' or 'auto'")
    if preference not in ("cpu", "cuda") and not preference.startswith("cuda:"):
        raise ConfigError(f"run.device = '{preference}': expected 'auto', 'cpu' or 'cuda'")
    return preference


def setup_distributed(device_preference: str = "auto") -> Dist:
    """Join the torchrun process group if there is one: nccl on CUDA, gloo on CPU."""
    import torch
    import torch.distributed as dist

    device = resolve_device(device_preference)
    if "RANK" not in os.environ:
        return Dist(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
        dist.init_process_group("nccl", device_id=torch.device(device))
    else:
        dist.init_process_group("gloo")
    return Dist(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def teardown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def print0(*args, **kwargs) -> None:
    """print on rank 0 only (torchrun sets RANK), flushed so logs interleave sanely."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs, flush=True)


# -----------------------------------------------------------------------------
# FASTA


def open_text(path: str | Path) -> io.TextIOBase:
    """Open plain or gzip text (bgzip is multi-member gzip, which gzip reads); sniffs the magic bytes."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="ascii", errors="replace", newline=None)
    return open(path, "r", encoding="ascii", errors="replace", newline=None)


@dataclass
class FastaRecord:
    header: str  # the text after '>'
    sequence: str  # as in the file, lines joined, no case change
    line: int  # 1-based line number of the header, for error messages


def read_fasta(path: str | Path) -> Iterator[FastaRecord]:
    """Yield the records of a (small-record) FASTA file: NT task files, test fixtures.

    For whole chromosomes use 01_preprocess.py's streaming reader, which never holds a record.
    Raises UserError naming the file and line on a file with no header or with sequence before it.
    """
    path = Path(path)
    header, header_line, chunks = None, 0, []
    try:
        with open_text(path) as f:
            for line_no, line in enumerate(f, start=1):
                line = line.strip()
                if not line:
                    continue
                if line.startswith(">"):
                    if header is not None:
                        yield FastaRecord(header, "".join(chunks), header_line)
                    header, header_line, chunks = line[1:].strip(), line_no, []
                elif header is None:
                    raise UserError(f"{path}:{line_no}: expected a FASTA header starting with '>', got {line[:40]!r}")
                else:
                    chunks.append(line)
    except (OSError, EOFError, UnicodeDecodeError) as e:  # truncated or corrupt gzip
        raise UserError(f"{path}: cannot read ({e})")
    if header is not None:
        yield FastaRecord(header, "".join(chunks), header_line)


# -----------------------------------------------------------------------------
# tokenizer and token files (written by 02_train_tokenizer.py, read by 03 and 04)

# The special tokens of each kind, by role. The ids are fixed by 02 (bpe: <s>=0 <pad>=1 </s>=2
# <unk>=3 <mask>=4, RoBERTa's order; kmer: <pad>=0 <mask>=1 <cls>=2; char: [PAD]=0 [MASK]=1 [CLS]=2
# [SEP]=3 [UNK]=4), but readers look them up by name so a hand-made tokenizer.json works too.
_SPECIAL_NAMES = {
    "pad": ("<pad>", "[PAD]"),
    "mask": ("<mask>", "[MASK]"),
    "cls": ("<s>", "<cls>", "[CLS]"),  # sequence start; fine-tuning classifies from this position
    "sep": ("</s>", "[SEP]"),  # sequence end (kmer has none)
    "unk": ("<unk>", "[UNK]"),  # kmer has none: every character maps to A C G T or N
}


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    mask: int
    cls: int
    sep: int | None
    unk: int | None
    all: tuple[int, ...]  # every special token's id, sorted: never masked, never a random replacement


def load_tokenizer(path: str | Path, model_cfg: ModelConfig | None = None):
    """Load a tokenizer.json written by 02_train_tokenizer.py -> (tokenizers.Tokenizer, SpecialIds).

    `tok.encode(seq).ids` already carries the kind's wrapping (<s> … </s>, <cls> …, [CLS] … [SEP]).
    With `model_cfg`, raises UserError unless the tokenizer fits the model: every id < vocab_size and
    the tokenizer's pad id == model.pad_token_id (the bug TinyDNABERT had: pad 3 vs 1).
    """
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: tokenizer not found (run 02_train_tokenizer.py first)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a plain Exception on bad JSON
        raise UserError(f"{path}: not a readable tokenizer.json ({str(e).splitlines()[0] if str(e) else e})")
    vocab = tok.get_vocab(with_added_tokens=True)
    ids = {role: next((vocab[n] for n in names if n in vocab), None) for role, names in _SPECIAL_NAMES.items()}
    for role in ("pad", "mask", "cls"):
        if ids[role] is None:
            raise UserError(f"{path}: tokenizer has no {role} token (one of {', '.join(_SPECIAL_NAMES[role])})")
    special = sorted(i for i, t in tok.get_added_tokens_decoder().items() if t.special)
    special = tuple(sorted(set(special) | {i for i in ids.values() if i is not None}))
    sp = SpecialIds(pad=ids["pad"], mask=ids["mask"], cls=ids["cls"], sep=ids["sep"], unk=ids["unk"], all=special)
    if model_cfg is not None:
        n = tok.get_vocab_size(with_added_tokens=True)
        if n > model_cfg.vocab_size:
            raise UserError(f"{path}: tokenizer has {n:,} tokens but model.vocab_size = {model_cfg.vocab_size:,}; "
                            f"set --model.vocab_size={n}")
        if sp.pad != model_cfg.pad_token_id:
            raise UserError(f"{path}: tokenizer pad id is {sp.pad} but model.pad_token_id = "
                            f"{model_cfg.pad_token_id}; set --model.pad_token_id={sp.pad}")
    return tok, sp


def file_hash(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in blocks (tokenizer and data fingerprints: sha256; downloads: md5)."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def read_token_meta(tokens_dir: str | Path, tokenizer_path: str | Path) -> dict:
    """Read tokens/meta.json and check it belongs to `tokenizer_path` and to the .bin files beside it.

    Raises UserError (one line, file named) when meta.json is missing or unreadable, when its
    tokenizer_sha256 is not the sha256 of tokenizer_path (token files made by another tokenizer),
    or when a split's token count does not match its .bin file size (uint16 = 2 bytes per token).
    """
    tokens_dir = Path(tokens_dir)
    meta_path = tokens_dir / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise UserError(f"{meta_path}: not found (run 02_train_tokenizer.py first)")
    except (OSError, ValueError) as e:
        raise UserError(f"{meta_path}: not readable JSON ({e})")
    if not Path(tokenizer_path).is_file():
        raise UserError(f"{tokenizer_path}: tokenizer not found (run 02_train_tokenizer.py first)")
    sha = file_hash(tokenizer_path)
    if meta.get("tokenizer_sha256") != sha:
        raise UserError(f"{meta_path}: token files were made with another tokenizer than {tokenizer_path} "
                        f"(sha256 {str(meta.get('tokenizer_sha256'))[:12]}… vs {sha[:12]}…); re-run 02_train_tokenizer.py")
    for split, counts in meta.get("splits", {}).items():
        bin_path = tokens_dir / f"{split}.bin"
        size = bin_path.stat().st_size if bin_path.is_file() else None
        if size != 2 * counts.get("tokens", -1):
            raise UserError(f"{bin_path}: expected {counts.get('tokens')} uint16 tokens from meta.json, "
                            f"file has {'no file' if size is None else f'{size:,} bytes'}; re-run 02_train_tokenizer.py")
    return meta


# -----------------------------------------------------------------------------
# downloads: resumable, retried, verified, cached (01 fetches genomes, 04 the NT benchmark)


def is_verified(dest: str | Path, md5: str | None = None) -> bool:
    """True when `dest` was verified by download() (its `<dest>.md5` sidecar is newer than the file)
    and, if `md5` is given, was verified against that checksum."""
    dest = Path(dest)
    sidecar = dest.with_name(dest.name + ".md5")
    if not (dest.is_file() and sidecar.is_file()) or sidecar.stat().st_mtime < dest.stat().st_mtime:
        return False
    recorded = sidecar.read_text().split()[:1]
    return bool(recorded) and (md5 is None or recorded[0] == md5.lower())


def download(url: str, dest: str | Path, md5: str | Callable[[], str | None] | None = None, *,
             retries: int = 5, backoff_s: float = 1.0, timeout_s: float = 60.0, quiet: bool = False) -> Path:
    """Fetch `url` (http/https) to `dest` once; return `dest`.

    - Streams into `<dest>.part` with a progress bar in bytes. An interrupted transfer (dropped
      connection, killed process) resumes from the .part size with an HTTP `Range` request.
    - Network errors, timeouts and HTTP 408/429/5xx are retried with back-off (backoff_s * 2^k seconds,
      at most `retries` times in a row); a transfer that made progress is resumed at once.
    - Checks the md5: `md5` is a hex string, or a function returning one (called only when a check is
      needed, e.g. to fetch NCBI's md5checksums.txt), or None (no checksum known: only the length is
      checked). Then renames into place and writes `<dest>.md5` (md5sum format). A verified file is
      never downloaded again; a file that fails the check is deleted, never used (UserError, exit 1).
    """
    import time
    import urllib.error
    import urllib.request
    from http.client import HTTPException

    from tqdm import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sidecar, part = dest.with_name(dest.name + ".md5"), dest.with_name(dest.name + ".part")
    given = md5 if isinstance(md5, str) and md5 else None
    if is_verified(dest, given):
        return dest
    expected_cache: list[str | None] = []

    def expected() -> str | None:  # the checksum to verify against, looked up at most once
        if not expected_cache:
            value = md5() if callable(md5) else (md5 or None)
            expected_cache.append(value.lower() if value else None)
        return expected_cache[0]

    def accept(path: Path) -> Path:
        digest = file_hash(path, "md5")
        want = expected()
        if want is not None and digest != want:
            path.unlink()
            raise UserError(f"{url}: md5 mismatch (expected {want}, got {digest}); the file was deleted, not used")
        if path != dest:
            os.replace(path, dest)
        atomic_write_text(sidecar, f"{digest}  {dest.name}\n")
        return dest

    if dest.is_file() and expected() is not None and file_hash(dest, "md5") == expected():
        return accept(dest)  # already here (copied in by hand, or verified before the sidecar existed)

    failures = 0
    while True:
        have = part.stat().st_size if part.is_file() else 0
        headers = {"User-Agent": "dna-lm-download/1.0", **({"Range": f"bytes={have}-"} if have else {})}
        got = 0
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as r:
                if have and (r.status != 206 or not r.headers.get("Content-Range", "").startswith(f"bytes {have}-")):
                    have = 0  # the server ignored the Range request: start over
                length = r.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                with open(part, "ab" if have else "wb") as f, tqdm(
                        total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=dest.name, disable=True if quiet else None, leave=False) as bar:
                    while block := r.read(1 << 20):
                        f.write(block)
                        got += len(block)
                        bar.update(len(block))
                if total is not None and have + got < total:
                    raise ConnectionError(f"connection closed after {have + got:,} of {total:,} bytes")
            return accept(part)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # Range not satisfiable: the .part is already complete
                return accept(part)
            if e.code not in (408, 429) and e.code < 500:
                raise UserError(f"{url}: HTTP {e.code} {e.reason}")
            error = f"HTTP {e.code} {e.reason}"
        except (urllib.error.URLError, HTTPException, OSError) as e:
            error = str(getattr(e, "reason", None) or e)
        failures = 0 if got else failures + 1  # a transfer that made progress resumes immediately
        if failures > retries:
            raise UserError(f"{url}: download failed after {retries} retries ({error}); "
                            f"re-run to resume from {part}")
        if failures:
            if not quiet:
                print(f"{url}: {error}; retrying in {backoff_s * 2 ** (failures - 1):.0f} s", file=sys.stderr)
            time.sleep(backoff_s * 2 ** (failures - 1))
