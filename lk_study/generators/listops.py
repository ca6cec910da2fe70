"""ListOps (Nangia & Bowman 2018) trees with the Long Range Arena distribution (Tay et al.
2021): the generator, LRA's text of a tree, and an independent evaluator.

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
    accept     tree_min_tokens < length < tree_max_tokens (strict, as in LRA; LRA calls them
               min_length / max_length), and a source not seen before (LRA keeps a set of
               trees, so the three splits are disjoint)

So the tree depth counting the digit level is ≤ max_depth: operators nest at most
max_depth − 1 deep. With the defaults about 8 % of draws are accepted and the accepted
lengths have a median near 1000. The window is on the tree, not the model's input: a task's
``max_len`` (where inputs are truncated) is a separate setting.

Text format (LRA's ``to_string``): LRA stores an operator with arguments v1..vk as the
left-nested pairs ((((op, v1), v2) ... vk), ']') and writes each pair as ``( a b )``, so

    [MAX 2 [MIN 4 7 ] ]  is written  ( ( ( [MAX 2 ) ( ( ( [MIN 4 ) 7 ) ] ) ) ] )

Tokens are separated by single spaces. The symbols of the text are ``DIGITS``,
``OPERATORS``, ``CLOSE`` and the ``PARENS``.

The label of every generated example is computed from the generator's tree; ``evaluate``
recomputes it from the text with a separate stack parser, and the tests compare the two.
Pure numpy: nothing here imports the rest of lk_study (the task is
``lk_study.tasks.listops``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator

import numpy as np

MIN, MAX, MED, SUM_MOD = "[MIN", "[MAX", "[MED", "[SM"
OPERATORS = (MIN, MAX, MED, SUM_MOD)
CLOSE = "]"
PARENS = ("(", ")")
DIGITS = tuple(str(d) for d in range(10))

OPERATOR_P = 0.25  # LRA's VALUE_P: P(operator) for a node at depth < max_depth
MAX_MISSES = 200_000  # consecutive rejected draws before the length window is declared empty

# A generator tree: a digit, or (operator, [arguments]).
Tree = int | tuple[str, list["Tree"]]


# --- generator -----------------------------------------------------------------------------


class _TooLong(Exception):
    """A tree under construction reached tree_max_tokens: it will be rejected, stop growing it."""


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
    depth: int, max_depth: int, max_args: int, tree_max_tokens: int, u: Iterator[float]
) -> tuple[Tree, int, int]:
    """One node and its subtree -> (tree, length in tokens without parentheses, value)."""
    if depth >= max_depth or next(u) >= OPERATOR_P:
        digit = int(next(u) * 10)
        return digit, 1, digit
    k = 2 + int(next(u) * (max_args - 1))  # U{2..max_args}
    args, values, length = [], [], 2
    for _ in range(k):
        sub, sub_length, value = _grow(depth + 1, max_depth, max_args, tree_max_tokens, u)
        length += sub_length
        if length >= tree_max_tokens:
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
    size: int,
    seed: int,
    *,
    tree_min_tokens: int = 500,
    tree_max_tokens: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[str, int]]:
    """``size`` distinct examples (source in LRA's text format, label 0-9), deterministic given
    all the arguments. Lengths (tokens without parentheses) satisfy
    tree_min_tokens < length < tree_max_tokens; ``progress(n)`` is called after each accepted
    example."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    if max_depth < 2 or max_args < 2:
        raise ValueError(
            f"max_depth and max_args must be >= 2 (an operator needs a level below it and two "
            f"arguments), got max_depth={max_depth}, max_args={max_args}"
        )
    if not 0 <= tree_min_tokens < tree_max_tokens - 1 or tree_max_tokens <= 4:
        raise ValueError(
            f"need 0 <= tree_min_tokens < tree_max_tokens - 1 and tree_max_tokens > 4 (lengths "
            f"are strictly between the two; the shortest operator has 4 tokens), got "
            f"tree_min_tokens={tree_min_tokens}, tree_max_tokens={tree_max_tokens}"
        )
    u = _uniforms(np.random.default_rng(seed))
    seen: set[str] = set()
    out: list[tuple[str, int]] = []
    misses = 0
    while len(out) < size:
        try:
            tree, length, value = _grow(1, max_depth, max_args, tree_max_tokens, u)
        except _TooLong:
            tree, length = None, tree_max_tokens
        if tree_min_tokens < length < tree_max_tokens:
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
                f"no new ListOps example in {MAX_MISSES} draws after {len(out)} of {size}: the "
                f"window {tree_min_tokens} < length < {tree_max_tokens} with "
                f"max_depth={max_depth}, max_args={max_args} is (nearly) exhausted or "
                f"unreachable; widen it"
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
