"""Real data that installs offline, through the loaders users call with ``task.source: PATH``.

scikit-learn's handwritten digits (``sklearn.datasets.load_digits``: 1,797 real 8x8 scans,
17 grey levels 0..16, 10 classes) are written as an image DatasetDict in CIFAR-10's hub
schema (``img`` PIL image, ``label``; splits ``train``/``test``), prepared by the ``image``
task with ``resize: resize`` (8x8 -> 32x32, 1,024 pixel tokens as LRA's CIFAR-10) and trained
by the project's one training loop (``lk_study.train.fit``, in process, no Ray).
"""

import time

import datasets
import numpy as np
import PIL.Image
import pytest
from sklearn.datasets import load_digits

from lk_study.config import Config, with_overrides
from lk_study.tasks import Split, prepare
from lk_study.train import fit

NUM_TEST = 297  # the rest (1,500) train


def save_digits(path) -> None:
    """load_digits as a saved DatasetDict at ``path``: grey 0..16 -> 0..255 (v * 255 / 16,
    rounded), mode L 8x8 images; a seeded permutation splits 1,500 train / 297 test."""
    digits = load_digits()
    grey = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8)
    order = np.random.default_rng(0).permutation(len(grey))
    features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")})

    def split(rows):
        return datasets.Dataset.from_dict(
            {
                "img": [PIL.Image.fromarray(grey[i]) for i in rows],
                "label": [int(digits.target[i]) for i in rows],
            },
            features=features,
        )

    splits = {"train": split(order[NUM_TEST:]), "test": split(order[:NUM_TEST])}
    datasets.DatasetDict(splits).save_to_disk(str(path))


@pytest.fixture(scope="module")
def digits_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("digits") / "digits"
    save_digits(path)
    return path


DIGITS = {"task.name": "image", "task.resize": "resize"}


def test_digits_prepare_through_the_image_loader(digits_path):
    cfg = with_overrides(Config(), {**DIGITS, "task.source": str(digits_path)})
    paths = prepare(cfg.task)
    train, validation = Split(paths["train"]), Split(paths["validation"])
    assert (len(train), len(validation)) == (1797 - NUM_TEST, NUM_TEST)
    batch = train.batch(np.arange(len(train)))
    assert batch["ids"].shape == (len(train), 1024)
    assert sorted(np.unique(batch["label"]).tolist()) == list(range(10))
    ids = batch["ids"].numpy()
    assert ids.min() >= 1 and ids.max() <= 256  # intensity + 1
    assert (ids == 1).mean() > 0.2 and len(np.unique(ids)) > 200  # black margins, smooth strokes


TRAIN = {
    **DIGITS,
    "model.d_model": 32,
    "model.num_heads": 2,
    "model.d_ff": 64,
    "model.num_layers": 2,
    "model.dropout": 0.0,
    "kernel.name": "prf",
    "kernel.num_features": 16,
    "train.batch_size": 32,
    "train.max_steps": 250,
    "train.eval_every": 250,
    "train.lr": 4e-3,
    "train.warmup": 30,
    "train.weight_decay": 0.0,
}


@pytest.mark.integration  # 50-70 s on one CPU thread (conftest)
def test_digits_train_well_above_chance(digits_path):
    """Measured at train.seed 0: val_accuracy 0.747 (seeds 1 and 2: 0.599, 0.636); chance is
    0.10. The bound sits below the seeds' spread, so that another platform's rounding (which
    changes the trajectory as another seed would) does not fail it."""
    cfg = with_overrides(Config(), {**TRAIN, "task.source": str(digits_path)})
    reports = []
    start = time.perf_counter()
    fit(cfg, lambda m, s: reports.append(m))
    seconds = time.perf_counter() - start
    accuracy = reports[-1]["val_accuracy"]
    print(f"digits: val_accuracy {accuracy:.3f} after {reports[-1]['step']} steps, {seconds:.1f} s")
    assert reports[-1]["step"] == 250 and np.isfinite(reports[-1]["train_loss"])
    assert accuracy >= 0.55
