"""ListOps (Nangia & Bowman 2018) with the Long Range Arena distribution (Tay et al. 2021).

An example is a nested prefix expression over the digits 0-9 and its value (10 classes):

    MIN, MAX   minimum, maximum of the arguments
    MED        int(numpy.median(args)) as LRA computes it: the middle value for an odd count,
               and for an even count the mean of the two middle values truncated, which for
               digits is floor((a + b) / 2): [MED 1 2 3 4 ] = int(2.5) = 2
    SM         sum of the arguments mod 10

The generator draws trees the way LRA's ``lra_benchmarks/data/listops.py`` does:

    node at depth d (the root has d = 1)
        if d < max_depth: with probability 1/4 an operator, otherwise a digit
        if d = max_depth: a digit
    operator   k ~ U{2..max_args} arguments, each a node at depth d + 1; the operator is
               uniform over (MIN, MAX, MED, SM); digits are uniform over 0-9
    length     tokens without parentheses: 1 for a digit, 2 + Σ arguments for an operator
    accept     min_length < length < max_length (strict, as in LRA), and a source not seen
               before (LRA keeps a set of trees, so the three splits are disjoint)

So the tree depth counting the digit level is ≤ max_depth: operators nest at most
max_depth − 1 deep. With the defaults about 8 % of draws are accepted and the accepted
lengths have a median near 1000.

Release text format (LRA's ``to_string``): LRA stores an operator with arguments v1..vk as the
left-nested pairs ((((op, v1), v2) ... vk), ']') and writes each pair as ``( a b )``, so

    [MAX 2 [MIN 4 7 ] ]  is written  ( ( ( [MAX 2 ) ( ( ( [MIN 4 ) 7 ) ] ) ) ] )

Tokens are separated by single spaces. Release files are tab-separated with the header
``Source<TAB>Target`` and one example per line (LRA names them ``basic_train.tsv``,
``basic_val.tsv``, ``basic_test.tsv``; ours are ``train.tsv``, ``val.tsv``, ``test.tsv``; the
reader takes either). Like LRA's writer (Python's ``csv`` module) lines end in CRLF; the
reader takes CRLF or LF.

Tokenisation drops the parentheses and keeps the operators, ``]`` and the digits: 15 symbols,
ids 1..15, id 0 is padding. This is LRA's tokenisation (``lra_benchmarks/listops/
input_pipeline.py``, ``rename_close_brackets``): it deletes ``(`` and ``)`` and renames ``]``
to ``X`` before splitting on whitespace, precisely to keep ``]`` (its comment: the tokenizer
removes non-alphanumeric symbols), so that where each argument list ends is part of the
input. Only a first version of that file, with an alphanumeric-only tokenizer and no
renaming, dropped ``]``.

The label of every generated example is computed from the generator's tree; ``evaluate``
recomputes it from the text with a separate stack parser, and the tests compare the two.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from lk_study.tasks.base import (
    BAD_ROWS,
    AccuracyTask,
    TaskConfig,
    check,
    ids_array,
    prepare_cached,
    progress,
)

logger = logging.getLogger(__name__)

MIN, MAX, MED, SUM_MOD = "[MIN", "[MAX", "[MED", "[SM"
OPERATORS = (MIN, MAX, MED, SUM_MOD)
CLOSE = "]"
PARENS = ("(", ")")
DIGITS = tuple(str(d) for d in range(10))

PAD_ID = 0
VOCAB: dict[str, int] = {tok: i + 1 for i, tok in enumerate((*DIGITS, *OPERATORS, CLOSE))}
VOCAB_SIZE = len(VOCAB) + 1  # 16: the 15 symbols and padding
NUM_CLASSES = 10

OPERATOR_P = 0.25  # LRA's VALUE_P: P(operator) for a node at depth < max_depth
HEADER = ("Source", "Target")
SPLITS = ("train", "val", "test")
LRA_FRACTIONS = {"train": 0.96, "val": 0.02, "test": 0.02}  # LRA: 96 000 / 2 000 / 2 000
MAX_MISSES = 200_000  # consecutive rejected draws before the length window is declared empty

# A generator tree: a digit, or (operator, [arguments]).
Tree = int | tuple[str, list["Tree"]]


# --- generator -----------------------------------------------------------------------------


class _TooLong(Exception):
    """A tree under construction reached max_length: it will be rejected, stop growing it."""


def _uniforms(rng: np.random.Generator, chunk: int = 1 << 16) -> Iterator[float]:
    """U[0, 1) draws from ``rng``, fetched in blocks (one numpy call per block, not per node)."""
    while True:
        yield from rng.random(chunk).tolist()


def _apply(op: str, args: list[int]) -> int:
    if op == MIN:
        return min(args)
    if op == MAX:
        return max(args)
    if op == MED:  # int(np.median): floor of the mean of the two middle values for even k
        s = sorted(args)
        return (s[(len(s) - 1) // 2] + s[len(s) // 2]) // 2
    return sum(args) % 10


def _grow(
    depth: int, max_depth: int, max_args: int, max_length: int, u: Iterator[float]
) -> tuple[Tree, int, int]:
    """One node and its subtree -> (tree, length in tokens without parentheses, value)."""
    if depth >= max_depth or next(u) >= OPERATOR_P:
        digit = int(next(u) * 10)
        return digit, 1, digit
    k = 2 + int(next(u) * (max_args - 1))  # U{2..max_args}
    args, values, length = [], [], 2
    for _ in range(k):
        sub, sub_length, value = _grow(depth + 1, max_depth, max_args, max_length, u)
        length += sub_length
        if length >= max_length:
            raise _TooLong
        args.append(sub)
        values.append(value)
    op = OPERATORS[int(next(u) * 4)]
    return (op, args), length, _apply(op, values)


def to_text(tree: Tree) -> str:
    """LRA's text of a tree: an operator with k arguments is ``(`` × (k+1), the operator, each
    argument followed by ``)``, then ``] )`` (the left-nested pairs written out)."""
    out: list[str] = []

    def emit(t: Tree) -> None:
        if isinstance(t, int):
            out.append(DIGITS[t])
            return
        op, args = t
        out.extend(["("] * (len(args) + 1))
        out.append(op)
        for a in args:
            emit(a)
            out.append(")")
        out.extend((CLOSE, ")"))

    emit(tree)
    return " ".join(out)


def generate(
    num: int,
    seed: int,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[str, int]]:
    """``num`` distinct examples (source in LRA's text format, label 0-9), deterministic given
    all the arguments. Lengths (tokens without parentheses) satisfy
    min_length < length < max_length; ``progress(n)`` is called after each accepted example."""
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    if max_depth < 2 or max_args < 2:
        raise ValueError(
            f"max_depth and max_args must be >= 2 (an operator needs a level below it and two "
            f"arguments), got max_depth={max_depth}, max_args={max_args}"
        )
    if not 0 <= min_length < max_length - 1 or max_length <= 4:
        raise ValueError(
            f"need 0 <= min_length < max_length - 1 and max_length > 4 (lengths are strictly "
            f"between the two; the shortest operator has 4 tokens), got min_length={min_length}, "
            f"max_length={max_length}"
        )
    u = _uniforms(np.random.default_rng(seed))
    seen: set[str] = set()
    out: list[tuple[str, int]] = []
    misses = 0
    while len(out) < num:
        try:
            tree, length, value = _grow(1, max_depth, max_args, max_length, u)
        except _TooLong:
            tree, length = None, max_length
        if min_length < length < max_length:
            source = to_text(tree)
            if source not in seen:
                seen.add(source)
                out.append((source, value))
                misses = 0
                if progress is not None:
                    progress(len(out))
                continue
        misses += 1
        if misses > MAX_MISSES:
            raise RuntimeError(
                f"no new ListOps example in {MAX_MISSES} draws after {len(out)} of {num}: the "
                f"window {min_length} < length < {max_length} with max_depth={max_depth}, "
                f"max_args={max_args} is (nearly) exhausted or unreachable; widen it"
            )
    return out


# --- independent evaluator -----------------------------------------------------------------

_EVAL = {
    MIN: min,
    MAX: max,
    MED: lambda args: int(statistics.median(args)),  # what LRA's int(np.median(...)) gives
    SUM_MOD: lambda args: sum(args) % 10,
}
_DIGIT_VALUE = {d: int(d) for d in DIGITS}


def evaluate(source: str) -> int:
    """The value of a ListOps source (with or without parentheses), by a stack parser that
    knows nothing of the generator's trees: an operator opens a frame, a digit or a closed
    frame's value is an argument of the frame below, ``]`` closes the top frame. Parentheses
    must balance but are otherwise ignored. Raises ValueError on malformed input."""
    frames: list[tuple[str, list[int]]] = []
    result: int | None = None
    open_parens = 0

    def push(value: int, pos: int) -> None:
        nonlocal result
        if frames:
            frames[-1][1].append(value)
        elif result is None:
            result = value
        else:
            raise ValueError(f"token {pos}: a second top-level expression")

    for pos, tok in enumerate(source.split(), 1):
        if tok == "(":
            open_parens += 1
        elif tok == ")":
            open_parens -= 1
            if open_parens < 0:
                raise ValueError(f"token {pos}: ')' without a matching '('")
        elif tok in _EVAL:
            if result is not None and not frames:
                raise ValueError(f"token {pos}: a second top-level expression")
            frames.append((tok, []))
        elif tok == CLOSE:
            if not frames:
                raise ValueError(f"token {pos}: ']' without an open operator")
            op, args = frames.pop()
            if not args:
                raise ValueError(f"token {pos}: {op} has no arguments")
            push(_EVAL[op](args), pos)
        elif tok in _DIGIT_VALUE:
            push(_DIGIT_VALUE[tok], pos)
        else:
            raise ValueError(f"token {pos}: unknown token {tok!r}")
    if frames:
        raise ValueError(f"{len(frames)} operator(s) not closed with ']'")
    if open_parens:
        raise ValueError(f"{open_parens} '(' not closed")
    if result is None:
        raise ValueError("empty expression")
    return result


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


def _split_counts(num: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder rounding of num × fractions; every split gets at least one example
    when num allows it."""
    if not fractions or any(f < 0 for f in fractions.values()):
        raise ValueError(f"splits must map split names to fractions >= 0, got {dict(fractions)}")
    if not math.isclose(sum(fractions.values()), 1.0, abs_tol=1e-9):
        raise ValueError(f"split fractions must sum to 1, got {dict(fractions)}")
    exact = {name: num * f for name, f in fractions.items()}
    counts = {name: int(x) for name, x in exact.items()}
    by_remainder = sorted(fractions, key=lambda n: exact[n] - counts[n], reverse=True)
    for name in by_remainder[: num - sum(counts.values())]:
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
    num: int,
    seed: int,
    splits: Mapping[str, float] = LRA_FRACTIONS,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Path]:
    """Generate ``num`` distinct examples and write ``{split}.tsv`` for each split, in order
    (train gets the first examples), with LRA's 96/2/2 split by default. Returns the paths."""
    counts = _split_counts(num, splits)
    examples = generate(num, seed, min_length, max_length, max_depth, max_args, progress)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, start = {}, 0
    for name, count in counts.items():
        paths[name] = write_tsv(out_dir / f"{name}.tsv", examples[start : start + count])
        start += count
    return paths


def main_generate(out_dir: str | os.PathLike, num: int, seed: int = 0) -> dict[str, Path]:
    """``lk-study data generate listops --out DIR --num N --seed S``: write train/val/test.tsv
    with the LRA distribution, printing progress about every 5 %."""
    step = max(1, num // 20)

    def report(n: int) -> None:
        if n % step == 0 or n == num:
            print(f"listops: generated {n}/{num} examples", flush=True)

    print(f"listops: generating {num} examples (seed {seed}) into {out_dir}", flush=True)
    paths = write_release(out_dir, num, seed, progress=report)
    counts = _split_counts(num, LRA_FRACTIONS)
    for (name, path), count in zip(paths.items(), counts.values(), strict=True):
        print(f"listops: wrote {path} ({count} {name} examples)", flush=True)
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
    return None


def read_tsv(
    path: str | os.PathLike, on_bad_rows: str = "error"
) -> tuple[list[str], list[int], int]:
    """Read one release file -> (sources, labels, num_skipped).

    A malformed row (wrong column count, a label that is not an integer or not in 0-9, an
    empty source or an unknown token) raises ValueError ``FILE:LINE: problem`` (lines are
    1-based and count the header), or with ``on_bad_rows="skip"`` is skipped and counted. A
    missing or wrong header is always an error; a missing file is FileNotFoundError."""
    if on_bad_rows not in BAD_ROWS:
        raise ValueError(f"on_bad_rows must be one of {', '.join(BAD_ROWS)}, got {on_bad_rows!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ListOps release file not found: {path} (expected a TSV with the header "
            f"'Source<TAB>Target'; `lk-study data generate listops --out DIR` writes one)"
        )
    sources: list[str] = []
    labels: list[int] = []
    skipped: list[str] = []
    with open(path, encoding="utf-8", newline="") as f:
        header = f.readline().rstrip("\r\n")
        if tuple(header.split("\t")) != HEADER:
            raise ValueError(
                f"{path}:1: expected the header 'Source<TAB>Target', found {header[:80]!r}"
            )
        for lineno, line in enumerate(f, 2):
            fields = line.rstrip("\r\n").split("\t")
            problem = _row_problem(fields)
            if problem is None:
                sources.append(fields[0].strip())
                labels.append(int(fields[1]))
            elif on_bad_rows == "error":
                raise ValueError(
                    f"{path}:{lineno}: {problem} (fix the row, or set task.on_bad_rows: skip)"
                )
            else:
                skipped.append(f"line {lineno}: {problem}")
    if skipped:
        logger.warning("%s: skipped %d malformed row(s), first: %s", path, len(skipped), skipped[0])
    return sources, labels, len(skipped)


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
    min_length: int = 500  # generate only
    max_length: int = 2000  # generate only
    max_depth: int = 10  # generate only
    max_args: int = 10  # generate only

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.source != "hub", "source", "must be generate or the LRA release folder")
        check(self.size >= 2, "size", "must be >= 2")
        check(0.0 < self.val_fraction < 1.0, "val_fraction", "must be in (0, 1)")
        check(
            1 <= self.min_length < self.max_length,
            "min_length",
            "must satisfy 1 <= min_length < max_length",
        )


class ListOps(AccuracyTask):
    Config = ListOpsConfig

    def vocab_size(self, cfg: ListOpsConfig) -> int:
        return VOCAB_SIZE

    def max_len(self, cfg: ListOpsConfig) -> int:
        return cfg.max_len

    def num_outputs(self, cfg: ListOpsConfig) -> int:
        return NUM_CLASSES

    def prepare(self, cfg: ListOpsConfig) -> dict[str, Path]:
        def build() -> dict[str, pa.Table]:
            if cfg.source == "generate":
                with progress(total=cfg.size, desc="listops", unit="examples") as bar:
                    examples = generate(
                        cfg.size,
                        cfg.seed,
                        cfg.min_length,
                        cfg.max_length,
                        cfg.max_depth,
                        cfg.max_args,
                        lambda n: bar.update(n - bar.n),
                    )
                n_train = max(1, int(round(len(examples) * (1 - cfg.val_fraction))))
                parts = {"train": examples[:n_train], "validation": examples[n_train:]}
                return {s: to_table(*zip(*ex, strict=True)) for s, ex in parts.items()}
            read = read_release(cfg.source, cfg.on_bad_rows, splits=("train", "val"))
            return {
                ours: to_table(read[theirs][0], read[theirs][1])
                for ours, theirs in (("train", "train"), ("validation", "val"))
            }

        return prepare_cached(cfg, self.splits, build)
