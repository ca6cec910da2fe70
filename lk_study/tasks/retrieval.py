"""LRA Retrieval: do two ACL Anthology (AAN) papers cite each other? (Tay et al. 2021).

Both documents become UTF-8 byte tokens (id = byte + 1, vocabulary 257), each truncated to
``max_len`` (LRA: 4000 per document), encoded by one shared encoder (the dual head).

Source: the LRA release folder ``lra_release/tsv_data`` (no hub copy exists), files
``new_aan_pairs.{train,eval,test}.tsv``, tab-separated, columns
``label, id1, id2, text1, text2`` (label 0/1, sometimes written 0.0/1.0; an optional header
row starting with ``label`` is skipped). Ours: train -> train, eval -> validation.
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
    text_lines,
)

NO_SOURCE = (
    "must be the folder of the LRA release's new_aan_pairs.*.tsv files (lra_release/tsv_data); "
    "AAN is not on the Hugging Face hub"
)
FILES = {"train": "new_aan_pairs.train.tsv", "validation": "new_aan_pairs.eval.tsv"}


@dataclass(frozen=True)
class RetrievalConfig(TaskConfig):
    name: str = "retrieval"
    source: str = ""  # PATH to lra_release/tsv_data
    max_len: int = 4000  # per document
    max_examples: int = 0  # per split; 0 = all

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.source != "hub", "source", NO_SOURCE)
        check(self.max_len >= 1, "max_len", "must be >= 1")


def read_tsv(path: Path, cfg: RetrievalConfig) -> pa.Table:
    """Parse one AAN TSV, line by line as strict UTF-8 (``text_lines``); malformed rows
    (column count, label, empty text, a line that is not UTF-8 or holds NUL bytes) raise
    (file and line) or are skipped per policy; a file with no usable rows is an error."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: expected the LRA AAN file {path.name} here")
    bad = BadRows(cfg.on_bad_rows, str(path))
    ids1, ids2, labels = [], [], []
    for line_no, line, problem in progress(text_lines(path), desc=path.name, unit="lines"):
        if problem:
            bad(f"line {line_no}", problem)
            continue
        row = line.split("\t") if line else []
        if line_no == 1 and row and row[0].strip().lower() == "label":
            continue
        if cfg.max_examples and len(labels) >= cfg.max_examples:
            break
        if len(row) != 5:
            bad(f"line {line_no}", f"expected 5 tab-separated columns, got {len(row)}")
            continue
        try:
            label = float(row[0])
        except ValueError:
            bad(f"line {line_no}", f"label {row[0]!r} is not a number")
            continue
        if label not in (0.0, 1.0):
            bad(f"line {line_no}", f"label {row[0]!r} is not 0 or 1")
            continue
        if not row[3].strip() or not row[4].strip():
            bad(f"line {line_no}", "empty document text")
            continue
        ids1.append(byte_ids(row[3], cfg.max_len))
        ids2.append(byte_ids(row[4], cfg.max_len))
        labels.append(int(label))
    bad.log()
    if not labels:
        raise ValueError(f"{path}: no usable rows ({bad.skipped} skipped as malformed)")
    return pa.table(
        {
            "ids": ids_array(ids1),
            "ids2": ids_array(ids2),
            "label": pa.array(np.array(labels, dtype=np.int64)),
        }
    )


class Retrieval(AccuracyTask):
    Config = RetrievalConfig
    head = "dual"

    def vocab_size(self, cfg: RetrievalConfig) -> int:
        return BYTE_VOCAB

    def num_outputs(self, cfg: RetrievalConfig) -> int:
        return 2

    def prepare(self, cfg: RetrievalConfig) -> dict[str, Path]:
        if not cfg.source:
            raise FileNotFoundError(f"task.source is not set: it {NO_SOURCE}")
        root = Path(cfg.source)
        return prepare_cached(
            cfg, self.splits, lambda: {s: read_tsv(root / f, cfg) for s, f in FILES.items()}
        )
