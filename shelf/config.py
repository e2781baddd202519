"""Configs: one dataclass per TOML section, read from `--config FILE` plus `--section.key=value` overrides.

Each section checks its values in __post_init__, wherever it is built; unknown keys and wrong types are a
ConfigError (exit 2) naming the key and the valid ones. The defaults are the tinydnabert preset, so a key a preset
leaves out means "as in TinyDNABERT". save_config() writes the resolved config as TOML; it loads back with --config."""

import contextlib
import dataclasses
import difflib
import inspect
import json
import re
import sys
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from model import ModelConfig
from shelf.errors import ConfigError
from shelf.files import atomic_write

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "tinydnabert.toml"
HF_INIT = re.compile(r"hf:[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*@[0-9a-f]{40}")  # a hub repo, pinned


def checker(section: str, values):
    """-> check(key, ok, expected): raises ValueError('section.key = value: expected') unless ok."""
    def check(key: str, ok: bool, expected: str) -> None:
        if not ok:
            raise ValueError(f"{section}.{key} = {getattr(values, key)!r}: {expected}")
    return check


@dataclass
class RunConfig:
    name: str = "tinydnabert"  # the run's name, in logs and results
    out_dir: str = "out/tinydnabert"  # every script reads and writes inside this folder
    seed: int = 1337  # every random choice of every script derives from this
    device: str = "auto"  # "auto" (cuda if available, else cpu) | "cpu" | "cuda" | "cuda:N"
    deterministic: bool = False  # deterministic kernels: two CUDA runs bit-identical (CPU runs are anyway), slower

    def __post_init__(self):
        checker("run", self)("device", self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
                             "expected 'auto', 'cpu' or 'cuda'")


@dataclass
class PreprocessConfig:
    sources: list[str] = field(default_factory=lambda: [  # local FASTA paths or URLs, plain or gzip, or "demo"
        "https://ftp.ncbi.nlm.nih.gov/genomes/all/GCF/000/001/405/GCF_000001405.40_GRCh38.p14/"
        "GCF_000001405.40_GRCh38.p14_genomic.fna.gz"
    ])
    md5: list[str] = field(default_factory=list)  # one per source; empty = md5checksums.txt (NCBI) or md5sum.txt (UCSC) beside the URL
    manifest: str = ""  # many genomes (1B/7B presets): a TSV or CSV file or URL, split by genome, streamed
    download_dir: str = "data/downloads"  # shared cache: a verified download is never fetched twice
    min_len: int = 256  # segment lengths are drawn uniformly from [min_len, max_len], both inclusive
    max_len: int = 1024  # longest segment, bp
    val_fraction: float = 0.01  # seeded random share of segments held out for validation
    val_genomes: float = 0.0  # with a manifest: genomes held out for validation, a share (< 1) or a count
    test_genomes: float = 0.0  # with a manifest: genomes held out for test, a share (< 1) or a count
    split_by: str = "seed"  # with a manifest: "seed" (a seeded draw) | "position" (NT: the last rows test, then val)
    keep_downloads: int = 0  # with a manifest: downloaded genomes on disk at once, at most (0 = keep all)
    max_genomes: int = 0  # with a manifest: only the first N genomes of each split, for a trial (0 = all)

    def __post_init__(self):
        check = checker("preprocess", self)
        check("min_len", 1 <= self.min_len <= self.max_len, f"need 1 <= min_len <= max_len = {self.max_len}")
        check("val_fraction", 0.0 <= self.val_fraction < 1.0, "must be in [0, 1)")
        for key in ("val_genomes", "test_genomes"):
            v = float(getattr(self, key))
            check(key, 0.0 <= v < 1.0 or v >= 1 and v.is_integer(), "expected a share in [0, 1) or a whole count")
        check("split_by", self.split_by in ("seed", "position"), "expected 'seed' or 'position'")
        for key in ("keep_downloads", "max_genomes"):
            check(key, getattr(self, key) >= 0, "must be >= 0 (0 = no limit)")
        check("md5", not self.md5 or len(self.md5) == len(self.sources),
              f"give one per source ({len(self.sources)}; \"\" = look it up beside the URL) or none")
        check("sources", bool(self.sources) != bool(self.manifest),
              "set sources or preprocess.manifest, not both and not neither "
              "(e.g. --preprocess.sources=[] to use the manifest)")


@dataclass
class TokenizerConfig:
    kind: str = "bpe"  # "bpe" (tinydnabert) | "kmer" (agront_1b) | "char" (dnafm_7b)
    vocab_size: int = 1024  # bpe only: total vocabulary, special tokens included
    min_frequency: int = 4  # bpe only
    sample_fraction: float = 0.1  # bpe only: seeded uniform sample of train segments to train on
    max_train_mbp: float = 0.0  # bpe only: cap on the sample in Mbp (0 = none); ~50 B of RAM per sampled bp
    k: int = 6  # kmer only
    encode_batch_size: int = 1024  # segments per encode_batch call while writing token files

    def __post_init__(self):
        check = checker("tokenizer", self)
        check("kind", self.kind in ("bpe", "kmer", "char"), "expected one of bpe, kmer, char")
        check("vocab_size", 0 < self.vocab_size <= 2**16, "expected 1..65536 (token ids are uint16)")
        check("min_frequency", self.min_frequency >= 0, "must be >= 0")
        check("sample_fraction", 0 < self.sample_fraction <= 1, "expected (0, 1]")
        check("max_train_mbp", self.max_train_mbp >= 0, "must be >= 0 (0 = no cap)")
        check("k", 1 <= self.k <= 7, "expected 1..7 (4^8 k-mers would not fit uint16 token ids)")
        check("encode_batch_size", self.encode_batch_size >= 1, "must be at least 1")


@dataclass
class PretrainConfig:
    parallel: str = "ddp"  # under torchrun: "ddp" | "fsdp" (FSDP2 fully_shard); ignored in one process
    seq_len: int = 512  # tokens per packed block
    batch_size: int = 128  # sequences per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 200_000  # optimizer steps of the whole run
    warmup_steps: int = 20_000  # linear warm-up, then linear decay to min_lr at max_steps
    lr: float = 1e-4  # peak learning rate
    min_lr: float = 0.0  # learning rate at max_steps
    weight_decay: float = 1e-5  # not applied to biases and norms
    beta1: float = 0.9  # AdamW's first-moment decay
    beta2: float = 0.999  # AdamW's second-moment decay
    eps: float = 1e-8  # AdamW's epsilon
    grad_clip: float = 1.0  # gradient norm clipped to this (0 = no clipping)
    mask_prob: float = 0.15  # of non-special tokens; 80% <mask> / 10% random / 10% kept
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU) | "fp32" | "bf16"
    compile: bool = False  # torch.compile: the whole model (per block under FSDP2)
    activation_checkpointing: bool = False  # recompute each block in backward: less memory, ~1/3 more compute
    meta_init: bool = False  # build on the meta device, then to_empty + init_weights (big presets)
    log_interval: int = 10  # steps between log lines (and the loop's one host sync)
    eval_interval: int = 1000  # steps between validations
    eval_batches: int = 20  # fixed validation subset: this many batches
    ckpt_interval: int = 5000  # steps between checkpoints
    keep_checkpoints: int = 3  # newest checkpoints kept on disk
    gpu_peak_tflops: float = 0.0  # for MFU; 0 = look the GPU up (H100 bf16 dense: 989)
    stop_at: int = 0  # end this job at this step, checkpointed (0 = max_steps); --resume goes on (time-limited jobs)
    dry_run_gpus: int = 2  # --dry-run plans for this many GPUs (the preset's intended count); WORLD_SIZE wins
    dry_run_gpu: str = "H100"  # --dry-run: the GPU to plan for: "H100", "H200", "A100", "RTX 4090"
    dry_run_mfu: float = 0.23  # --dry-run: the MFU assumed; tinydnabert's on an H200 (bench/results_gpu.md)

    def __post_init__(self):
        check = checker("pretrain", self)
        check("parallel", self.parallel in ("ddp", "fsdp"), "expected 'ddp' or 'fsdp'")
        for key in ("seq_len", "batch_size", "grad_accum", "max_steps", "log_interval", "eval_interval",
                    "eval_batches", "ckpt_interval", "keep_checkpoints", "dry_run_gpus"):
            check(key, getattr(self, key) >= 1, "must be at least 1")
        check("mask_prob", 0 < self.mask_prob < 1, "must be in (0, 1)")
        check_recipe(check, self)


@dataclass
class FinetuneConfig:
    benchmark: str = "revised"  # "revised" (TinyDNABERT's 18) | "original" | "demo" | "local" (<data_dir>/<task>/)
    base_url: str = "https://huggingface.co/datasets/InstaDeepAI"  # + /<repo>/resolve/<revision>/<task>/<split>.fna
    revision: str = ""  # hub revision; "" = the benchmark's pinned default (BENCHMARKS in shelf/nt_tasks.py)
    data_dir: str = "data/nt_benchmark"  # task files live in <data_dir>/<benchmark>/<task>/ ("local": <data_dir>/<task>/)
    pretrained: str = ""  # MaskedLM state_dict for init "pretrained"; "" = <run.out_dir>/final/model.pt
    tasks: list[str] = field(default_factory=list)  # empty = every task of the benchmark
    # "hf:<org>/<name>@<40-hex commit>": a published ESM checkpoint (NT v1, AgroNT) at a pinned commit, fetched into
    # <hf_dir>/<org>/<name>/<commit>/, with its own tokenizer and shape
    inits: list[str] = field(default_factory=lambda: ["pretrained", "scratch"])  # "pretrained", "scratch", "hf:..."
    hub_url: str = "https://huggingface.co"  # hf: inits: <hub_url>/<repo>/resolve/<commit>/<file>, <hub_url>/api/...
    hf_dir: str = "data/hf"  # hf: inits' downloads (shared cache: a verified file is never fetched twice)
    num_seeds: int = 3  # runs per (task, init, train size); each seed also draws its own validation split
    train_sizes: list[int] = field(default_factory=lambda: [0])  # label budgets: training labels per run (0 = all)
    probe: bool = True  # also a linear probe on the frozen encoder (pretrained or random), before fine-tuning
    kmer: int = 4  # k of the k-mer count baseline beside the probe (0 = off): a logistic regression on k-mer counts
    batch_size: int = 64  # sequences per step
    max_steps: int = 5000  # steps per run
    warmup_steps: int = 500  # linear warm-up, then linear decay to 0 at max_steps
    lr: float = 1e-4  # peak learning rate
    min_lr: float = 0.0  # learning rate at max_steps
    weight_decay: float = 1e-5  # AdamW, not on biases and norms
    beta1: float = 0.9  # AdamW betas, eps, grad_clip: Hugging Face Trainer's defaults, which TinyDNABERT used
    beta2: float = 0.999  # AdamW's second-moment decay
    eps: float = 1e-8  # AdamW's epsilon
    grad_clip: float = 1.0  # gradient norm clipped to this (0 = no clipping)
    eval_interval: int = 200  # validation MCC every this many steps (and at the last); the best weights are kept
    val_fraction: float = 0.1  # stratified, seeded split of train
    classifier_dropout: float = 0.1  # dropout in the classification head
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU) | "fp32" | "bf16"

    def __post_init__(self):
        check = checker("finetune", self)
        check("benchmark", self.benchmark in ("revised", "original", "demo", "local"),
              "expected revised, original, demo or local")
        check("inits", bool(self.inits) and all(i in ("pretrained", "scratch") or HF_INIT.fullmatch(i)
                                                for i in self.inits),
              "expected a non-empty list of pretrained, scratch, hf:<org>/<name>@<commit> (the full 40-hex commit, "
              "from the model's History page on the hub: a branch or tag can move)")
        for key in ("num_seeds", "batch_size", "max_steps", "eval_interval"):
            check(key, getattr(self, key) >= 1, "must be at least 1")
        sizes = self.train_sizes
        check("train_sizes", bool(sizes) and min(sizes) >= 0 and len(set(sizes)) == len(sizes),
              "expected a non-empty list of label budgets >= 0 (0 = all training labels), each budget once")
        check("val_fraction", 0 < self.val_fraction < 1, "must be in (0, 1)")
        check("classifier_dropout", 0 <= self.classifier_dropout < 1, "must be in [0, 1)")
        check("kmer", 0 <= self.kmer <= 6, "expected 0 (no k-mer baseline) to 6 (4,096 counts per sequence)")
        check_recipe(check, self)


def check_recipe(check, c) -> None:
    """The optimizer and precision keys [pretrain] and [finetune] share (a NaN fails every one of these)."""
    check("precision", c.precision in ("auto", "fp32", "bf16"), "expected 'auto', 'fp32' or 'bf16'")
    check("lr", 0 < c.lr < 3e38, "must be positive and a float32 (< 3e38)")
    check("warmup_steps", c.warmup_steps >= 0, "must be >= 0 (a warm-up longer than max_steps never decays)")
    check("min_lr", 0 <= c.min_lr <= c.lr, "must be in [0, lr]")
    check("weight_decay", c.weight_decay >= 0, "must be >= 0")
    check("beta1", 0 <= c.beta1 < 1, "must be in [0, 1)")
    check("beta2", 0 <= c.beta2 < 1, "must be in [0, 1)")
    check("eps", c.eps > 0, "must be positive")
    check("grad_clip", c.grad_clip >= 0, "must be >= 0 (0 = no clipping)")


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


# -----------------------------------------------------------------------------
# reading: TOML file, then command-line overrides, each value type-checked against its field

SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(Config)}
EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def coerce(value, tp, where: str):
    """`value` as parsed from TOML, checked against a field type: int is accepted where a float is due."""
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {item.__name__}, got {value!r}")
        return [coerce(v, item, where) for v in value]
    if not (isinstance(value, (int, float) if tp is float else tp) and (tp is bool or not isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {EXPECTED[tp]}, got {value!r}")
    return float(value) if tp is float else value


def set_value(values: dict, section: str, key: str, value, source: str) -> None:
    if section not in SECTIONS:
        raise ConfigError(f"{source}: unknown section [{section}]{did_you_mean(section, SECTIONS)} (valid sections: "
                          f"{', '.join(SECTIONS)})")
    types = typing.get_type_hints(SECTIONS[section])
    if key not in types:
        raise ConfigError(f"{source}: unknown key '{section}.{key}'{did_you_mean(key, types)} (--help lists the keys, "
                          "their defaults and meanings)")
    where = source if source.startswith("--") else f"{source}: {section}.{key}"
    values[section][key] = coerce(value, types[key], where)


def did_you_mean(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f": did you mean '{close[0]}'?" if close else ""


def parse_cli_value(text: str):
    """`--a.b=3` -> 3, `=[x,y]` -> ['x','y'], `=true` -> True, `=out/run` -> 'out/run' (quotes optional)."""
    with contextlib.suppress(tomllib.TOMLDecodeError):
        return tomllib.loads(f"v = {text}")["v"]
    if text.startswith("[") and text.endswith("]"):  # a list of bare words: [promoter_all, enhancers]
        inner = text[1:-1].strip()
        return [parse_cli_value(item.strip()) for item in inner.split(",")] if inner else []
    return text


def parse_argv(argv: list[str], flags: tuple[str, ...]) -> tuple[Path, list[tuple[str, str]], set[str]]:
    """-> (config file, [(section.key, text)], the script's flags given, "--help" among them if asked)."""
    config_path, overrides, given = DEFAULT_CONFIG, [], set()
    usage = f"usage: --config FILE, --section.key=value (or value){''.join(', ' + f for f in flags)}, --help"
    args = iter(argv)
    for arg in args:
        if arg in (*flags, "-h", "--help"):
            given.add("--help" if arg == "-h" else arg)
        elif arg == "--config" or arg.startswith("--config="):
            name = arg.partition("=")[2] or next(args, None)
            if not name:
                raise ConfigError("--config needs a file name")
            config_path = Path(name)
        elif arg.startswith("--") and "." in arg.split("=", 1)[0]:  # --section.key=value or --section.key value
            key, _, value = arg[2:].partition("=")
            if "=" not in arg and (value := next(args, None)) is None:
                raise ConfigError(f"{arg} needs a value")
            overrides.append((key, value))
        else:
            raise ConfigError(f"unknown argument '{arg}'; {usage}")
    return config_path, overrides, given


def load_config(argv: list[str] | None = None, flags: tuple[str, ...] = (), doc: str = "",
                sections: tuple[str, ...] = tuple(SECTIONS)) -> tuple[Config, set[str]]:
    """`--config FILE` (default: tinydnabert), `--section.key=value` overrides and the script's boolean `flags`
    -> (the resolved Config, the flags given, e.g. {"--resume"}). --help: the script's `doc`, then the keys of
    the `sections` it reads, with their values in this config and their meanings; then exit."""
    path, overrides, given = parse_argv(sys.argv[1:] if argv is None else list(argv), flags)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})")
    values = {section: {} for section in SECTIONS}
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: '{section}' must be a [section] table, got {table!r}")
        for key, value in table.items():
            set_value(values, section, key, value, str(path))
    for dotted, text in overrides:
        section, _, key = dotted.partition(".")
        set_value(values, section, key, parse_cli_value(text), f"--{dotted}")
    try:  # each section checks its values as it is built (__post_init__)
        cfg = Config(**{name: make(**values[name]) for name, make in SECTIONS.items()})
    except ValueError as e:
        raise ConfigError(f"{path}{' + command line' if overrides else ''}: {e}")
    if "--help" in given:
        print_help(cfg, path, doc, sections, flags)
        sys.exit(0)
    return cfg, given


def field_help(section_class) -> dict[str, str]:
    """{key: the comment beside its field in the dataclass source}: each key's meaning is written once, there."""
    source = inspect.getsource(section_class)
    return {m[1]: m[2] for m in re.finditer(r"^\s+(\w+): [^#\n]*#\s*(.*)$", source, flags=re.MULTILINE)}


def print_help(cfg: Config, path: Path, doc: str, sections: tuple[str, ...], flags: tuple[str, ...]) -> None:
    print("\n\n".join(doc.strip("\n").split("\n\n")[:2]))  # what the script does, and how to run it
    print(f"\noptions: --config FILE (now {path}), --section.key=value or --section.key value"
          f"{''.join(', ' + f for f in flags)}. The keys this script reads, with their values in {path}:")
    for section in sections:
        values = getattr(cfg, section)
        meanings = field_help(type(values))
        print(f"\n[{section}]")
        for f in dataclasses.fields(values):
            print(f"  --{section}.{f.name} ({f.type.__name__}, {toml_value(getattr(values, f.name))})  "
                  f"{meanings.get(f.name, '')}")


# -----------------------------------------------------------------------------
# writing: the resolved config, every key, as TOML

def toml_value(v) -> str:  # a JSON string is a valid TOML string; Python's repr of a number is TOML
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v) if isinstance(v, (str, bool)) else repr(v)


def config_to_toml(cfg: Config) -> str:
    lines = ["# resolved config: every key, after the preset and command-line overrides"]
    for section in SECTIONS:
        lines.append(f"\n[{section}]")
        lines += [f"{key} = {toml_value(v)}" for key, v in dataclasses.asdict(getattr(cfg, section)).items()]
    return "\n".join(lines) + "\n"


def save_config(cfg: Config, directory: str | Path) -> Path:
    """Write the resolved config as <directory>/config.toml, beside an output; it loads back with `--config`."""
    path = Path(directory) / "config.toml"
    with atomic_write(path) as f:
        f.write(config_to_toml(cfg))
    return path
