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

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from lk_study.tasks.base import AccuracyTask, TaskConfig, check, ids_array, prepare_cached


def generate(
    size: int, seed: int, *, seq_len: int, num_signal: int, num_types: int
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


def bag_of_bits_accuracy(seq_len: int, num_signal: int) -> float:
    """The best accuracy of any model that does not tell signal from noise tokens: the Bayes
    accuracy given the number of 1-bits among all seq_len − 1 content tokens (the types and
    order carry no label information without the query match). With S ~ Bin(k, ½) the signal
    ones, N ~ Bin(n, ½) the noise ones (n = L − 1 − k), label y = [S > k/2], total C = S + N:

        acc = Σ_c max(P(y = 1, C = c), P(y = 0, C = c)),
        P(y, C = c) = Σ_{s: y(s) = y} P(S = s) P(N = c − s)

    A kernel at this accuracy learned no content-based attention."""
    from math import comb

    k, n = num_signal, seq_len - 1 - num_signal
    p_s = np.array([comb(k, s) for s in range(k + 1)], dtype=float) / 2.0**k
    p_n = np.array([comb(n, j) for j in range(n + 1)], dtype=float) / 2.0**n
    ones = np.arange(k + 1) * 2 > k
    joint1 = np.convolve(np.where(ones, p_s, 0.0), p_n)  # P(y = 1, C = c), c = 0..k+n
    joint0 = np.convolve(np.where(ones, 0.0, p_s), p_n)
    return float(np.maximum(joint0, joint1).sum())


@dataclass(frozen=True)
class SparsityConfig(TaskConfig):
    name: str = "sparsity"
    size: int = 200_000  # instances, before the train/validation split
    seq_len: int = 200
    num_signal: int = 5  # k: signal positions among seq_len (odd, so the majority is defined)
    num_types: int = 8
    val_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.size >= 10, "size", "must be >= 10")
        check(0.0 < self.val_fraction < 1.0, "val_fraction", "must be in (0, 1)")
        check(self.num_types >= 2, "num_types", "must be >= 2")
        check(
            self.num_signal % 2 == 1 and 1 <= self.num_signal < self.seq_len,
            "num_signal",
            f"must be odd and in [1, seq_len - 1 = {self.seq_len - 1}]",
        )


class Sparsity(AccuracyTask):
    """Registry entry ``sparsity``: binary classification, metric accuracy."""

    Config = SparsityConfig

    def vocab_size(self, cfg: SparsityConfig) -> int:
        return 1 + 3 * cfg.num_types

    def max_len(self, cfg: SparsityConfig) -> int:
        return cfg.seq_len

    def num_outputs(self, cfg: SparsityConfig) -> int:
        return 2

    def prepare(self, cfg: SparsityConfig) -> dict[str, Path]:
        """Generate once per machine into the cache (Parquet, under a file lock)."""

        def build() -> dict[str, pa.Table]:
            ids, labels = generate(
                cfg.size,
                cfg.seed,
                seq_len=cfg.seq_len,
                num_signal=cfg.num_signal,
                num_types=cfg.num_types,
            )
            n_train = int(round(cfg.size * (1 - cfg.val_fraction)))
            parts = {"train": slice(0, n_train), "validation": slice(n_train, None)}
            return {
                s: pa.table({"ids": ids_array(ids[sl]), "label": pa.array(labels[sl])})
                for s, sl in parts.items()
            }

        return prepare_cached(cfg, self.splits, build)
