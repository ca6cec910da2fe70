"""LRA Text: IMDb sentiment on raw bytes (Tay et al. 2021; Maas et al. 2011).

Reviews become UTF-8 byte tokens (id = byte + 1, vocabulary 257), truncated to ``max_len``
(LRA: 4000). Binary label. LRA trains on IMDb's train split and evaluates on its test split;
here that test split is the ``validation`` split.

    source: hub   -> datasets.load_dataset("stanfordnlp/imdb")
    source: PATH  -> a DatasetDict saved with save_to_disk, splits train/test, columns text/label
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from lk_study.tasks.base import (
    BYTE_VOCAB,
    AccuracyTask,
    BadRows,
    TaskConfig,
    byte_ids,
    check,
    ids_array,
    prepare_cached,
    progress,
)
from lk_study.tasks.hf import load_splits

HUB_NAME = "stanfordnlp/imdb"
SPLITS = {"train": "train", "validation": "test"}  # ours -> IMDb's


@dataclass(frozen=True)
class TextConfig(TaskConfig):
    name: str = "text"
    source: str = "hub"  # hub | PATH to a save_to_disk DatasetDict
    max_len: int = 4000
    max_examples: int = 0  # per split; 0 = all (small runs, smoke tests)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.max_len >= 1, "max_len", "must be >= 1")
        check(self.max_examples >= 0, "max_examples", "must be >= 0 (0 = all)")


def encode_rows(rows, cfg: TextConfig, where: str) -> pa.Table:
    """Rows with ``text`` and ``label`` -> Parquet-ready table of byte ids; bad rows per policy."""
    bad = BadRows(cfg.on_bad_rows, where)
    ids, labels = [], []
    for i, row in enumerate(progress(rows, desc=where, total=len(rows))):
        if cfg.max_examples and len(ids) >= cfg.max_examples:
            break
        text, label = row.get("text"), row.get("label")
        if not isinstance(text, str) or not text.strip():
            bad(f"row {i}", "empty text")
            continue
        if label not in (0, 1):
            bad(f"row {i}", f"label {label!r} is not 0 or 1")
            continue
        ids.append(byte_ids(text, cfg.max_len))
        labels.append(label)
    bad.log()
    return pa.table({"ids": ids_array(ids), "label": pa.array(np.array(labels, dtype=np.int64))})


class Text(AccuracyTask):
    Config = TextConfig

    def vocab_size(self, cfg: TextConfig) -> int:
        return BYTE_VOCAB

    def num_outputs(self, cfg: TextConfig) -> int:
        return 2

    def prepare(self, cfg: TextConfig) -> dict[str, Path]:
        def build() -> dict[str, pa.Table]:
            data = load_splits(cfg.source, HUB_NAME, None, list(SPLITS.values()))
            return {
                ours: encode_rows(data[theirs], cfg, f"{cfg.source} split {theirs}")
                for ours, theirs in SPLITS.items()
            }

        return prepare_cached(cfg, self.splits, build, identity={"hub": HUB_NAME})
