"""Every task builds offline (fixtures made here, or generators) and trains one step."""

import datasets
import numpy as np
import PIL.Image
import pytest

from lk_study.config import Config, ConfigError, with_overrides
from lk_study.tasks import TASKS, Split, get_task, prepare
from lk_study.tasks.base import byte_ids
from lk_study.train import fit

TINY_MODEL = {
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


def one_step(overrides: dict) -> dict:
    cfg = with_overrides(Config(), {**TINY_MODEL, **overrides})
    reports = []
    fit(cfg, lambda m, s: reports.append(m))
    assert len(reports) == 1 and np.isfinite(reports[0]["train_loss"])
    return reports[0]


@pytest.fixture
def imdb(tmp_path):
    texts = [f"review {i}: {'great' if i % 2 else 'awful'} film é" for i in range(12)]
    d = datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(12)]})
    path = tmp_path / "imdb"
    datasets.DatasetDict({"train": d, "test": d.select(range(6))}).save_to_disk(str(path))
    return path


def aan_line(label, a, b):
    return f"{label}\tid{a}\tid{b}\tpaper text {a} cites?\tpaper text {b}\n"


@pytest.fixture
def aan(tmp_path):
    folder = tmp_path / "tsv_data"
    folder.mkdir()
    for name, n in (("train", 10), ("eval", 6)):
        rows = "".join(aan_line(i % 2, i, i + 1) for i in range(n))
        (folder / f"new_aan_pairs.{name}.tsv").write_text(rows)
    return folder


def test_registry_lists_tasks_in_errors():
    with pytest.raises(ValueError, match="valid tasks: .*sparsity"):
        get_task("listopz")
    with pytest.raises(ConfigError, match="unknown task 'txt'; valid: .*text"):
        with_overrides(Config(), {"task.name": "txt"})


def test_text_from_saved_hub_dataset(imdb, tmp_path):
    cfg = with_overrides(
        Config(),
        {
            "task.name": "text",
            "task.source": str(imdb),
            "task.max_len": 20,
            "task.cache_dir": str(tmp_path / "c"),
        },
    )
    paths = prepare(cfg.task)
    split = Split(paths["train"])
    assert len(split) == 12 and len(Split(paths["validation"])) == 6
    batch = split.batch(np.arange(3))
    assert batch["ids"].shape[1] <= 20 and batch["ids"].max() <= 256
    expected = byte_ids("review 0: awful film é", 20)
    assert batch["ids"][0, : len(expected)].tolist() == expected.tolist()
    report = one_step({"task.name": "text", "task.source": str(imdb), "task.max_len": 32})
    assert 0 <= report["val_accuracy"] <= 1


def test_text_bad_rows_error_or_skip(tmp_path):
    d = datasets.Dataset.from_dict({"text": ["fine", "", "ok"], "label": [0, 1, 1]})
    path = tmp_path / "bad"
    datasets.DatasetDict({"train": d, "test": d}).save_to_disk(str(path))
    base = {"task.name": "text", "task.source": str(path), "task.cache_dir": str(tmp_path / "c")}
    with pytest.raises(ValueError, match=r"split train, row 1: empty text.*on_bad_rows: skip"):
        prepare(with_overrides(Config(), base).task)
    paths = prepare(with_overrides(Config(), {**base, "task.on_bad_rows": "skip"}).task)
    assert len(Split(paths["train"])) == 2
    missing = with_overrides(Config(), {**base, "task.source": str(tmp_path / "nope")})
    with pytest.raises(FileNotFoundError, match="nope not found or not a saved DatasetDict"):
        prepare(missing.task)


def test_retrieval_dual_encoder(aan):
    report = one_step({"task.name": "retrieval", "task.source": str(aan), "task.max_len": 24})
    assert 0 <= report["val_accuracy"] <= 1
    with pytest.raises(ConfigError, match="task.source: must be the folder"):
        with_overrides(Config(), {"task.name": "retrieval", "task.source": "hub"})
    with pytest.raises(FileNotFoundError, match="task.source is not set"):
        prepare(with_overrides(Config(), {"task.name": "retrieval"}).task)


def test_retrieval_malformed_rows_name_file_and_line(aan, tmp_path):
    train = aan / "new_aan_pairs.train.tsv"
    train.write_text(aan_line(1, 1, 2) + "1\tid\tonly three\n" + aan_line("maybe", 3, 4))
    base = {"task.name": "retrieval", "task.source": str(aan), "task.cache_dir": str(tmp_path)}
    with pytest.raises(ValueError, match=r"new_aan_pairs.train.tsv, line 2: expected 5"):
        prepare(with_overrides(Config(), base).task)
    paths = prepare(with_overrides(Config(), {**base, "task.on_bad_rows": "skip"}).task)
    assert len(Split(paths["train"])) == 1
    (aan / "new_aan_pairs.eval.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="new_aan_pairs.eval.tsv"):
        skip = {**base, "task.on_bad_rows": "skip", "task.max_len": 7}
        prepare(with_overrides(Config(), skip).task)


def test_image_generated_and_from_saved_dataset(tmp_path):
    report = one_step(
        {"task.name": "image", "task.source": "generate", "task.size": 60, "task.resolution": 8}
    )
    assert 0 <= report["val_accuracy"] <= 1
    imgs = [PIL.Image.fromarray(np.full((32, 32, 3), 10 * i, dtype=np.uint8)) for i in range(10)]
    d = datasets.Dataset.from_dict(
        {"img": imgs, "label": list(range(10))},
        features=datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")}),
    )
    path = tmp_path / "cifar"
    datasets.DatasetDict({"train": d, "test": d}).save_to_disk(str(path))
    cfg = with_overrides(
        Config(),
        {"task.name": "image", "task.source": str(path), "task.cache_dir": str(tmp_path / "c")},
    )
    split = Split(prepare(cfg.task)["train"])
    batch = split.batch(np.arange(10))
    assert batch["ids"].shape == (10, 1024)
    assert batch["ids"][3].unique().tolist() == [31]  # gray 30 -> token 31


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_has_the_interface(name):
    task = TASKS[name]
    assert task.head in ("classify", "regress", "dual", "mlm")
    assert "train" in task.splits and len(task.splits) >= 2
    assert task.Config().name == name


LISTOPS_SMALL = {
    "task.name": "listops",
    "task.size": 30,
    "task.tree_min_tokens": 5,
    "task.tree_max_tokens": 60,
    "task.max_depth": 4,
    "task.max_args": 4,
}


def test_listops_generated_and_release_files(tmp_path):
    from lk_study.tasks import listops

    report = one_step(LISTOPS_SMALL)
    assert 0 <= report["val_accuracy"] <= 1
    listops.write_release(
        tmp_path / "rel", 40, seed=1, tree_min_tokens=5, tree_max_tokens=60, max_depth=4, max_args=4
    )
    cfg = with_overrides(
        Config(),
        {
            "task.name": "listops",
            "task.source": str(tmp_path / "rel"),
            "task.cache_dir": str(tmp_path / "c"),
        },
    )
    paths = prepare(cfg.task)
    sources, labels, _ = listops.read_tsv(tmp_path / "rel" / "train.tsv")
    split = Split(paths["train"])
    assert len(split) == len(sources) and split.label.tolist() == labels
    first = split.batch(np.arange(1))["ids"][0]
    assert first[first > 0].tolist() == listops.tokenize(sources[0])


def test_data_cli_prepare_and_generate(tmp_path, capsys):
    from lk_study.cli import main

    sets = [f"--set={k}={v}" for k, v in LISTOPS_SMALL.items() if k != "task.name"]
    assert main(["data", "prepare", "listops", *sets]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "27 rows" in out
    assert main(["data", "generate", "listops", "--out", str(tmp_path), "--num", "50"]) == 0
    assert {p.name for p in tmp_path.iterdir()} >= {"train.tsv", "val.tsv", "test.tsv"}
    assert main(["data", "prepare", "listopz"]) == 2
    assert "valid: listops" in capsys.readouterr().err


def test_pathfinder_generated_and_release(tmp_path):
    from lk_study.tasks import pathfinder

    report = one_step(
        {"task.name": "pathfinder", "task.size": 12, "task.difficulty": "curv_baseline"}
    )
    assert 0 <= report["val_accuracy"] <= 1
    pathfinder.write_release(tmp_path / "pf32", 10, seed=3, difficulty="curv_baseline")
    base = {
        "task.name": "pathfinder",
        "task.source": str(tmp_path / "pf32"),
        "task.difficulty": "curv_baseline",
        "task.cache_dir": str(tmp_path / "c"),
    }
    paths = prepare(with_overrides(Config(), base).task)
    images, labels, _ = pathfinder.read_release(tmp_path / "pf32", "curv_baseline")
    train = Split(paths["train"])
    assert len(train) == 9 and train.label.tolist() == labels[:9].tolist()
    assert (
        train.batch(np.arange(1))["ids"][0].tolist() == (images[0].ravel().astype(int) + 1).tolist()
    )
    with pytest.raises(ValueError, match="set task.resolution: 32"):
        prepare(with_overrides(Config(), {**base, "task.resolution": 64}).task)
