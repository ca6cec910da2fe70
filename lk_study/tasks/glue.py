"""GLUE (Wang et al. 2019) fine-tuning tasks: ``glue/cola`` ... ``glue/wnli``.

Data: ``nyu-mll/glue`` with the task's config name (``task.source: hub``), or a PATH to a
DatasetDict saved by ``save_to_disk`` (PATH itself, or PATH/<task> so that one root holding
every task serves a whole GLUE grid), or ``generate``: a small synthetic stand-in in the hub's
schema with labels learnable from the text, for offline smoke runs and tests
(``synthetic``, from the grammar of ``lk_study.generators.text``; not a benchmark). Test
splits (labels −1) are never used.

    task   text columns            labels             head      metric (GLUE's)
    cola   sentence                2                  classify  Matthews correlation
    sst2   sentence                2                  classify  accuracy
    mrpc   sentence1, sentence2    2                  classify  accuracy, F1
    qqp    question1, question2    2                  classify  accuracy, F1
    stsb   sentence1, sentence2    score in [0, 5]    regress   Pearson, Spearman
    mnli   premise, hypothesis     3                  classify  accuracy (matched, mismatched)
    qnli   question, sentence      2                  classify  accuracy
    rte    sentence1, sentence2    2                  classify  accuracy
    wnli   sentence1, sentence2    2                  classify  accuracy

Tokens: ids = s (one text) or s₁ + [SEP] + s₂ (a pair), at most ``max_len`` tokens,
longest-first truncation (``lk_study.tasks.wordpiece``); the encoder prepends [CLS].
``task.tokenizer`` is a tokenizer.json; the paper's setting is the WordPiece vocabulary of the
WikiText-103 pre-training: pass the path ``WikiText103MLM().tokenizer_path(cfg)`` returns
(and load the pre-trained encoder with ``lk_study.models.mlm.load_encoder``). With
``tokenizer: ""`` a WordPiece of ``vocab_size`` ids (default 8000) is trained on the task's
own training text (no pre-training; for baselines and tests).

A malformed row (null or blank text, a label that does not parse or is out of range) is a
ValueError naming the source, split and row index, or with ``task.on_bad_rows: skip`` is
skipped and counted in a log line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from lk_study.generators import text
from lk_study.tasks import hf, metrics
from lk_study.tasks.base import BadRows, Task, TaskConfig, check, ids_array, prepare_cached
from lk_study.tasks.wordpiece import NUM_SPECIAL, WordPiece

logger = logging.getLogger(__name__)

HUB_REPO = "nyu-mll/glue"
DEFAULT_VOCAB = 8000  # WordPiece trained on a task's own text when vocab_size is 0
STSB_RANGE = (0.0, 5.0)
_INT = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class Spec:
    """One GLUE task: its columns, label space, metric and evaluation splits, and how the GLUE
    table (``lk_study.analysis.glue_table``) reports it: ``metrics`` are the official dev
    metrics as training reports them (``val_`` + split + the ``metric``'s key), each shown as
    its column ``label`` + ``metric_labels`` (the label alone for a one-metric task)."""

    text: tuple[str, ...]  # one column, or a pair
    num_labels: int  # classes; 1 = regression (STS-B)
    metric: Callable[[np.ndarray, np.ndarray], dict[str, float]]
    eval_splits: tuple[str, ...] = ("validation",)
    label: str = dataclasses.field(kw_only=True)  # the GLUE table's column, e.g. "MRPC"
    metrics: tuple[str, ...] = dataclasses.field(kw_only=True)  # e.g. val_accuracy, val_f1
    metric_labels: tuple[str, ...] = dataclasses.field(kw_only=True)  # e.g. acc, F1

    def __post_init__(self) -> None:
        if len(self.metrics) != len(self.metric_labels):
            raise ValueError(f"{self.label}: one metric label per metric, got {self}")


SPECS: dict[str, Spec] = {
    "cola": Spec(
        ("sentence",), 2, metrics.mcc, label="CoLA", metrics=("val_mcc",), metric_labels=("MCC",)
    ),
    "sst2": Spec(
        ("sentence",),
        2,
        metrics.accuracy,
        label="SST-2",
        metrics=("val_accuracy",),
        metric_labels=("acc",),
    ),
    "mrpc": Spec(
        ("sentence1", "sentence2"),
        2,
        metrics.accuracy_f1,
        label="MRPC",
        metrics=("val_accuracy", "val_f1"),
        metric_labels=("acc", "F1"),
    ),
    "qqp": Spec(
        ("question1", "question2"),
        2,
        metrics.accuracy_f1,
        label="QQP",
        metrics=("val_accuracy", "val_f1"),
        metric_labels=("acc", "F1"),
    ),
    "stsb": Spec(
        ("sentence1", "sentence2"),
        1,
        metrics.pearson_spearman,
        label="STS-B",
        metrics=("val_pearson", "val_spearman"),
        metric_labels=("Pearson", "Spearman"),
    ),
    "mnli": Spec(
        ("premise", "hypothesis"),
        3,
        metrics.accuracy,
        ("validation_matched", "validation_mismatched"),
        label="MNLI",
        metrics=("val_matched_accuracy", "val_mismatched_accuracy"),
        metric_labels=("m", "mm"),
    ),
    "qnli": Spec(
        ("question", "sentence"),
        2,
        metrics.accuracy,
        label="QNLI",
        metrics=("val_accuracy",),
        metric_labels=("acc",),
    ),
    "rte": Spec(
        ("sentence1", "sentence2"),
        2,
        metrics.accuracy,
        label="RTE",
        metrics=("val_accuracy",),
        metric_labels=("acc",),
    ),
    "wnli": Spec(
        ("sentence1", "sentence2"),
        2,
        metrics.accuracy,
        label="WNLI",
        metrics=("val_accuracy",),
        metric_labels=("acc",),
    ),
}


@dataclass(frozen=True)
class GlueConfig(TaskConfig):
    """The ``task:`` section of every GLUE task (each task's subclass sets ``name``)."""

    source: str = "hub"  # hub | generate | PATH to a DatasetDict (or PATH/<task>)
    tokenizer: str = ""  # tokenizer.json (the paper: the WikiText-103 one); "" = train here
    vocab_size: int = 0  # 0 = the tokenizer file's size, or 8000 when trained here
    max_len: int = 128  # tokens, [SEP] included, [CLS] not counted

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.source), "source", "must be 'hub', 'generate' or a path")
        check(
            self.vocab_size == 0 or self.vocab_size > NUM_SPECIAL,
            "vocab_size",
            f"must be 0 (automatic) or > {NUM_SPECIAL}",
        )
        check(self.max_len >= 3, "max_len", "must be >= 3 (a pair needs [SEP])")


def _task_config(task: str) -> type[GlueConfig]:
    """``glue/<task>``'s config section: GlueConfig with its own name (e.g. MnliConfig)."""
    field = dataclasses.field(default=f"glue/{task}")
    name = f"{task.capitalize()}Config"
    cls = dataclasses.make_dataclass(name, [("name", str, field)], bases=(GlueConfig,), frozen=True)
    cls.__module__ = __name__
    return cls


CONFIGS: dict[str, type[GlueConfig]] = {task: _task_config(task) for task in SPECS}
globals().update({cls.__name__: cls for cls in CONFIGS.values()})  # picklable by name


def parse_label(value: object, num_labels: int) -> tuple[float | int | None, str]:
    """(label, "") or (None, problem). Classes: an integer in [0, num_labels); regression
    (num_labels 1): a finite number in [0, 5] (STS-B)."""
    if isinstance(value, str):
        text = value.strip()
        if num_labels > 1 and _INT.fullmatch(text):
            value = int(text)
        else:
            try:
                value = float(text)
            except ValueError:
                return None, f"label {value!r} is not a number"
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, f"label {value!r} is not a number"
    if num_labels == 1:
        lo, hi = STSB_RANGE
        if not (math.isfinite(value) and lo <= value <= hi):
            return None, f"score {value!r} is outside [{lo:g}, {hi:g}]"
        return float(value), ""
    if isinstance(value, float):
        if not value.is_integer():
            return None, f"label {value!r} is not an integer class"
        value = int(value)
    if not 0 <= value < num_labels:
        return None, f"label {value} is outside 0..{num_labels - 1}"
    return value, ""


class Glue(Task):
    """Registry entry ``glue/<task>``."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.spec = SPECS[task]
        self.Config = CONFIGS[task]
        self.head = "regress" if self.spec.num_labels == 1 else "classify"
        self.splits = ("train", *self.spec.eval_splits)

    def vocab_size(self, cfg: GlueConfig) -> int:
        if not cfg.tokenizer:
            return cfg.vocab_size or DEFAULT_VOCAB
        size = WordPiece.load(cfg.tokenizer).vocab_size
        if cfg.vocab_size and cfg.vocab_size != size:
            raise ValueError(
                f"{cfg.name}: task.vocab_size={cfg.vocab_size} but the tokenizer "
                f"{cfg.tokenizer} has {size} ids; set task.vocab_size: 0 (= the tokenizer's)"
            )
        return size

    def num_outputs(self, cfg: GlueConfig) -> int:
        return self.spec.num_labels

    def metrics(self, pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
        return self.spec.metric(pred, label)

    def metric_names(self, cfg: GlueConfig) -> tuple[str, ...]:
        """Each eval split's loss, the official metrics (``Spec.metrics``) and ``val_score``."""
        losses = [n for n in super().metric_names(cfg) if n.endswith("loss")]
        return (*losses, *self.spec.metrics, "val_score")

    def score(self, results: dict[str, dict[str, float]]) -> float:
        """GLUE's task score of one evaluation ({split: metrics}): the mean of the official
        dev metrics of every eval split (MNLI: matched and mismatched accuracy), reported as
        ``val_score`` so that one objective ranks a study over several GLUE tasks."""
        values = [v for r in results.values() for k, v in r.items() if k != "loss"]
        return float(np.mean(values))

    # --- data ---------------------------------------------------------------------------

    def read_split(
        self, cfg: GlueConfig, ds, where: str
    ) -> tuple[list[list[str]], np.ndarray, int]:
        """Validated rows of one split -> (texts per column, labels, number skipped)."""
        columns = [*self.spec.text, "label"]
        hf.check_columns(ds, columns, where)
        texts: list[list[str]] = [[] for _ in self.spec.text]
        labels: list[float | int] = []
        bad = BadRows(cfg.on_bad_rows, where)
        for start, table in hf.chunks(ds, columns):
            cols = [table.column(c).to_pylist() for c in columns]
            for row, values in enumerate(zip(*cols, strict=True), start):
                *row_texts, raw = values
                problem = next(
                    (
                        f"empty text in column {c!r}"
                        for c, t in zip(self.spec.text, row_texts, strict=True)
                        if not isinstance(t, str) or not t.strip()
                    ),
                    "",
                )
                label = None
                if not problem:
                    label, problem = parse_label(raw, self.spec.num_labels)
                if problem:
                    bad(f"row {row}", problem)
                    continue
                for col, t in zip(texts, row_texts, strict=True):
                    col.append(t)
                labels.append(label)
        bad.log()
        if not labels:
            raise ValueError(f"{where}: no valid rows")
        dtype = np.float64 if self.spec.num_labels == 1 else np.int64
        return texts, np.asarray(labels, dtype=dtype), bad.skipped

    def _tokenizer(self, cfg: GlueConfig, train_texts: list[list[str]]) -> WordPiece:
        if cfg.tokenizer:
            return WordPiece.load(cfg.tokenizer)
        corpus = [t for col in train_texts for t in col]
        return WordPiece.train(corpus, cfg.vocab_size or DEFAULT_VOCAB)

    def prepare(self, cfg: GlueConfig) -> dict[str, Path]:
        """Validate, tokenize and cache the splits (Parquet, once per machine, under a lock)."""

        def build() -> dict[str, pa.Table]:
            data = hf.load_splits(
                cfg.source,
                HUB_REPO,
                self.task,
                self.splits,
                self.task,
                generate=lambda: synthetic(self.task),
            )
            what = f"{cfg.name}: {hf.describe(cfg.source, HUB_REPO, self.task)}"
            read = {s: self.read_split(cfg, data[s], f"{what} split {s!r}") for s in self.splits}
            tok = self._tokenizer(cfg, read["train"][0])
            tables = {}
            for split, (texts, labels, _) in read.items():
                if len(texts) == 1:
                    ids = [x[: cfg.max_len] for x in tok.encode_batch(texts[0])]
                else:
                    ids = tok.encode_pairs(texts[0], texts[1], cfg.max_len)
                tables[split] = pa.table({"ids": ids_array(ids), "label": pa.array(labels)})
            return tables

        key_cfg = cfg
        if cfg.tokenizer:  # the cache must change when the tokenizer file does
            self.vocab_size(cfg)  # fail early, naming the path, if it is missing or mismatched
            digest = hashlib.sha256(Path(cfg.tokenizer).read_bytes()).hexdigest()[:16]
            key_cfg = dataclasses.replace(cfg, tokenizer=f"{cfg.tokenizer}@{digest}")
        return prepare_cached(key_cfg, self.splits, build)


# ------------------------------------------------------ source: generate (offline stand-in)

SYNTHETIC_ROWS = {"train": 512, "validation": 128, "test": 64}  # per split (each eval split)

# The hub's label names (ClassLabel order) per GLUE task; None = float32 score (stsb).
LABEL_NAMES: dict[str, tuple[str, ...] | None] = {
    "cola": ("unacceptable", "acceptable"),
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "qqp": ("not_duplicate", "duplicate"),
    "stsb": None,
    "mnli": ("entailment", "neutral", "contradiction"),
    "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"),
    "wnli": ("not_entailment", "entailment"),
}


def _rng(*parts: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(parts).encode()))


def hub_features(task: str):
    """The hub's features of a GLUE task: text columns, label, idx."""
    import datasets

    names = LABEL_NAMES[task]
    label = datasets.ClassLabel(names=list(names)) if names else datasets.Value("float32")
    return datasets.Features(
        {
            **{c: datasets.Value("string") for c in SPECS[task].text},
            "label": label,
            "idx": datasets.Value("int32"),
        }
    )


def hub_split_names(task: str) -> list[str]:
    """train, then each evaluation split and its test split (as the hub orders them)."""
    evals = SPECS[task].eval_splits
    return ["train", *evals, *(s.replace("validation", "test") for s in evals)]


def synthetic(task: str):
    """``source: generate``: a DatasetDict of GLUE task ``task`` in the hub's schema (its
    columns, ClassLabel names, ``idx``, splits; test splits labelled −1), ``SYNTHETIC_ROWS``
    rows per split, each label a rule of the text (``lk_study.generators.text``). Seeded by
    (repo, task, split): two calls give identical data."""
    import datasets

    spec = SPECS[task]
    splits = {}
    for split in hub_split_names(task):
        rng = _rng(HUB_REPO, task, split)
        kind = "test" if split.startswith("test") else split.split("_")[0]
        n = SYNTHETIC_ROWS[kind]
        genre = "mismatched" if split.endswith("mismatched") else "matched"
        classes = 6 if spec.num_labels == 1 else spec.num_labels  # stsb: targets 0..5
        targets = rng.permutation(np.arange(n) % classes)
        writer = text.Writer(rng, text.GLUE_WORDS)
        rows = [text.ROWS[task](writer, int(t), genre) for t in targets]
        columns = {c: [r[i] for r in rows] for i, c in enumerate(spec.text)}
        if kind == "test":
            labels = [-1.0 if spec.num_labels == 1 else -1] * n
        else:
            labels = [text.LABEL_RULES[task](*r) for r in rows]
        columns.update(label=labels, idx=list(range(n)))
        splits[split] = datasets.Dataset.from_dict(
            columns, features=hub_features(task), split=split
        )
    return datasets.DatasetDict(splits)
