"""ListOps: labels vs an independent evaluator, LRA's distribution bounds and text format, MED
and SM semantics, release files (round trip, malformed rows), tokenisation."""

import itertools
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from lk_study.cli import main
from lk_study.generators.listops import MED, _apply, evaluate, generate, to_text
from lk_study.tasks import Split
from lk_study.tasks.base import PAD_ID
from lk_study.tasks.listops import (
    VOCAB,
    VOCAB_SIZE,
    read_release,
    read_tsv,
    release_paths,
    to_table,
    tokenize,
    write_release,
)

SMALL = dict(tree_min_tokens=10, tree_max_tokens=200)  # fast trees for most tests


def structure(source: str) -> tuple[int, int, int]:
    """(tree depth counting the digit level, most and fewest arguments of an operator),
    measured on the text alone."""
    args: list[int] = []  # argument count of each open operator
    depth, most, fewest = 0, 0, 10**9
    for tok in source.split():
        if tok.startswith("["):
            if args:
                args[-1] += 1
            args.append(0)
        elif tok == "]":
            n = args.pop()
            most, fewest = max(most, n), min(fewest, n)
        elif tok.isdigit():
            if args:
                args[-1] += 1
            depth = max(depth, len(args) + 1)
    return depth, most, fewest


def lra_text(source: str) -> str:
    """Rebuild the text the way LRA's generator does: parse to nested lists, fold each operator
    into left-nested pairs ((((op, a1), a2) ... ak), ']') and write each pair as '( a b )'."""
    stack: list[list] = [[]]
    for tok in source.split():
        if tok.startswith("["):
            stack.append([tok])
        elif tok == "]":
            node = stack.pop()
            stack[-1].append(node)
        elif tok.isdigit():
            stack[-1].append(int(tok))

    def pairs(node):
        if isinstance(node, int):
            return node
        t = (node[0], pairs(node[1]))
        for a in node[2:]:
            t = (t, pairs(a))
        return (t, "]")

    def write(t):
        return f"( {write(t[0])} {write(t[1])} )" if isinstance(t, tuple) else str(t)

    return write(pairs(stack[0][0]))


def test_every_label_equals_the_independent_evaluator():
    examples = generate(300, seed=1, **SMALL)
    assert len(examples) == 300
    labels = [y for _, y in examples]
    assert all(type(y) is int and 0 <= y <= 9 for y in labels)
    assert [evaluate(s) for s, _ in examples] == labels
    assert len(set(labels)) == 10


@pytest.mark.parametrize(
    "tree_min_tokens, tree_max_tokens, max_depth, max_args", [(10, 200, 10, 10), (8, 60, 3, 3)]
)
def test_length_depth_and_arity_within_bounds(
    tree_min_tokens, tree_max_tokens, max_depth, max_args
):
    examples = generate(
        200,
        7,
        tree_min_tokens=tree_min_tokens,
        tree_max_tokens=tree_max_tokens,
        max_depth=max_depth,
        max_args=max_args,
    )
    lengths = [len(tokenize(s)) for s, _ in examples]
    assert tree_min_tokens < min(lengths) and max(lengths) < tree_max_tokens  # strict, as LRA
    shapes = [structure(s) for s, _ in examples]
    assert max(d for d, _, _ in shapes) == max_depth  # reached, never exceeded
    assert max(m for _, m, _ in shapes) == max_args
    assert min(f for _, _, f in shapes) >= 2
    assert len({s for s, _ in examples}) == len(examples)  # distinct, as LRA's set


def test_default_distribution_is_lras():
    examples = generate(4, seed=0)
    for source, label in examples:
        assert 500 < len(tokenize(source)) < 2000
        depth, most, fewest = structure(source)
        assert depth <= 10 and 2 <= fewest <= most <= 10
        assert evaluate(source) == label
        assert lra_text(source) == source


def test_deterministic_by_seed():
    assert generate(30, seed=5, **SMALL) == generate(30, seed=5, **SMALL)
    assert generate(30, seed=5, **SMALL) != generate(30, seed=6, **SMALL)


def test_text_format_is_lras():
    tree = ("[MAX", [2, ("[MIN", [4, 7])])
    assert to_text(tree) == "( ( ( [MAX 2 ) ( ( ( [MIN 4 ) 7 ) ] ) ) ] )"
    for source, _ in generate(50, seed=2, **SMALL):
        assert lra_text(source) == source
        assert re.fullmatch(r"[^ ]+( [^ ]+)*", source)  # single spaces, no padding


@pytest.mark.parametrize(
    "source, value",
    [
        ("[MED 1 2 3 4 ]", 2),  # LRA: int(np.median) = int(2.5)
        ("[MED 3 4 ]", 3),
        ("[MED 9 0 9 0 ]", 4),
        ("[MED 5 1 3 ]", 3),
        ("[MED 8 8 1 ]", 8),
        ("[SM 9 9 9 ]", 7),
        ("[SM 5 5 ]", 0),
        ("[MIN 4 7 2 ]", 2),
        ("[MAX 2 [MIN 4 7 ] ]", 4),
        ("( ( ( [MAX 2 ) ( ( ( [MIN 4 ) 7 ) ] ) ) ] )", 4),
        ("( ( ( [SM [MED 1 2 ] ) [MAX 9 3 ] ) ] )", 0),
        ("7", 7),
    ],
)
def test_hand_written_values(source, value):
    assert evaluate(source) == value


def test_med_is_int_of_numpy_median_and_sm_is_mod_10():
    for k in (2, 3, 4):
        for args in itertools.product(range(10), repeat=k):
            assert _apply(MED, list(args)) == int(np.median(args))
    assert _apply("[SM", [9, 9, 9, 9]) == 6


@pytest.mark.parametrize(
    "source, message",
    [
        ("[MAX 1 2", "not closed"),
        ("1 ]", "without an open operator"),
        ("[MAX ]", "no arguments"),
        ("1 2", "second top-level"),
        ("( [MAX 1 ]", "'(' not closed"),
        ("[MAX 1 ] )", "without a matching"),
        ("[FOO 1 ]", "unknown token"),
        ("( )", "empty expression"),
    ],
)
def test_evaluate_rejects_malformed(source, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate(source)


def test_tokenize_drops_parentheses():
    assert VOCAB_SIZE == 16 and PAD_ID == 0
    assert sorted(VOCAB.values()) == list(range(1, 16))
    ids = tokenize("( ( ( [MAX 2 ) ( ( ( [MIN 4 ) 7 ) ] ) ) ] )")
    assert ids == [VOCAB[t] for t in "[MAX 2 [MIN 4 7 ] ]".split()]
    with pytest.raises(ValueError, match="unknown ListOps token 'X'"):
        tokenize("[MAX 1 X ]")


def test_to_table_reads_back_as_a_prepared_split(tmp_path):
    examples = generate(20, seed=3, **SMALL)
    sources, labels = [s for s, _ in examples], [y for _, y in examples]
    pq.write_table(to_table(sources, labels), tmp_path / "x.parquet")
    batch = Split(tmp_path / "x.parquet").batch(np.arange(20))
    assert batch["label"].tolist() == labels
    ids = batch["ids"].numpy()
    assert ids.shape == (20, max(len(tokenize(s)) for s in sources))
    assert [row[row != PAD_ID].tolist() for row in ids] == [tokenize(s) for s in sources]


def test_release_round_trip(tmp_path):
    paths = write_release(tmp_path, 50, seed=4, **SMALL)
    assert {p.name for p in paths.values()} == {"train.tsv", "val.tsv", "test.tsv"}
    raw = paths["val"].read_bytes()
    assert raw.startswith(b"Source\tTarget\r\n") and raw.count(b"\r\n") == 2  # as LRA's csv
    data = read_release(tmp_path)
    assert [len(data[s][0]) for s in ("train", "val", "test")] == [48, 1, 1]  # 96/2/2
    sources = [s for split in ("train", "val", "test") for s in data[split][0]]
    labels = [y for split in ("train", "val", "test") for y in data[split][1]]
    assert list(zip(sources, labels, strict=True)) == generate(50, seed=4, **SMALL)
    assert all(data[s][2] == 0 for s in data)
    for split in ("train", "val", "test"):  # LRA's names are read too
        (tmp_path / f"{split}.tsv").rename(tmp_path / f"basic_{split}.tsv")
    assert read_release(tmp_path) == data


def test_release_split_fractions(tmp_path):
    paths = write_release(tmp_path, 10, seed=0, splits={"train": 0.5, "test": 0.5}, **SMALL)
    assert sorted(paths) == ["test", "train"]
    assert [len(read_tsv(paths[s])[0]) for s in ("train", "test")] == [5, 5]
    with pytest.raises(ValueError, match="sum to 1"):
        write_release(tmp_path, 10, seed=0, splits={"train": 0.5}, **SMALL)


GOOD = "( ( ( [MAX 2 ) 3 ) ] )\t3"


@pytest.mark.parametrize(
    "row, problem",
    [
        ("( ( ( [MAX 2 ) 3 ) ] )", "expected 2 tab-separated columns (Source, Target), found 1"),
        (GOOD + "\t1", "found 3"),
        ("", "found 1"),
        ("( ( ( [MAX 2 ) 3 ) ] )\tthree", "label 'three' is not an integer"),
        ("( ( ( [MAX 2 ) 3 ) ] )\t3.0", "label '3.0' is not an integer"),
        ("( ( ( [MAX 2 ) 3 ) ] )\t12", "label 12 is outside 0-9"),
        ("( ( ( [MAX 2 ) 3 ) ] )\t-1", "label -1 is outside 0-9"),
        ("\t3", "empty source"),
        ("( )\t3", "empty source"),
        ("( ( ( [MAX 2 ) X ) ] )\t3", "unknown token(s) in source: 'X'"),
    ],
)
def test_malformed_rows(tmp_path, row, problem):
    path = tmp_path / "basic_train.tsv"
    path.write_text(f"Source\tTarget\n{GOOD}\n{row}\n{GOOD}\n")
    with pytest.raises(ValueError) as e:
        read_tsv(path)
    assert str(e.value).startswith(f"{path}, line 3: ") and problem in str(e.value)
    sources, labels, skipped = read_tsv(path, on_bad_rows="skip")
    assert skipped == 1 and labels == [3, 3] and len(sources) == 2


def test_skip_counts_every_bad_row(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("Source\tTarget\r\n" + "\r\n".join([GOOD, "x", GOOD, "[MIN 1 ]\t10"]) + "\r\n")
    assert read_tsv(path, on_bad_rows="skip") == (["( ( ( [MAX 2 ) 3 ) ] )"] * 2, [3, 3], 2)
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 3: expected 2")):
        read_tsv(path)
    with pytest.raises(ValueError, match="on_bad_rows='ignore': must be one of error, skip"):
        read_tsv(path, on_bad_rows="ignore")


def test_bad_header_and_missing_files(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text(GOOD + "\n")
    for mode in ("error", "skip"):
        with pytest.raises(ValueError, match=re.escape(f"{path}, line 1: expected the header")):
            read_tsv(path, on_bad_rows=mode)
    missing = tmp_path / "nope.tsv"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        read_tsv(missing)
    with pytest.raises(FileNotFoundError) as e:
        release_paths(tmp_path / "empty")
    assert str(tmp_path / "empty" / "train.tsv") in str(e.value)
    assert str(tmp_path / "empty" / "basic_train.tsv") in str(e.value)


def test_bad_generator_parameters():
    with pytest.raises(ValueError, match="max_depth and max_args must be >= 2"):
        generate(1, 0, max_depth=1)
    with pytest.raises(ValueError, match="tree_min_tokens < tree_max_tokens - 1"):
        generate(1, 0, tree_min_tokens=100, tree_max_tokens=100)
    with pytest.raises(RuntimeError, match="widen it"):
        generate(500, 0, tree_min_tokens=3, tree_max_tokens=5, max_args=2)  # 4 x 10 x 10 trees
    with pytest.raises(TypeError):  # the generator parameters are keywords only
        generate(1, 0, 10, 200)


def test_cli_generate_prints_progress(tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert main(["data", "generate", "listops", "--out", str(out_dir), "--num", "3"]) == 0
    out = capsys.readouterr().out
    assert "generated 3/3 examples" in out and "train.tsv" in out
    paths = release_paths(out_dir)
    assert sum(len(read_tsv(p)[0]) for p in paths.values()) == 3
