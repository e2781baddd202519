"""Every random choice of every script comes from run.seed and a named stream: rng(seed, "blocks", epoch).
Each (name, keys) is its own independent stream, so a new draw in one place never shifts another, and two
uses can only share numbers by sharing a name. Keys are whole numbers >= 0 or strings (e.g. a task name)."""

import zlib

import numpy as np


def _sequence(seed: int, stream: str, keys) -> np.random.SeedSequence:
    words = [k if isinstance(k, int) else zlib.crc32(str(k).encode()) for k in (stream, *keys)]
    return np.random.SeedSequence([seed, *words])


def rng(seed: int, stream: str, *keys) -> np.random.Generator:
    """numpy's generator for the stream `stream` at `keys`."""
    return np.random.default_rng(_sequence(seed, stream, keys))


def torch_seed(seed: int, stream: str, *keys) -> int:
    """The same streams as a 63-bit seed, for torch.manual_seed or a torch.Generator."""
    return int(_sequence(seed, stream, keys).generate_state(1, np.uint64)[0] >> np.uint64(1))
