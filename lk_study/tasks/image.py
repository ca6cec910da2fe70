"""LRA Image: CIFAR-10 as a sequence of 1024 grayscale pixels (Tay et al. 2021).

Each R×R image (R = ``resolution``, 32 as in LRA) is converted to 8-bit grey and read row by
row; token id = intensity + 1 (0 is padding), vocabulary 257. We train on CIFAR-10 train and
evaluate on test (our ``validation``); LRA trains on the first 90 % of train, validates on
the last 10 % and reports test.

    source: hub       -> datasets.load_dataset("uoft-cs/cifar10")  (columns img, label)
    source: PATH      -> a DatasetDict saved with save_to_disk, splits train/test, columns
                         ``img`` (or ``image``) and ``label`` in 0..9
    source: generate  -> offline stand-in: 10 classes of noisy oriented gratings, class c at
                         angle c·18°, random frequency and phase, Gaussian pixel noise; seeded

Pixels of hub and PATH images (``to_grey``), checked row by row; a problem raises
ValueError ``SOURCE split S, row I: ...`` naming the mode, dtype or size found
(``task.on_bad_rows: skip`` skips rows whose pixels cannot be read, not rows of another
size):

    PIL mode L   8-bit grey, taken as it is
    PIL mode RGB grey by the ITU-R 601-2 luma transform L = 0.299 R + 0.587 G + 0.114 B,
                 rounded to the nearest integer (Pillow's ``convert("L")``). LRA's pipeline
                 (``lra_benchmarks/image/input_pipeline.py``) calls ``tf.image.rgb_to_grayscale``
                 with the same weights to four places (0.2989, 0.5870, 0.1140) and truncates
                 where Pillow rounds: the two differ by at most one grey level
    PIL mode P   palette images: their palette colours, then the luma transform; mode 1
                 (bilevel) gives 0 and 255
    PIL I, F     32-bit integer or float images, and numpy arrays (H, W), (H, W, 1) or
                 (H, W, 3) of any integer or float dtype: accepted when every value is a
                 whole number in 0..255 (floats in 0..1 are refused, not guessed at)
    refused      modes with alpha (LA, RGBA, PA: flatten them first), 16-bit modes (I;16*),
                 CMYK, YCbCr, HSV, LAB and any other shape or dtype

Sizes (``fit_size``): every grey image must be R×R, ``resolution`` × ``resolution``.
``resize`` says what happens to one that is not (images of several sizes in a split are
taken one by one, so they meet the same rule):

    error   (default) ValueError naming split, row, the size found and the size expected,
            and the keys to set (``task.resize`` or ``task.resolution``)
    pad     smaller images are centred on an R×R black (0) canvas, the odd row or column of
            padding going to the bottom or right; an image larger than R on either side is
            the same error
    resize  resampled to R×R with Pillow's bicubic filter (``Image.Resampling.BICUBIC``,
            Pillow's default for ``resize``, antialiased when shrinking) on the grey image,
            so the aspect ratio is not kept
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image as PILImage

from lk_study.tasks.base import (
    BYTE_VOCAB,
    AccuracyTask,
    BadRows,
    TaskConfig,
    check,
    ids_array,
    intensity_ids,
    prepare_cached,
    progress,
)
from lk_study.tasks.hf import load_splits

HUB_NAME = "uoft-cs/cifar10"
SPLITS = {"train": "train", "validation": "test"}
NUM_CLASSES = 10
RESIZE = ("error", "pad", "resize")
RESAMPLE = PILImage.Resampling.BICUBIC  # resize: resize
_ALPHA_MODES = ("LA", "La", "RGBA", "RGBa", "PA")


class PixelError(ValueError):
    """Pixels ``to_grey`` cannot read (mode, dtype or shape); the message names them."""


@dataclass(frozen=True)
class ImageConfig(TaskConfig):
    name: str = "image"
    source: str = "hub"  # hub | generate | PATH to a save_to_disk DatasetDict
    resolution: int = 32  # image side: generated images, and what hub/PATH images must be
    resize: str = "error"  # hub/PATH images of another size: error | pad | resize
    size: int = 12_000  # generate only: images before the train/validation split
    val_fraction: float = 1 / 6  # generate only (5:1, as CIFAR-10's 50 000 / 10 000)
    seed: int = 0  # generate only
    max_examples: int = 0  # per split; 0 = all

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.resolution >= 4, "resolution", "must be >= 4")
        check(self.resize in RESIZE, "resize", f"must be one of {', '.join(RESIZE)}")
        check(self.size >= 12, "size", "must be >= 12")
        check(0.0 < self.val_fraction < 1.0, "val_fraction", "must be in (0, 1)")


def generate(size: int, seed: int, *, resolution: int) -> tuple[np.ndarray, np.ndarray]:
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


def _whole_0_255(array: np.ndarray, what: str) -> np.ndarray:
    """An integer or float array whose values are all whole numbers in 0..255 -> uint8."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise PixelError(f"{what} has dtype {array.dtype}; expected 8-bit values 0..255")
    if array.size and not (
        np.isfinite(array).all()
        and array.min() >= 0
        and array.max() <= 255
        and (array == np.round(array)).all()
    ):
        raise PixelError(
            f"{what} has dtype {array.dtype} with values in [{array.min():g}, "
            f"{array.max():g}]; expected whole numbers in 0..255 (scale it to 8-bit first)"
        )
    return array.astype(np.uint8)


def to_grey(image) -> np.ndarray:
    """A PIL image or an array (see the module docstring) -> uint8 (H, W) grey, or
    ``PixelError`` naming the mode, dtype or shape that is refused."""
    if isinstance(image, PILImage.Image):
        mode = image.mode
        if mode == "L":
            return np.asarray(image, dtype=np.uint8)
        if mode in ("RGB", "1"):
            return np.asarray(image.convert("L"), dtype=np.uint8)
        if mode == "P":
            return np.asarray(image.convert("RGB").convert("L"), dtype=np.uint8)
        if mode in ("I", "F"):
            return _whole_0_255(np.asarray(image), f"mode {mode} image")
        if mode in _ALPHA_MODES:
            raise PixelError(
                f"image mode {mode} has an alpha channel; flatten it onto a background and "
                f"save it as L or RGB"
            )
        if mode.startswith("I;16"):
            raise PixelError(f"image mode {mode} is 16-bit; convert it to 8-bit L or RGB")
        raise PixelError(f"image mode {mode} is not supported; use L (grey) or RGB")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise PixelError(
            f"image array of shape {array.shape}; expected (H, W) grey or (H, W, 3) RGB"
        )
    array = _whole_0_255(array, f"image array of shape {array.shape}")
    if array.ndim == 3:
        return np.asarray(PILImage.fromarray(array).convert("L"), dtype=np.uint8)
    return array


def fit_size(grey: np.ndarray, resolution: int, resize: str, where: str) -> np.ndarray:
    """(H, W) uint8 -> (R, R) uint8 by the ``resize`` policy; ValueError ``where: ...`` for
    an image the policy does not take."""
    h, w = grey.shape
    if (h, w) == (resolution, resolution):
        return grey
    found = f"image is {w}x{h} (width x height), expected {resolution}x{resolution}"
    if resize == "resize":
        return np.asarray(PILImage.fromarray(grey).resize((resolution, resolution), RESAMPLE))
    if resize == "pad":
        if h > resolution or w > resolution:
            raise ValueError(
                f"{where}: {found}; task.resize: pad only enlarges (set task.resize: resize, "
                f"or task.resolution: {max(h, w)} with task.resize: pad)"
            )
        out = np.zeros((resolution, resolution), dtype=np.uint8)
        top, left = (resolution - h) // 2, (resolution - w) // 2
        out[top : top + h, left : left + w] = grey
        return out
    hint = f"task.resolution: {h}" if h == w else "task.resize: resize"
    raise ValueError(f"{where}: {found} (set task.resize: pad or resize, or {hint})")


def pixel_table(images: np.ndarray, labels: np.ndarray) -> pa.Table:
    """uint8 images (N, R, R) and labels (N,) -> the prepared table (``intensity_ids``)."""
    ids = ids_array(intensity_ids(images))
    return pa.table({"ids": ids, "label": pa.array(labels.astype(np.int64))})


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
        try:
            grey = to_grey(img)
        except PixelError as e:
            bad(f"row {i}", str(e))
            continue
        images.append(fit_size(grey, cfg.resolution, cfg.resize, f"{where}, row {i}"))
        labels.append(label)
    bad.log()
    if not images:
        raise ValueError(f"{where}: no usable rows ({bad.skipped} skipped)")
    return pixel_table(np.stack(images), np.array(labels))


class Image(AccuracyTask):
    Config = ImageConfig

    def vocab_size(self, cfg: ImageConfig) -> int:
        return BYTE_VOCAB

    def max_len(self, cfg: ImageConfig) -> int:
        return cfg.resolution**2

    def num_outputs(self, cfg: ImageConfig) -> int:
        return NUM_CLASSES

    def prepare(self, cfg: ImageConfig) -> dict[str, Path]:
        def build() -> dict[str, pa.Table]:
            if cfg.source == "generate":
                images, labels = generate(cfg.size, cfg.seed, resolution=cfg.resolution)
                n_train = max(1, int(round(cfg.size * (1 - cfg.val_fraction))))
                return {
                    "train": pixel_table(images[:n_train], labels[:n_train]),
                    "validation": pixel_table(images[n_train:], labels[n_train:]),
                }
            data = load_splits(cfg.source, HUB_NAME, None, list(SPLITS.values()))
            return {
                ours: encode_hf(data[theirs], cfg, f"{cfg.source} split {theirs}")
                for ours, theirs in SPLITS.items()
            }

        return prepare_cached(cfg, self.splits, build, identity={"hub": HUB_NAME})
