"""What every task is: a config section, prepared Parquet splits, a head and its metrics.

A task is a ``Task`` (below) in ``lk_study.tasks.TASKS``: its ``Config`` (the ``task:``
section), ``head`` (a key of ``lk_study.models.HEADS``), ``splits``, and ``prepare``,
``vocab_size``, ``num_outputs``, ``metrics``; ``max_len``, ``artifacts`` and ``score`` have
defaults.

The data conventions every task shares live here, once: prepared splits have an ``ids``
column (list<int32>, ``PAD_ID`` = 0 is padding), for dual tasks ``ids2``, and a ``label``
column: int64 classes, float64 for regression, or list<int32> per-token targets aligned with
``ids`` (masked LM; ``IGNORE`` = −100 where there is no target). Byte and pixel tasks use
``BYTE_VOCAB`` = 257 ids (a byte or an 8-bit intensity + 1). Malformed input rows go through
``BadRows``: an error naming file/split and row, or (``task.on_bad_rows: skip``) skipped and
counted in one logging line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock

BAD_ROWS = ("error", "skip")
PAD_ID = 0  # padding token id of every task (the encoder's padding_idx)
IGNORE = -100  # per-token label with no target (the loss's ignore_index)
BYTE_VOCAB = 257  # byte / 8-bit intensity tasks: padding + 256 values

logger = logging.getLogger("lk_study.tasks")


class FieldError(ValueError):
    """A bad task parameter; ``field_name`` lets the config loader point at the YAML line."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field_name = field_name


def check(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise FieldError(field_name, message)


@dataclass(frozen=True)
class TaskConfig:
    """Fields every task has; each task's Config adds its own."""

    name: str = ""
    cache_dir: str = ""  # "" -> $LK_STUDY_CACHE or ~/.cache/lk_study
    on_bad_rows: str = "error"  # error | skip (skipped rows are counted in the log)

    def __post_init__(self) -> None:
        check(self.on_bad_rows in BAD_ROWS, "on_bad_rows", f"must be one of {', '.join(BAD_ROWS)}")


def cache_root(cfg: TaskConfig) -> Path:
    root = cfg.cache_dir or os.environ.get("LK_STUDY_CACHE") or Path.home() / ".cache" / "lk_study"
    return Path(root)


def ids_array(rows: list[np.ndarray] | np.ndarray) -> pa.Array:
    """Sequences of token ids (a list of 1-D arrays, or a 2-D array) -> list<int32> column."""
    if isinstance(rows, np.ndarray) and rows.ndim == 2:
        n, width = rows.shape
        offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(rows.ravel().astype(np.int32)))
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = np.concatenate([np.asarray(r, dtype=np.int32) for r in rows]) if rows else []
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.int32()))


SOURCE_WORDS = ("hub", "generate", "")  # task.source values that are not a PATH


def source_fingerprint(path: str | os.PathLike) -> list:
    """The identity of a PATH source for the cache key: every file under it (or the file
    itself) as [relative path, size, mtime_ns], sorted; ["missing"] if it does not exist.
    Stats only (no reads), so a release of many thousand files costs one directory walk."""
    root = Path(path).expanduser()
    if root.is_file():
        st = root.stat()
        return [[root.name, st.st_size, st.st_mtime_ns]]
    if not root.is_dir():
        return ["missing"]
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            full = Path(folder) / name
            try:
                st = full.stat()
            except OSError:  # vanished or a dangling link: part of the identity too
                entries.append([str(full.relative_to(root)), -1, -1])
                continue
            entries.append([str(full.relative_to(root)), st.st_size, st.st_mtime_ns])
    return entries


def _unreadable(path: Path) -> str | None:
    """Why a cached split cannot be used (no Parquet footer, no rows), or None."""
    try:
        meta = pq.read_metadata(path)
    except Exception as e:  # ArrowInvalid (truncated, not Parquet), OSError
        return f"{type(e).__name__}: {e}"
    if meta.num_rows == 0:
        return "no rows"
    return None


def describe_source(cfg: TaskConfig) -> str:
    source = getattr(cfg, "source", None)
    return f"source {source}" if source else "generated data"


def prepare_cached(
    cfg: TaskConfig,
    splits: tuple[str, ...],
    build: Callable[[], dict[str, pa.Table]],
    *,
    sources: tuple[str | os.PathLike, ...] | None = None,
    identity: dict | None = None,
) -> dict[str, Path]:
    """Build the splits once per machine: cache/<task>/<key>/<split>.parquet.

    The key hashes everything that changes the rows: every field of ``cfg`` but
    ``cache_dir`` (``on_bad_rows`` included: a cache built skipping bad rows is not reused
    under ``error``), ``identity`` (e.g. the hub dataset's name and config) and the
    fingerprint (``source_fingerprint``: path, size, mtime of every file) of ``sources``,
    by default ``cfg.source`` when it is a PATH; so a fixed source file gives a new cache.

    ``build()`` returns {split: table}; it runs under a file lock, so concurrent trials on a
    machine wait for the first one instead of building the data twice. A split with no rows
    is a ValueError naming it and the source. Cached files are checked under the lock before
    they are reused (their Parquet footer is read): a truncated or unreadable one is deleted
    and the splits are rebuilt, with a warning naming the file. Writes are atomic
    (temporary file, then rename).
    """
    params = {k: v for k, v in asdict(cfg).items() if k != "cache_dir"}
    if sources is None:
        source = getattr(cfg, "source", "")
        sources = () if not isinstance(source, str) or source in SOURCE_WORDS else (source,)
    key_parts = {
        "params": params,
        "identity": identity or {},
        "sources": {str(s): source_fingerprint(s) for s in sources},
    }
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_root(cfg) / cfg.name.replace("/", "_") / key
    paths = {s: folder / f"{s}.parquet" for s in splits}
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        if all(p.exists() for p in paths.values()):
            problems = {s: _unreadable(p) for s, p in paths.items()}
            broken = {s: why for s, why in problems.items() if why}
            if not broken:
                return paths
            for split, why in broken.items():
                logger.warning(
                    "task %s: cached split %s is unreadable (%s); deleting it and rebuilding "
                    "the data",
                    cfg.name,
                    paths[split],
                    why,
                )
            for p in paths.values():
                p.unlink(missing_ok=True)
        tables = build()
        missing = set(splits) - set(tables)
        if missing:
            raise RuntimeError(f"task {cfg.name}: build() did not produce splits {sorted(missing)}")
        for split in splits:
            if tables[split].num_rows == 0:
                raise ValueError(
                    f"task {cfg.name}: split {split!r} of {describe_source(cfg)} is empty "
                    f"(0 rows after reading"
                    + (" and skipping bad rows" if cfg.on_bad_rows == "skip" else "")
                    + "); every split needs at least one example"
                )
        for split in splits:
            tmp = paths[split].with_suffix(".tmp")
            pq.write_table(tables[split], tmp)
            tmp.replace(paths[split])  # atomic: a crash never leaves half a split
        summary = {
            **key_parts,
            "sources": {
                s: {"files": len(f), "bytes": sum(e[1] for e in f if isinstance(e, list))}
                for s, f in key_parts["sources"].items()
            },
        }
        (folder / "params.json").write_text(json.dumps(summary, indent=1))
    return paths


class Split:
    """One prepared split, this worker's shard (rows rank, rank + world, ...), in memory.

    ``batch(index)`` pads the sequences to the longest one in the batch (at most ``max_len``)
    and returns {"ids": (B, T) int64, ["ids2": (B, T2)], "label": (B,)} tensors.
    """

    def __init__(self, path: Path, rank: int = 0, world_size: int = 1, max_len: int = 0) -> None:
        table = pq.read_table(path)
        self.total_rows = table.num_rows  # all shards together
        rows = np.arange(rank, table.num_rows, world_size)
        table = table.take(pa.array(rows))
        self.max_len = max_len
        self.columns = {}
        self.label = None
        for name in ("ids", "ids2", "label"):
            if name not in table.column_names:
                continue
            col = table.column(name).combine_chunks()
            if pa.types.is_fixed_size_list(col.type):
                col = col.cast(pa.list_(col.type.value_type))
            if pa.types.is_list(col.type):
                self.columns[name] = (col.values.to_numpy(), col.offsets.to_numpy())
            else:
                self.label = col.to_numpy().copy()

    def __len__(self) -> int:
        return len(self.columns["ids"][1]) - 1

    def _pad(self, name: str, index: np.ndarray, fill: int = PAD_ID) -> np.ndarray:
        values, offsets = self.columns[name]
        starts, ends = offsets[index], offsets[index + 1]
        lengths = ends - starts
        if self.max_len:
            lengths = np.minimum(lengths, self.max_len)
        width = max(int(lengths.max(initial=1)), 1)
        out = np.full((len(index), width), fill, dtype=np.int64)
        for row, (s, n) in enumerate(zip(starts, lengths, strict=True)):
            out[row, :n] = values[s : s + n]
        return out

    def batch(self, index: np.ndarray) -> dict:
        import torch

        index = np.asarray(index)
        out = {
            name: torch.from_numpy(self._pad(name, index, IGNORE if name == "label" else PAD_ID))
            for name in self.columns
        }
        if self.label is not None:
            out["label"] = torch.from_numpy(self.label[index].copy())
        return out


def byte_ids(text: str, max_len: int) -> np.ndarray:
    """UTF-8 bytes as tokens (LRA text/retrieval): id = byte + 1 (``PAD_ID`` 0 stays
    padding); ``BYTE_VOCAB`` ids."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)[:max_len].astype(np.int32) + 1


def intensity_ids(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, R, R) -> int32 token ids (N, R·R): row-major pixels, id = intensity + 1
    (1..256), so ``PAD_ID`` 0 stays padding; ``BYTE_VOCAB`` ids."""
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 images of shape (N, R, R), got {images.dtype} {images.shape}"
        )
    return images.reshape(len(images), -1).astype(np.int32) + 1


class BadRows:
    """The one bad-row policy: ``bad(location, problem)`` raises at once (``on_bad_rows:
    error``, naming ``where`` and the location, e.g. ``line 12`` or ``row 3``) or skips and
    counts; ``bad.log()`` reports the skipped rows in one logging line, with the first one."""

    def __init__(self, policy: str, where: str) -> None:
        if policy not in BAD_ROWS:
            raise ValueError(f"on_bad_rows={policy!r}: must be one of {', '.join(BAD_ROWS)}")
        self.policy = policy
        self.where = where
        self.skipped = 0
        self.first = ""

    def __call__(self, location: str, problem: str) -> None:
        if self.policy == "error":
            raise ValueError(
                f"{self.where}, {location}: {problem} "
                "(fix the row, or set task.on_bad_rows: skip to skip such rows)"
            )
        self.skipped += 1
        self.first = self.first or f"{location}: {problem}"

    def log(self) -> None:
        if self.skipped:
            logger.warning(
                "%s: skipped %d malformed row(s) (task.on_bad_rows: skip), first: %s",
                self.where,
                self.skipped,
                self.first,
            )


_UTF16_32_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")


def text_lines(path: Path) -> Iterator[tuple[int, str | None, str]]:
    """The lines of a UTF-8 text file, decoded one by one (``errors="strict"``), so one
    undecodable line is a bad row and not a codec error for the whole file: (1-based line
    number, text without its line ending or None, problem or ""). A leading UTF-8 BOM is
    dropped; a file starting with a UTF-16/32 BOM is ValueError naming the file."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1:
                if raw.startswith(_UTF16_32_BOMS):
                    raise ValueError(
                        f"{path}, line 1: the file is UTF-16 or UTF-32 (byte-order mark "
                        f"{raw[:2].hex(' ')}); save it as UTF-8, e.g. iconv -f UTF-16 -t UTF-8"
                    )
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            line = raw.rstrip(b"\r\n")
            nul = line.find(b"\x00")
            if nul >= 0:
                problem = f"NUL byte at column {nul + 1}: binary data or UTF-16 text, not UTF-8"
                yield lineno, None, problem
                continue
            try:
                text = line.decode("utf-8", errors="strict")
            except UnicodeDecodeError as e:
                problem = (
                    f"not UTF-8 text (byte 0x{line[e.start]:02x} at column {e.start + 1}: "
                    f"{e.reason}); the file must be UTF-8"
                )
                yield lineno, None, problem
                continue
            yield lineno, text, ""


class Task:
    """The interface of a ``TASKS`` entry. Subclasses set ``Config`` and ``head`` and
    implement the four data methods; the rest has defaults.

    Config          frozen dataclass, subclass of ``TaskConfig``: the ``task:`` section
    head            a key of ``lk_study.models.HEADS``: classify | regress | dual | mlm
    splits          "train" plus the evaluation splits ``prepare`` builds
    pad_id, ignore_index  the data conventions above, handed to the model by build_model
    prepare(cfg)    -> {split: Path} of Parquet files (``prepare_cached``: once per machine)
    vocab_size(cfg), num_outputs(cfg)
    metrics(pred, label) -> {name: value}  (scikit-learn / scipy definitions)
    max_len(cfg)    the longest sequence the model sees (default ``cfg.max_len``)
    artifacts(cfg)  {file name: path} copied into every checkpoint (default none)
    score(results)  one number over the evaluation splits ({split: metrics}), reported as
                    ``val_score`` (default None: not reported)
    """

    Config: type[TaskConfig] = TaskConfig
    head: str = "classify"
    splits: tuple[str, ...] = ("train", "validation")
    pad_id: int = PAD_ID  # what build_model tells the encoder
    ignore_index: int = IGNORE  # and the MLM head

    def prepare(self, cfg: TaskConfig) -> dict[str, Path]:
        raise NotImplementedError

    def vocab_size(self, cfg: TaskConfig) -> int:
        raise NotImplementedError

    def num_outputs(self, cfg: TaskConfig) -> int:
        raise NotImplementedError

    def metrics(self, pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
        raise NotImplementedError

    def max_len(self, cfg: TaskConfig) -> int:
        return cfg.max_len

    def artifacts(self, cfg: TaskConfig) -> dict[str, Path]:
        return {}

    def score(self, results: dict[str, dict[str, float]]) -> float | None:
        return None

    def metric_names(self, cfg: TaskConfig) -> tuple[str, ...]:
        """The metrics training reports for this task (what a study's objective may name):
        per evaluation split, ``val_`` (+ the split's suffix) + ``loss`` and each key of
        ``metrics`` (default: accuracy); override it when ``metrics`` or ``score`` differ."""
        rests = [s.removeprefix("validation").strip("_") for s in self.splits[1:]]
        prefixes = [f"val_{rest}_" if rest else "val_" for rest in rests]  # train.metric_prefix
        return tuple(p + k for p in prefixes for k in ("loss", "accuracy"))


def progress(iterable=None, desc: str = "", total: int | None = None, unit: str = "rows"):
    """A tqdm progress bar on stderr while data is prepared; silent where stderr is not a
    terminal (Ray workers, CI logs)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, mininterval=0.5, disable=None)


class AccuracyTask(Task):
    """Single-label classification tasks (LRA, sparsity): train and validation splits,
    metric accuracy. Subclasses set ``Config`` and the data methods."""

    def metrics(self, pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
        from lk_study.tasks.metrics import accuracy

        return accuracy(pred, label)
