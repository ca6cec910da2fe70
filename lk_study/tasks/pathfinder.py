"""Pathfinder (Linsley et al. 2018; Kim, Linsley et al. 2020) as Long Range Arena uses it.

An image shows two endpoint markers (discs) and several curved paths. The label is 1 when one
path joins the two markers and 0 when they sit on two different paths. LRA feeds the R×R
image to the model as a sequence of R² pixel intensities (1024 tokens at 32×32).

``source: generate`` draws the images with ``lk_study.generators.pathfinder`` (its docstring
describes the construction and compares its statistics with the official pathfinder32
images); ``source: PATH`` reads an LRA release. ``write_release`` writes generated images in
that release's layout (``lk-study data generate pathfinder``).

LRA release layout (``lra_release/pathfinder32``; the TFDS builder in google-research/
long-range-arena ``lra_benchmarks/data/pathfinder.py``; rows written by drewlinsley/pathfinder
``snakes2.py``)::

    ROOT/<difficulty>/imgs/<batch>/sample_<i>.png     i counts from 0 within each batch
    ROOT/<difficulty>/metadata/<batch>.npy            one row per image

with difficulties ``curv_baseline``, ``curv_contour_length_9``, ``curv_contour_length_14``
(LRA's easy, intermediate, hard). Despite the ``.npy`` suffix the released metadata files are
text: one row per line, fields separated by spaces::

    imgs/<batch> sample_<i>.png <i> <label> <continuity> <contour_length> <distractor_length>
        <paddle_length> <paddle_thickness> <paddle_margin> <number of paddle contrasts>

Readers (LRA's, S4's, ours) use field 0 (folder), 1 (file) and 3 (label). We write our own
parameters in the remaining fields (curvature, contour and distractor lengths, dash length,
thickness, gap, 1). ``read_release`` also takes binary ``.npy`` string arrays (what
``np.save`` in the original generator writes). Its PNGs go through the image task's pixel
rules (``lk_study.tasks.image.to_grey``: modes L, RGB by ITU-R 601-2 luma, P, 1; 8-bit only,
no alpha) and must be ``resolution`` × ``resolution``; a PNG of another mode or size is a bad
row naming the metadata row, the file and the mode or size found.

Tokens: ``lk_study.tasks.base.intensity_ids`` flattens row-major and maps intensity
v ∈ 0..255 to id v + 1, keeping id 0 (``PAD_ID``) for padding: ``BYTE_VOCAB`` = 257 ids.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from lk_study.generators.pathfinder import generate, make_spec
from lk_study.tasks.base import (
    BYTE_VOCAB,
    AccuracyTask,
    BadRows,
    TaskConfig,
    check,
    ids_array,
    intensity_ids,
    prepare_cached,
)
from lk_study.tasks.image import PixelError, to_grey

NUM_CLASSES = 2
DIFFICULTIES = {"curv_baseline": 6, "curv_contour_length_9": 9, "curv_contour_length_14": 14}
BATCH_SIZE = 1000  # images per imgs/<batch> folder and metadata/<batch>.npy file
_NPY_MAGIC = b"\x93NUMPY"


def write_release(
    out_dir: str | os.PathLike,
    size: int,
    seed: int,
    resolution: int = 32,
    difficulty: str = "curv_baseline",
    *,
    batch_size: int = BATCH_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``size`` images in LRA's layout under ``out_dir/difficulty`` (``out_dir`` plays the
    role of ``lra_release/pathfinder32``) and return that folder. The difficulty sets
    ``contour_length`` (6, 9 or 14); image i is ``generate(size, seed, make_spec(resolution,
    contour_length))[i]``, stored as batch i // batch_size, ``sample_{i % batch_size}``.
    ``progress(done, size)`` is called after each batch."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(
            f"unknown Pathfinder difficulty {difficulty!r}; valid: {', '.join(DIFFICULTIES)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spec = make_spec(resolution, DIFFICULTIES[difficulty])
    folder = Path(out_dir) / difficulty
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    extra = (
        f"{spec.curvature:g} {spec.contour_length} {spec.distractor_length} "
        f"{spec.dash_length:g} {spec.thickness:g} {spec.gap_length:g} 1"
    )
    for batch, start in enumerate(range(0, size, batch_size)):
        stop = min(size, start + batch_size)
        images, labels = generate(size, seed, spec, start, stop)
        img_dir = folder / "imgs" / str(batch)
        img_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            Image.fromarray(image).save(img_dir / f"sample_{i}.png")
            rows.append(f"imgs/{batch} sample_{i}.png {i} {label} {extra}\n")
        meta = folder / "metadata" / f"{batch}.npy"
        tmp = meta.with_suffix(".tmp")
        tmp.write_text("".join(rows), encoding="utf-8")
        tmp.replace(meta)
        if progress is not None:
            progress(stop, size)
    return folder


def _batch_key(path: Path) -> tuple[int, int | str]:
    return (0, int(path.stem)) if path.stem.isdigit() else (1, path.stem)


def _metadata_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(1-based row number, fields) of a metadata file: LRA's text rows, or a binary .npy
    string array as the original generator's ``np.save`` writes it."""
    raw = path.read_bytes()
    if raw.startswith(_NPY_MAGIC):
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{path}: not a readable NumPy string array ({e})") from None
        for i, row in enumerate(np.atleast_2d(array), 1):
            yield i, [str(v) for v in row]
        return
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: neither text rows nor a NumPy array ({e})") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield lineno, line.split()


_LABEL = re.compile(r"[+-]?[0-9]+")


def _read_row(
    folder: Path, fields: list[str], resolution: int | None
) -> tuple[np.ndarray | None, int, str | None]:
    """(image, label, None) for a good row, or (None, -1, problem)."""
    if len(fields) < 4:
        return (
            None,
            -1,
            (
                f"expected at least 4 space-separated fields (folder, file, index, label), "
                f"found {len(fields)}"
            ),
        )
    if not _LABEL.fullmatch(fields[3]) or int(fields[3]) not in (0, 1):
        return None, -1, f"label {fields[3]!r} is not 0 or 1"
    image_path = folder / fields[0] / fields[1]
    if not image_path.is_file():
        return None, -1, f"image not found: {image_path}"
    try:
        with Image.open(image_path) as im:
            image = to_grey(im)
    except PixelError as e:
        return None, -1, f"image {image_path}: {e}"
    except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
        return None, -1, f"unreadable image {image_path}: {e}"
    h, w = image.shape
    if resolution is not None and (h, w) != (resolution, resolution):
        hint = f"; set task.resolution: {h} for a {h}x{h} release" if h == w else ""
        return (
            None,
            -1,
            f"image {image_path} is {w}x{h}, expected {resolution}x{resolution} "
            f"(task.resolution: {resolution}){hint}",
        )
    return image, int(fields[3]), None


def read_release(
    root: str | os.PathLike,
    difficulty: str = "curv_baseline",
    on_bad_rows: str = "error",
    resolution: int | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Read ``root/difficulty`` (``root`` is LRA's ``pathfinder32``-style folder) ->
    (images uint8 (N, R, R), labels int64 (N,), num_skipped), in metadata order (batches
    numerically, then rows).

    A row with fewer than 4 fields, a label that is not 0 or 1, a missing or unreadable image
    (LRA's release has an empty ``curv_baseline/imgs/0/sample_172.png``), a PNG whose mode
    ``lk_study.tasks.image.to_grey`` refuses (alpha, 16-bit, ...), or an image that is not
    ``resolution`` × ``resolution`` (None: square and the size of the first) raises
    ValueError ``ROOT/DIFFICULTY, metadata/BATCH.npy row N: problem`` naming the PNG and the
    mode or size found, or with ``on_bad_rows="skip"`` is skipped and counted (``BadRows``).
    A missing folder is FileNotFoundError naming the expected path."""
    folder = Path(root) / difficulty
    bad = BadRows(on_bad_rows, str(folder))
    meta_dir = folder / "metadata"
    if not meta_dir.is_dir():
        raise FileNotFoundError(
            f"Pathfinder metadata folder not found: {meta_dir} (expected LRA's layout "
            f"ROOT/{difficulty}/metadata/<batch>.npy and ROOT/{difficulty}/imgs/<batch>/"
            f"sample_<i>.png with ROOT a folder like lra_release/pathfinder32; "
            f"`lk-study data generate pathfinder --out DIR` writes one)"
        )
    meta_files = sorted(meta_dir.glob("*.npy"), key=_batch_key)
    if not meta_files:
        raise FileNotFoundError(f"no metadata files {meta_dir}/*.npy (one per image batch)")
    images: list[np.ndarray] = []
    labels: list[int] = []
    for meta in meta_files:
        for row, fields in _metadata_rows(meta):
            image, label, problem = _read_row(folder, fields, resolution)
            if image is not None and images and image.shape != images[0].shape:
                h, w = image.shape
                problem = (
                    f"image {folder / fields[0] / fields[1]} is {w}x{h}, the first image "
                    f"{images[0].shape[1]}x{images[0].shape[0]}"
                )
            elif image is not None and image.shape[0] != image.shape[1]:
                h, w = image.shape
                problem = f"image {folder / fields[0] / fields[1]} is {w}x{h}, not square"
            if problem is None:
                images.append(image)
                labels.append(label)
            else:
                bad(f"{meta.relative_to(folder)} row {row}", problem)
    bad.log()
    if not images:
        raise ValueError(f"{folder}: no usable rows ({bad.skipped} skipped)")
    return np.stack(images), np.array(labels, dtype=np.int64), bad.skipped


# ---------------------------------------------------------------------------- registry entry


@dataclass(frozen=True)
class PathfinderConfig(TaskConfig):
    """``task.name: pathfinder``. ``source: generate`` draws ``size`` images with our generator
    (path length from ``difficulty``); ``source: PATH`` reads an LRA release folder (the one
    holding ``curv_baseline/`` etc., i.e. ``lra_release/pathfinder32``). Either way the images
    are split train/validation by ``val_fraction``, in order."""

    name: str = "pathfinder"
    source: str = "generate"  # generate | PATH to the release folder
    difficulty: str = "curv_contour_length_14"
    resolution: int = 32  # image side; for a release, its size (32 for pathfinder32)
    size: int = 10_000  # generate only
    val_fraction: float = 0.1
    seed: int = 0  # generate only

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.source != "hub", "source", "must be generate or the LRA release folder")
        check(
            self.difficulty in DIFFICULTIES,
            "difficulty",
            f"must be one of {', '.join(DIFFICULTIES)}",
        )
        check(self.resolution >= 16, "resolution", "must be >= 16")
        check(self.size >= 2, "size", "must be >= 2")
        check(0.0 < self.val_fraction < 1.0, "val_fraction", "must be in (0, 1)")


class Pathfinder(AccuracyTask):
    Config = PathfinderConfig

    def vocab_size(self, cfg: PathfinderConfig) -> int:
        return BYTE_VOCAB

    def max_len(self, cfg: PathfinderConfig) -> int:
        return cfg.resolution**2

    def num_outputs(self, cfg: PathfinderConfig) -> int:
        return NUM_CLASSES

    def prepare(self, cfg: PathfinderConfig) -> dict[str, Path]:
        def build() -> dict[str, pa.Table]:
            if cfg.source == "generate":
                spec = make_spec(cfg.resolution, DIFFICULTIES[cfg.difficulty])
                images, labels = generate(cfg.size, cfg.seed, spec)
            else:
                images, labels, _ = read_release(
                    cfg.source, cfg.difficulty, cfg.on_bad_rows, cfg.resolution
                )
            n_train = max(1, int(round(len(labels) * (1 - cfg.val_fraction))))
            tokens = intensity_ids(images)
            return {
                split: pa.table({"ids": ids_array(tokens[sl]), "label": pa.array(labels[sl])})
                for split, sl in (
                    ("train", slice(0, n_train)),
                    ("validation", slice(n_train, None)),
                )
            }

        sources = () if cfg.source == "generate" else (Path(cfg.source) / cfg.difficulty,)
        return prepare_cached(cfg, self.splits, build, sources=sources)
