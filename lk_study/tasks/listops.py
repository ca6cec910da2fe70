"""ListOps (Nangia & Bowman 2018) as a task, with the Long Range Arena distribution (Tay et al.
2021): the ``task:`` config, LRA's release files, tokenisation and the registry entry.

The examples and their text come from ``lk_study.generators.listops`` (the tree distribution,
LRA's text format and the independent evaluator are described there). ``tree_min_tokens`` /
``tree_max_tokens`` bound the generated trees' lengths; ``max_len`` is where the model's input
is truncated.

Release files are tab-separated with the header ``Source<TAB>Target`` and one example per line
(LRA names them ``basic_train.tsv``, ``basic_val.tsv``, ``basic_test.tsv``; ours are
``train.tsv``, ``val.tsv``, ``test.tsv``; the reader takes either). Like LRA's writer
(Python's ``csv`` module) lines end in CRLF; the reader takes CRLF or LF.

Tokenisation drops the parentheses and keeps the operators, ``]`` and the digits: 15 symbols,
ids 1..15, id 0 (``PAD_ID``) is padding. This is LRA's tokenisation (``lra_benchmarks/listops/
input_pipeline.py``, ``rename_close_brackets``): it deletes ``(`` and ``)`` and renames ``]``
to ``X`` before splitting on whitespace, precisely to keep ``]`` (its comment: the tokenizer
removes non-alphanumeric symbols), so that where each argument list ends is part of the
input. Only a first version of that file, with an alphanumeric-only tokenizer and no
renaming, dropped ``]``.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from lk_study.generators.listops import CLOSE, DIGITS, OPERATORS, PARENS, evaluate, generate
from lk_study.tasks.base import (
    PAD_ID,
    AccuracyTask,
    BadRows,
    TaskConfig,
    check,
    ids_array,
    prepare_cached,
    progress,
    text_lines,
)

# ids 1..15 after the padding id: this task's own vocabulary, not the byte vocabulary
VOCAB: dict[str, int] = {tok: PAD_ID + 1 + i for i, tok in enumerate((*DIGITS, *OPERATORS, CLOSE))}
VOCAB_SIZE = len(VOCAB) + 1  # 16: the 15 symbols and padding
NUM_CLASSES = 10  # the value of an expression is a digit

HEADER = ("Source", "Target")
SPLITS = ("train", "val", "test")
LRA_FRACTIONS = {"train": 0.96, "val": 0.02, "test": 0.02}  # LRA: 96 000 / 2 000 / 2 000


# --- tokenisation --------------------------------------------------------------------------


def tokenize(source: str) -> list[int]:
    """Token ids (1..15) of a source, parentheses dropped."""
    try:
        return [VOCAB[t] for t in source.split() if t != "(" and t != ")"]
    except KeyError as e:
        raise ValueError(
            f"unknown ListOps token {e.args[0]!r}; the symbols are {', '.join(VOCAB)} "
            f"and the parentheses"
        ) from None


def to_table(sources: Sequence[str], labels: Sequence[int]) -> pa.Table:
    """A prepared split in the cache's schema (``lk_study.tasks.base``): ``ids`` list<int32>
    (unpadded; batches are padded with PAD_ID), ``label`` int64."""
    rows = [np.asarray(tokenize(s), dtype=np.int32) for s in sources]
    return pa.table({"ids": ids_array(rows), "label": pa.array(np.asarray(labels, dtype=np.int64))})


# --- release files -------------------------------------------------------------------------


def split_counts(size: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder rounding of size × fractions; every split gets at least one example
    when size allows it."""
    if not fractions or any(f < 0 for f in fractions.values()):
        raise ValueError(f"splits must map split names to fractions >= 0, got {dict(fractions)}")
    if not math.isclose(sum(fractions.values()), 1.0, abs_tol=1e-9):
        raise ValueError(f"split fractions must sum to 1, got {dict(fractions)}")
    exact = {name: size * f for name, f in fractions.items()}
    counts = {name: int(x) for name, x in exact.items()}
    by_remainder = sorted(fractions, key=lambda n: exact[n] - counts[n], reverse=True)
    for name in by_remainder[: size - sum(counts.values())]:
        counts[name] += 1
    for name in fractions:
        if counts[name] == 0 and fractions[name] > 0:
            donor = max(counts, key=counts.get)
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[name] += 1
    return counts


def write_tsv(path: str | os.PathLike, examples: Sequence[tuple[str, int]]) -> Path:
    """One release file: header ``Source<TAB>Target``, one example per line (CRLF, as LRA's
    ``csv`` writer); written to a temporary file and renamed, so a file that exists is whole."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(HEADER)
        writer.writerows(examples)
    tmp.replace(path)
    return path


def write_release(
    out_dir: str | os.PathLike,
    size: int,
    seed: int,
    splits: Mapping[str, float] = LRA_FRACTIONS,
    progress: Callable[[int], None] | None = None,
    **params: int,
) -> dict[str, Path]:
    """Generate ``size`` distinct examples and write ``{split}.tsv`` for each split, in order
    (train gets the first examples), with LRA's 96/2/2 split by default (``split_counts``).
    ``params`` are the generator's (``tree_min_tokens``, ``tree_max_tokens``, ``max_depth``,
    ``max_args``; LRA's distribution by default); ``progress(n)`` is called after each
    generated example. Returns the paths."""
    counts = split_counts(size, splits)
    examples = generate(size, seed, progress=progress, **params)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, start = {}, 0
    for name, count in counts.items():
        paths[name] = write_tsv(out_dir / f"{name}.tsv", examples[start : start + count])
        start += count
    return paths


_LABEL = re.compile(r"-?[0-9]+")
_SOURCE_TOKENS = frozenset((*VOCAB, *PARENS))


def _row_problem(fields: list[str]) -> str | None:
    """What is wrong with a data row, or None."""
    if len(fields) != 2:
        return f"expected 2 tab-separated columns (Source, Target), found {len(fields)}"
    source, target = fields[0], fields[1].strip()
    if not _LABEL.fullmatch(target):
        return f"label {fields[1]!r} is not an integer"
    if not 0 <= int(target) <= 9:
        return f"label {target} is outside 0-9"
    tokens = set(source.split())
    if not tokens - set(PARENS):
        return "empty source"
    unknown = tokens - _SOURCE_TOKENS
    if unknown:
        return f"unknown token(s) in source: {', '.join(sorted(map(repr, unknown))[:5])}"
    try:
        evaluate(source)  # brackets balance, every operator is closed, one expression
    except ValueError as e:
        return f"malformed expression: {e}"
    return None


def read_tsv(
    path: str | os.PathLike, on_bad_rows: str = "error"
) -> tuple[list[str], list[int], int]:
    """Read one release file -> (sources, labels, num_skipped).

    Lines are decoded one by one as strict UTF-8 (``text_lines``). A malformed row (wrong
    column count, a label that is not an integer or not in 0-9, an empty source, an unknown
    token, an expression that ``evaluate`` rejects: unbalanced brackets, an operator not
    closed with ``]``, two top-level expressions; or a line that is not UTF-8 or holds NUL
    bytes) goes through ``BadRows``: ValueError ``FILE, line N: problem`` (lines are 1-based
    and count the header), or with ``on_bad_rows="skip"`` skipped, counted and logged. A
    missing, wrong or undecodable header (a UTF-16 file, binary data) is always an error; a
    missing file is FileNotFoundError."""
    path = Path(path)
    bad = BadRows(on_bad_rows, str(path))
    if not path.is_file():
        raise FileNotFoundError(
            f"ListOps release file not found: {path} (expected a TSV with the header "
            f"'Source<TAB>Target'; `lk-study data generate listops --out DIR` writes one)"
        )
    sources: list[str] = []
    labels: list[int] = []
    lines = text_lines(path)
    _, header, problem = next(lines, (1, "", ""))
    if header is None:
        raise ValueError(f"{path}, line 1: {problem}")
    if tuple(header.split("\t")) != HEADER:
        raise ValueError(
            f"{path}, line 1: expected the header 'Source<TAB>Target', found {header[:80]!r}"
        )
    for lineno, line, problem in lines:
        fields = line.split("\t") if line is not None else []
        problem = problem or _row_problem(fields)
        if not problem:
            sources.append(fields[0].strip())
            labels.append(int(fields[1]))
        else:
            bad(f"line {lineno}", problem)
    bad.log()
    return sources, labels, bad.skipped


def release_paths(root: str | os.PathLike, splits: Sequence[str] = SPLITS) -> dict[str, Path]:
    """The file of each split under ``root``: ``{split}.tsv`` (ours) or ``basic_{split}.tsv``
    (LRA's release). Neither is FileNotFoundError naming both; both is an error too."""
    root = Path(root)
    paths = {}
    for split in splits:
        candidates = [root / f"{split}.tsv", root / f"basic_{split}.tsv"]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise FileNotFoundError(
                f"ListOps {split} split not found: expected {candidates[0]} or {candidates[1]}"
            )
        if len(found) == 2:
            raise ValueError(
                f"ListOps {split} split is ambiguous: both {found[0]} and {found[1]} exist; "
                f"remove one"
            )
        paths[split] = found[0]
    return paths


def read_release(
    root: str | os.PathLike, on_bad_rows: str = "error", splits: Sequence[str] = SPLITS
) -> dict[str, tuple[list[str], list[int], int]]:
    """``read_tsv`` of every split under ``root`` (either file naming)."""
    return {s: read_tsv(p, on_bad_rows) for s, p in release_paths(root, splits).items()}


# ---------------------------------------------------------------------------- registry entry


@dataclass(frozen=True)
class ListOpsConfig(TaskConfig):
    """``task.name: listops``. ``source: generate`` builds ``size`` examples with our generator
    (split train/validation by ``val_fraction``); ``source: PATH`` reads the LRA release TSVs
    (``train.tsv``/``val.tsv`` or ``basic_train.tsv``/``basic_val.tsv``) from PATH."""

    name: str = "listops"
    source: str = "generate"  # generate | PATH to the release folder
    max_len: int = 2000
    size: int = 10_000  # generate only
    val_fraction: float = 0.1  # generate only
    seed: int = 0  # generate only
    tree_min_tokens: int = 500  # generate only: tree lengths strictly between the two
    tree_max_tokens: int = 2000  # generate only (not max_len, where inputs are truncated)
    max_depth: int = 10  # generate only
    max_args: int = 10  # generate only

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.source != "hub", "source", "must be generate or the LRA release folder")
        check(self.size >= 2, "size", "must be >= 2")
        check(0.0 < self.val_fraction < 1.0, "val_fraction", "must be in (0, 1)")
        check(
            1 <= self.tree_min_tokens < self.tree_max_tokens,
            "tree_min_tokens",
            "must satisfy 1 <= tree_min_tokens < tree_max_tokens",
        )


class ListOps(AccuracyTask):
    Config = ListOpsConfig

    def vocab_size(self, cfg: ListOpsConfig) -> int:
        return VOCAB_SIZE

    def num_outputs(self, cfg: ListOpsConfig) -> int:
        return NUM_CLASSES

    def prepare(self, cfg: ListOpsConfig) -> dict[str, Path]:
        def build() -> dict[str, pa.Table]:
            if cfg.source == "generate":
                with progress(total=cfg.size, desc="listops", unit="examples") as bar:
                    examples = generate(
                        cfg.size,
                        cfg.seed,
                        tree_min_tokens=cfg.tree_min_tokens,
                        tree_max_tokens=cfg.tree_max_tokens,
                        max_depth=cfg.max_depth,
                        max_args=cfg.max_args,
                        progress=lambda n: bar.update(n - bar.n),
                    )
                n_train = max(1, int(round(len(examples) * (1 - cfg.val_fraction))))
                parts = {"train": examples[:n_train], "validation": examples[n_train:]}
                return {s: to_table(*zip(*ex, strict=True)) for s, ex in parts.items()}
            tables = {}
            files = release_paths(cfg.source, ("train", "val"))
            for ours, theirs in (("train", "train"), ("validation", "val")):
                sources, labels, skipped = read_tsv(files[theirs], cfg.on_bad_rows)
                if not sources:
                    raise ValueError(
                        f"{files[theirs]}: the {ours} split has no usable rows "
                        f"({skipped} skipped as malformed)"
                    )
                tables[ours] = to_table(sources, labels)
            return tables

        return prepare_cached(cfg, self.splits, build)
