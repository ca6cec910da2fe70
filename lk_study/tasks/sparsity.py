"""The synthetic task with controllable attention sparsity (our construction of the paper's).

The paper: 200K instances of length 200, 80 % train / 20 % validation, "controllable
sparsity"; its generator is not public. Ours needs content-based attention whose ideal
pattern has density k/L (shared/notes/sparsity_task.md: simpler constructions are solved by
averaging embeddings and cannot compare kernels):

    position 0       a query token naming a type s ∈ {0..num_types−1}
    positions 1..L−1 content tokens (type, bit); exactly k of them have type s ("signal"),
                     the others a uniformly random type ≠ s; every bit is uniform
    label            the majority bit among the k signal tokens (k odd)

Changing any noise token leaves the label unchanged; flipping signal bits can change it.
Vocabulary: 0 = padding, 1..T = query tokens, T+1+2t+b = content (type t, bit b).
Deterministic given (size, seq_len, num_signal, num_types, seed).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock

if TYPE_CHECKING:
    from lk_study.config import TaskConfig

SPLITS = ("train", "validation")


def generate(
    size: int, seq_len: int, num_signal: int, num_types: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return ids (size, seq_len) int32 and labels (size,) int64."""
    if num_types < 2:
        raise ValueError(f"num_types must be >= 2, got {num_types}")
    if num_signal % 2 == 0 or not 1 <= num_signal <= seq_len - 1:
        raise ValueError(
            f"num_signal must be odd and in [1, seq_len - 1 = {seq_len - 1}], got {num_signal}"
        )
    rng = np.random.default_rng(seed)
    n, length = size, seq_len - 1
    query = rng.integers(num_types, size=n)  # (N,)
    other = rng.integers(num_types - 1, size=(n, length))
    other = other + (other >= query[:, None])  # uniform over types != query
    signal_pos = np.argsort(rng.random((n, length)), axis=1)[:, :num_signal]
    signal = np.zeros((n, length), dtype=bool)
    np.put_along_axis(signal, signal_pos, True, axis=1)
    bits = rng.integers(2, size=(n, length))
    types = np.where(signal, query[:, None], other)
    content = 1 + num_types + 2 * types + bits
    ids = np.concatenate([1 + query[:, None], content], axis=1).astype(np.int32)
    labels = ((bits * signal).sum(1) * 2 > num_signal).astype(np.int64)
    return ids, labels


def label_of(ids: np.ndarray, num_types: int) -> np.ndarray:
    """Recompute labels from ids (N, L): the independent oracle the tests use."""
    query = ids[:, 0] - 1
    content = ids[:, 1:] - 1 - num_types
    types, bits = content // 2, content % 2
    signal = types == query[:, None]
    return ((bits * signal).sum(1) * 2 > signal.sum(1)).astype(np.int64)


def cache_root(cfg: TaskConfig) -> Path:
    root = cfg.cache_dir or os.environ.get("LK_STUDY_CACHE") or Path.home() / ".cache" / "lk_study"
    return Path(root)


class Sparsity:
    """Task registry entry for ``sparsity`` (binary classification, metric accuracy)."""

    num_classes = 2
    metrics = ("accuracy",)

    def vocab_size(self, cfg: TaskConfig) -> int:
        return 1 + 3 * cfg.num_types

    def max_len(self, cfg: TaskConfig) -> int:
        return cfg.seq_len

    def prepare(self, cfg: TaskConfig) -> dict[str, Path]:
        """Generate once per machine into the cache (Parquet, under a file lock)."""
        params = {
            k: getattr(cfg, k)
            for k in ("size", "seq_len", "num_signal", "num_types", "val_fraction", "seed")
        }
        key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
        folder = cache_root(cfg) / "sparsity" / key
        paths = {s: folder / f"{s}.parquet" for s in SPLITS}
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / ".lock")):
            if all(p.exists() for p in paths.values()):
                return paths
            ids, labels = generate(cfg.size, cfg.seq_len, cfg.num_signal, cfg.num_types, cfg.seed)
            n_train = int(round(cfg.size * (1 - cfg.val_fraction)))
            for split, sl in (("train", slice(0, n_train)), ("validation", slice(n_train, None))):
                table = pa.table(
                    {
                        "ids": pa.FixedSizeListArray.from_arrays(
                            pa.array(ids[sl].ravel()), cfg.seq_len
                        ),
                        "label": pa.array(labels[sl]),
                    }
                )
                tmp = paths[split].with_suffix(".tmp")
                pq.write_table(table, tmp)
                tmp.replace(paths[split])
            (folder / "params.json").write_text(json.dumps(params, indent=1))
        return paths
