"""LRA Image: CIFAR-10 as a sequence of 1024 grayscale pixels (Tay et al. 2021).

Each 32×32 image is converted to 8-bit grayscale (PIL's ``convert("L")``: 0.299 R + 0.587 G +
0.114 B) and read row by row; token id = intensity + 1 (0 is padding), vocabulary 257.
LRA trains on CIFAR-10 train and evaluates on test (our ``validation``).

    source: hub       -> datasets.load_dataset("uoft-cs/cifar10")  (columns img, label)
    source: PATH      -> a DatasetDict saved with save_to_disk, splits train/test
    source: generate  -> offline stand-in: 10 classes of noisy oriented gratings, class c at
                         angle c·18°, random frequency and phase, Gaussian pixel noise; seeded
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from lk_study.tasks.base import (
    AccuracyTask,
    BadRows,
    TaskConfig,
    check,
    ids_array,
    prepare_cached,
    progress,
)
from lk_study.tasks.hf import load_splits

HUB_NAME = "uoft-cs/cifar10"
SPLITS = {"train": "train", "validation": "test"}
PIXEL_VOCAB = 257
NUM_CLASSES = 10


@dataclass(frozen=True)
class ImageConfig(TaskConfig):
    name: str = "image"
    source: str = "hub"  # hub | generate | PATH to a save_to_disk DatasetDict
    resolution: int = 32  # generate only
    size: int = 12_000  # generate only: images before the 5:1 train/validation split
    seed: int = 0  # generate only
    max_examples: int = 0  # per split; 0 = all

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.resolution >= 4, "resolution", "must be >= 4")
        check(self.size >= 12, "size", "must be >= 12")


def generate(size: int, resolution: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gratings: images uint8 (N, R, R), labels int64 (N,) balanced over 10 orientations."""
    rng = np.random.default_rng(seed)
    labels = np.arange(size) % NUM_CLASSES
    rng.shuffle(labels)
    angle = labels * np.pi / NUM_CLASSES + rng.normal(0, 0.05, size)
    freq = rng.uniform(0.15, 0.45, size)
    phase = rng.uniform(0, 2 * np.pi, size)
    y, x = np.mgrid[0:resolution, 0:resolution].astype(np.float64)
    proj = np.cos(angle)[:, None, None] * x + np.sin(angle)[:, None, None] * y
    img = 0.5 + 0.35 * np.sin(freq[:, None, None] * 2 * np.pi * proj / 4 + phase[:, None, None])
    img += rng.normal(0, 0.1, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), labels.astype(np.int64)


def pixel_table(images: np.ndarray, labels: np.ndarray) -> pa.Table:
    flat = images.reshape(len(images), -1).astype(np.int32) + 1
    return pa.table({"ids": ids_array(flat), "label": pa.array(labels.astype(np.int64))})


def encode_hf(rows, cfg: ImageConfig, where: str) -> pa.Table:
    bad = BadRows(cfg.on_bad_rows, where)
    images, labels = [], []
    for i, row in enumerate(progress(rows, desc=where, total=len(rows))):
        if cfg.max_examples and len(labels) >= cfg.max_examples:
            break
        img = row.get("img", row.get("image"))
        label = row.get("label")
        if img is None:
            bad(f"row {i}", "no image")
            continue
        if not isinstance(label, int) or not 0 <= label < NUM_CLASSES:
            bad(f"row {i}", f"label {label!r} is not in 0..9")
            continue
        images.append(np.asarray(img.convert("L"), dtype=np.uint8))
        labels.append(label)
    bad.log()
    return pixel_table(np.stack(images), np.array(labels))


class Image(AccuracyTask):
    Config = ImageConfig

    def vocab_size(self, cfg: ImageConfig) -> int:
        return PIXEL_VOCAB

    def max_len(self, cfg: ImageConfig) -> int:
        return 1024 if cfg.source != "generate" else cfg.resolution**2

    def num_outputs(self, cfg: ImageConfig) -> int:
        return NUM_CLASSES

    def prepare(self, cfg: ImageConfig) -> dict[str, Path]:
        def build() -> dict[str, pa.Table]:
            if cfg.source == "generate":
                images, labels = generate(cfg.size, cfg.resolution, cfg.seed)
                n_train = cfg.size * 5 // 6
                return {
                    "train": pixel_table(images[:n_train], labels[:n_train]),
                    "validation": pixel_table(images[n_train:], labels[n_train:]),
                }
            data = load_splits(cfg.source, HUB_NAME, None, list(SPLITS.values()))
            return {
                ours: encode_hf(data[theirs], cfg, f"{cfg.source} split {theirs}")
                for ours, theirs in SPLITS.items()
            }

        return prepare_cached(cfg, self.splits, build)
