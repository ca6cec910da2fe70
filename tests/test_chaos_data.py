# ruff: noqa: E501  (the error.txt fixtures keep their real line lengths)
"""Bad data and a bad cache (issue 12, items 6 and 7): the data cache is never silently stale
or corrupt, decoding and validation errors name the file and line, empty splits are errors,
and the trials table's ``error`` column names the real exception."""

import logging

import numpy as np
import pyarrow.parquet as pq
import pytest

from lk_study.config import Config, with_overrides
from lk_study.storage import error_reason
from lk_study.tasks import Split, prepare
from lk_study.tasks.listops import read_tsv
from lk_study.train import fit

GOOD = "( ( ( [MAX 2 ) 3 ) ] )"  # value 3
SPARSITY = {"task.name": "sparsity", "task.size": 60, "task.seq_len": 16, "task.num_signal": 3}
TINY = {
    "model.d_model": 16,
    "model.num_heads": 2,
    "model.d_ff": 32,
    "model.num_layers": 1,
    "kernel.name": "prf",
    "kernel.num_features": 8,
    "train.max_steps": 1,
    "train.eval_every": 1,
    "train.batch_size": 4,
}


def task_cfg(overrides: dict):
    return with_overrides(Config(), overrides).task


def listops_release(folder, train_rows, val_rows=(f"{GOOD}\t3",)):
    folder.mkdir(exist_ok=True)
    for name, rows in (("train", train_rows), ("val", val_rows)):
        (folder / f"{name}.tsv").write_text("Source\tTarget\n" + "".join(r + "\n" for r in rows))
    return folder


def listops(folder, tmp_path, on_bad_rows="error") -> dict:
    return {
        "task.name": "listops",
        "task.source": str(folder),
        "task.cache_dir": str(tmp_path / "cache"),
        "task.on_bad_rows": on_bad_rows,
    }


# --- D7: the cache -------------------------------------------------------------------------


def test_truncated_cached_parquet_is_rebuilt_and_training_works(tmp_path, caplog):
    overrides = {**SPARSITY, "task.cache_dir": str(tmp_path / "cache")}
    paths = prepare(task_cfg(overrides))
    rows = pq.read_metadata(paths["train"]).num_rows
    with open(paths["train"], "r+b") as f:
        f.truncate(400)  # what a full disk or a killed copy leaves
    with pytest.raises(Exception, match="magic bytes|Parquet"):
        pq.read_metadata(paths["train"])
    with caplog.at_level(logging.WARNING, logger="lk_study.tasks"):
        again = prepare(task_cfg(overrides))
    assert again == paths and pq.read_metadata(paths["train"]).num_rows == rows
    assert "unreadable" in caplog.text and "rebuilding" in caplog.text
    assert str(paths["train"]) in caplog.text
    reports = []
    fit(with_overrides(Config(), {**TINY, **overrides}), lambda m, s: reports.append(m))
    assert len(reports) == 1 and np.isfinite(reports[0]["train_loss"])


def test_skip_cache_is_not_reused_under_error_and_fixed_source_invalidates(tmp_path):
    bad_row = "[MIN 1 2\t1"  # operator never closed
    folder = listops_release(tmp_path / "lo", [f"{GOOD}\t3", bad_row, f"{GOOD}\t3"])
    skipped = prepare(task_cfg(listops(folder, tmp_path, "skip")))
    assert len(Split(skipped["train"])) == 2
    with pytest.raises(ValueError, match=r"train.tsv, line 3: malformed expression"):
        prepare(task_cfg(listops(folder, tmp_path, "error")))  # not the skip build's cache
    (folder / "train.tsv").write_text(f"Source\tTarget\n{GOOD}\t3\n[MIN 1 2 ]\t1\n{GOOD}\t3\n")
    fixed = prepare(task_cfg(listops(folder, tmp_path, "skip")))
    assert fixed["train"] != skipped["train"] and len(Split(fixed["train"])) == 3
    assert len(Split(prepare(task_cfg(listops(folder, tmp_path)))["train"])) == 3


def test_generator_params_and_policy_are_in_the_key(tmp_path):
    base = {**SPARSITY, "task.cache_dir": str(tmp_path / "cache")}
    a = prepare(task_cfg(base))["train"]
    assert prepare(task_cfg({**base, "task.seed": 1}))["train"] != a
    assert prepare(task_cfg({**base, "task.on_bad_rows": "skip"}))["train"] != a
    assert prepare(task_cfg(base))["train"] == a


# --- D8: decoding and validation -----------------------------------------------------------


def test_utf16_and_binary_listops_files_name_file_and_line(tmp_path):
    utf16 = tmp_path / "utf16.tsv"
    utf16.write_bytes(f"Source\tTarget\n{GOOD}\t3\n".encode("utf-16"))
    garbage = tmp_path / "garbage.tsv"
    garbage.write_bytes(bytes(np.random.default_rng(0).integers(128, 256, 3000, dtype=np.uint8)))
    for path, problem in ((utf16, "UTF-16"), (garbage, "not UTF-8")):
        for mode in ("error", "skip"):
            with pytest.raises(ValueError) as e:
                read_tsv(path, on_bad_rows=mode)
            assert str(e.value).startswith(f"{path}, line 1: ") and problem in str(e.value)
    no_bom = tmp_path / "nobom.tsv"  # UTF-16 LE without a byte-order mark: NUL bytes
    no_bom.write_bytes(b"Source\tTarget\n" + f"{GOOD}\t3\n".encode("utf-16-le"))
    with pytest.raises(ValueError, match=r"nobom.tsv, line 2: NUL byte"):
        read_tsv(no_bom)


def test_one_undecodable_listops_row_names_line_and_can_be_skipped(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_bytes(
        f"\ufeffSource\tTarget\r\n{GOOD}\t3\r\n".encode()
        + b"( [MAX 2 \xff\xfe ] )\t2\r\n"
        + f"{GOOD}\t3\r\n".encode()
    )
    with pytest.raises(ValueError, match=r"t.tsv, line 3: not UTF-8 text \(byte 0xff at column 10"):
        read_tsv(path)
    assert read_tsv(path, on_bad_rows="skip") == ([GOOD, GOOD], [3, 3], 1)


@pytest.mark.parametrize(
    "source, problem",
    [
        ("[MIN 1 2", "1 operator(s) not closed"),
        ("( [MIN 1 2 ]", "1 '(' not closed"),
        ("[MIN 1 2 ] )", "')' without a matching '('"),
        ("[MIN 1 ] ]", "']' without an open operator"),
        ("[MIN ]", "[MIN has no arguments"),
        ("1 2", "a second top-level expression"),
    ],
)
def test_malformed_listops_expressions_are_bad_rows(tmp_path, source, problem):
    path = tmp_path / "t.tsv"
    path.write_text(f"Source\tTarget\n{GOOD}\t3\n{source}\t1\n")
    with pytest.raises(ValueError) as e:
        read_tsv(path)
    assert str(e.value).startswith(f"{path}, line 3: malformed expression") and problem in str(
        e.value
    )
    assert read_tsv(path, on_bad_rows="skip") == ([GOOD], [3], 1)


def test_long_generated_listops_rows_pass_the_evaluator(tmp_path):
    """LRA-length rows (1500-2000 tokens) are valid; evaluate costs about 1.5 ms a row."""
    from lk_study.generators.listops import generate

    rows = generate(20, 0, tree_min_tokens=1500, tree_max_tokens=2000)
    path = tmp_path / "t.tsv"
    path.write_text("Source\tTarget\n" + "".join(f"{s}\t{v}\n" for s, v in rows))
    sources, labels, skipped = read_tsv(path)
    assert skipped == 0 and labels == [v for _, v in rows]


def aan_line(label, a, b):
    return f"{label}\tid{a}\tid{b}\tpaper text {a}\tpaper text {b}\n"


def test_retrieval_undecodable_files_and_rows(tmp_path):
    folder = tmp_path / "tsv"
    folder.mkdir()
    train, val = folder / "new_aan_pairs.train.tsv", folder / "new_aan_pairs.eval.tsv"
    val.write_text("".join(aan_line(i % 2, i, i + 1) for i in range(4)))
    base = {"task.name": "retrieval", "task.source": str(folder)}
    base["task.cache_dir"] = str(tmp_path / "cache")
    train.write_text("".join(aan_line(i % 2, i, i + 1) for i in range(4)), encoding="utf-16")
    for mode in ("error", "skip"):
        with pytest.raises(ValueError, match=r"train.tsv, line 1: the file is UTF-16"):
            prepare(task_cfg({**base, "task.on_bad_rows": mode}))
    rows = [aan_line(i % 2, i, i + 1).encode() for i in range(4)]
    rows[2] = b"1\tid8\tid9\t\x00\x01\x02binary\x00\tx\n"
    rows[3] = b"0\tid8\tid9\t\xc3\x28 bad\tx\n"
    train.write_bytes(b"".join(rows))
    with pytest.raises(ValueError, match=r"train.tsv, line 3: NUL byte at column 11"):
        prepare(task_cfg(base))
    paths = prepare(task_cfg({**base, "task.on_bad_rows": "skip"}))
    assert len(Split(paths["train"])) == 2
    train.write_bytes(bytes(range(128, 256)) * 20)  # binary garbage, every line skipped
    with pytest.raises(ValueError, match=r"train.tsv: no usable rows \(\d+ skipped"):
        prepare(task_cfg({**base, "task.on_bad_rows": "skip"}))


def test_empty_validation_split_is_an_error_naming_it(tmp_path):
    folder = listops_release(tmp_path / "lo", [f"{GOOD}\t3"] * 3, val_rows=())
    with pytest.raises(ValueError, match=r"val.tsv: the validation split has no usable rows"):
        prepare(task_cfg(listops(folder, tmp_path)))
    folder = listops_release(tmp_path / "lo", [f"{GOOD}\t3"] * 3, val_rows=["[MIN 1\t1"])
    with pytest.raises(ValueError, match=r"val.tsv: the validation split has no usable rows \(1"):
        prepare(task_cfg(listops(folder, tmp_path, "skip")))


def test_empty_split_from_any_task_names_split_and_source(tmp_path):
    """The check in ``prepare_cached`` itself: Pathfinder from a release of one image."""
    from lk_study.tasks import pathfinder as pf

    pf.write_release(tmp_path / "pf", 1, seed=0, difficulty="curv_baseline")
    cfg = task_cfg(
        {
            "task.name": "pathfinder",
            "task.source": str(tmp_path / "pf"),
            "task.difficulty": "curv_baseline",
            "task.cache_dir": str(tmp_path / "cache"),
        }
    )
    with pytest.raises(
        ValueError, match=rf"split 'validation' of source {tmp_path / 'pf'} is empty"
    ):
        prepare(cfg)


# --- D9: the error column ------------------------------------------------------------------

# The shape of Tune's error.txt for a Ray Train v2 trial whose worker raised (Ray 2.60):
# RayTaskError(WorkerGroupError) around "Training failed due to worker errors:" and one
# "[Rank N Error Snippet]:" per distinct worker error.
ARROW = """Failure # 1 (occurred at 2026-12-07_07-01-12)
\x1b[36mray::_Inner.train()\x1b[39m (pid=4242, ip=10.0.0.2, actor_id=4e5d, repr=LkTrainable)
  File "/venv/lib/python3.11/site-packages/ray/tune/trainable/trainable.py", line 331, in train
    raise skipped from exception_cause(skipped)
  File "/venv/lib/python3.11/site-packages/ray/train/v2/api/data_parallel_trainer.py", line 210, in fit
    raise result.error
ray.train.WorkerGroupError: Training failed due to worker errors:
[Rank 0 Error Snippet]:
Traceback (most recent call last):
  File "/work/main/lk_study/train.py", line 201, in fit
    train = Split(paths["train"], rank, world, max_len)
  File "/work/main/lk_study/tasks/base.py", line 130, in __init__
    table = pq.read_table(path)
  File "/venv/lib/python3.11/site-packages/pyarrow/parquet/core.py", line 1793, in read_table
    dataset = ParquetDataset(
  File "pyarrow/error.pxi", line 92, in pyarrow.lib.check_status
pyarrow.lib.ArrowInvalid: Could not open Parquet input source '<Buffer>': Parquet magic bytes not found in footer. Either the file is corrupted or this is not a parquet file.
"""

NAN = """Failure # 1 (occurred at 2026-12-07_07-03-40)
ray::_Inner.train() (pid=5150, ip=10.0.0.2, actor_id=9f1c, repr=LkTrainable)
  File "/venv/lib/python3.11/site-packages/ray/train/v2/api/data_parallel_trainer.py", line 210, in fit
    raise result.error
ray.train.WorkerGroupError: Training failed due to worker errors:
[Rank 0 Error Snippet]:
Traceback (most recent call last):
  File "/work/main/lk_study/train.py", line 288, in fit
    raise FloatingPointError(
FloatingPointError: training loss became nan at step 43; lower train.lr or check the kernel (earlier checkpoints are kept)
"""

DIED = """Failure # 1 (occurred at 2026-12-07_07-05-02)
ray::_Inner.train() (pid=6001, ip=10.0.0.2, actor_id=77aa, repr=LkTrainable)
ray.train.WorkerGroupError: Training failed due to worker errors:
[Rank 0 Error Snippet]:
The actor died unexpectedly before finishing this task.
\tclass_name: RayTrainWorker
\tactor_id: 1b2c3d
\tpid: 6123
\tname: RayTrainWorker
\tnamespace: 0c4a
\tip: 10.0.0.2
The actor is dead because its worker process has died. Worker exit type: UNEXPECTED_SYSTEM_EXIT Worker exit detail: Worker unexpectedly exits with a connection error code 2. End of file.
"""

TRUNCATED = """Failure # 1 (occurred at 2026-12-07_07-06-00)
ray.train.WorkerGroupError: Training failed due to worker errors:
[Rank 0,1 Error Snippet]:
Traceback (most recent call last):
  File "/work/main/lk_study/train.py", line 12, in fit
...
... (Output truncated. See individual worker logs for full details) ...
    state = torch.load(path)
RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory
"""


@pytest.mark.parametrize(
    "text, reason",
    [
        (ARROW, "pyarrow.lib.ArrowInvalid: Could not open Parquet input source '<Buffer>': "),
        (NAN, "FloatingPointError: training loss became nan at step 43; lower train.lr"),
        (DIED, "The actor died unexpectedly before finishing this task."),
        (TRUNCATED, "RuntimeError: PytorchStreamReader failed reading zip archive"),
        ("Traceback (most recent call last):\n  File 'x'\nKeyError: 'lr'\n", "KeyError: 'lr'"),
        ("ValueError: task.source is not set\n", "ValueError: task.source is not set"),
        ("", ""),
    ],
)
def test_error_reason_names_the_real_cause(text, reason):
    assert error_reason(text).startswith(reason)
    assert "Training failed due to worker errors" not in error_reason(text)
