"""WikiText-103 masked-LM pre-training (the paper's GLUE setting), BERT-style.

Data: ``Salesforce/wikitext`` / ``wikitext-103-raw-v1`` (train and validation, one ``text``
row per line of the articles), or a DatasetDict with those splits saved by ``save_to_disk``,
or (``source: generate``) a small synthetic corpus in the same layout for offline smoke runs
and tests (``synthetic``, from the grammar of ``lk_study.generators.text``; not a benchmark).

Preparation (once per machine, cached as Parquet):

1. Tokenizer: a WordPiece vocabulary of exactly ``vocab_size`` ids trained on the training
   text (``lk_study.tasks.wordpiece``), cached as ``tokenizer.json`` keyed by (source,
   vocab_size, lowercase); ``WikiText103MLM().tokenizer_path(cfg)`` returns it. Pass that path
   as ``task.tokenizer`` of the GLUE tasks to fine-tune with the pre-training vocabulary.
2. Packing: the lines of a split are tokenized and concatenated into one stream, with a [SEP]
   between articles (a line `` = Title = `` starts one; blank lines are dropped), and cut
   into sequences of ``max_len`` tokens (the last one may be shorter).
3. Static masking (BERT): in each sequence, of the n eligible tokens (all but [PAD], [SEP],
   [MASK]) k = ⌊p·n + u⌋, u ~ U[0, 1), are chosen uniformly (so E[k] = p·n, p = mask_prob);
   a chosen token becomes [MASK] with probability 0.8, a uniformly random word piece with
   probability 0.1, and stays unchanged with probability 0.1. The training split is written
   ``dupe_factor`` times with independent masks. Seeded by (seed, split, copy).

Prepared columns: ``ids`` (masked inputs) and ``label`` (list<int32>: the original token at
chosen positions, IGNORE = −100 elsewhere). Head "mlm"; metric: masked-token accuracy.

Rows that are null are malformed (error naming source, split and row, or skipped and counted
with ``task.on_bad_rows: skip``); empty lines are normal in WikiText and simply dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from filelock import FileLock

from lk_study.generators import text
from lk_study.tasks import hf, metrics
from lk_study.tasks.base import (
    IGNORE,
    SOURCE_WORDS,
    BadRows,
    Task,
    TaskConfig,
    cache_root,
    check,
    prepare_cached,
    source_fingerprint,
)
from lk_study.tasks.wordpiece import MASK_ID, NUM_SPECIAL, PAD_ID, SEP_ID, WordPiece

logger = logging.getLogger(__name__)

HUB = ("Salesforce/wikitext", "wikitext-103-raw-v1")
SPLITS = ("train", "validation")
ARTICLE = re.compile(r"^ = [^=].* = $")  # a level-1 heading starts an article
MASK_ROWS = 4096  # sequences masked per numpy call (bounds the (rows, T) temporaries)
MAX_VALUES = 2**31 - 1  # list<int32> offsets


@dataclass(frozen=True)
class WikiTextConfig(TaskConfig):
    name: str = "wikitext103_mlm"
    source: str = "hub"  # hub | generate | PATH to a DatasetDict (train, validation; "text")
    vocab_size: int = 30522  # WordPiece ids, special tokens included (BERT's size)
    lowercase: bool = True  # BERT-uncased normalisation
    max_len: int = 128  # tokens per packed sequence ([CLS] not counted)
    mask_prob: float = 0.15
    dupe_factor: int = 1  # copies of the training split, each with its own mask
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.source), "source", "must be 'hub', 'generate' or a path")
        check(self.vocab_size > NUM_SPECIAL, "vocab_size", f"must be > {NUM_SPECIAL}")
        check(self.max_len >= 2, "max_len", "must be >= 2")
        check(0.0 < self.mask_prob < 1.0, "mask_prob", "must be in (0, 1)")
        check(self.dupe_factor >= 1, "dupe_factor", "must be >= 1")


def mask_tokens(
    ids: np.ndarray, rng: np.random.Generator, mask_prob: float, num_regular: int
) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking of sequences ids (N, T) -> (inputs (N, T), labels (N, T)), both int32.

    Eligible: ids ∉ {[PAD], [SEP], [MASK]}. Per row k = ⌊p·n + u⌋ of the n eligible positions
    are chosen uniformly; chosen -> [MASK] (80 %), a random id in [NUM_SPECIAL, num_regular)
    (10 %), unchanged (10 %). labels = ids where chosen, IGNORE elsewhere.
    """
    ids = np.asarray(ids, dtype=np.int32)
    inputs, labels = ids.copy(), np.full(ids.shape, IGNORE, dtype=np.int32)
    for start in range(0, len(ids), MASK_ROWS):
        block = ids[start : start + MASK_ROWS]  # (n, T)
        n, t = block.shape
        eligible = (block != PAD_ID) & (block != SEP_ID) & (block != MASK_ID)
        count = np.floor(mask_prob * eligible.sum(1) + rng.random(n)).astype(np.int64)  # (n,)
        keys = np.where(eligible, rng.random((n, t)), np.inf)
        kth = np.take_along_axis(np.sort(keys, axis=1), np.maximum(count - 1, 0)[:, None], 1)
        chosen = (keys <= kth) & (count[:, None] > 0)  # the `count` smallest keys per row
        action = rng.random((n, t))
        to_mask = chosen & (action < 0.8)
        to_random = chosen & (action >= 0.8) & (action < 0.9)
        out = inputs[start : start + n]
        out[to_mask] = MASK_ID
        out[to_random] = rng.integers(NUM_SPECIAL, num_regular, size=int(to_random.sum()))
        labels[start : start + n][chosen] = block[chosen]
    return inputs, labels


def _list_column(values: np.ndarray, lengths: np.ndarray) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.int32()))


class WikiText103MLM(Task):
    """Registry entry ``wikitext103_mlm``: masked-LM pre-training on WikiText-103."""

    Config = WikiTextConfig
    head = "mlm"
    splits = SPLITS

    def vocab_size(self, cfg: WikiTextConfig) -> int:
        return cfg.vocab_size

    def num_outputs(self, cfg: WikiTextConfig) -> int:
        return cfg.vocab_size

    def metrics(self, pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
        """Masked-token accuracy (pred, label: the chosen positions, flattened)."""
        return metrics.accuracy(pred, label)

    # --- data ---------------------------------------------------------------------------

    def _load(self, cfg: WikiTextConfig) -> dict:
        data = hf.load_splits(cfg.source, *HUB, SPLITS, generate=synthetic)
        for split, ds in data.items():
            hf.check_columns(ds, ["text"], f"{self._where(cfg)} split {split!r}")
        return data

    @staticmethod
    def _where(cfg: WikiTextConfig) -> str:
        return f"{cfg.name}: {hf.describe(cfg.source, *HUB)}"

    def artifacts(self, cfg: WikiTextConfig) -> dict[str, Path]:
        """Files every checkpoint carries: the tokenizer, so that fine-tuning runs
        (``task.tokenizer: study:NAME``) read the pre-training vocabulary from the checkpoint."""
        return {"tokenizer.json": self.tokenizer_path(cfg)}

    def tokenizer_path(self, cfg: WikiTextConfig, data: dict | None = None) -> Path:
        """tokenizer.json trained on the training text (built once, cached, under a lock)."""
        params = {"source": cfg.source, "vocab_size": cfg.vocab_size, "lowercase": cfg.lowercase}
        if cfg.source not in SOURCE_WORDS:  # a fixed source file gives a new tokenizer
            params["files"] = source_fingerprint(cfg.source)
        key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
        folder = cache_root(cfg) / cfg.name / "tokenizer" / key
        path = folder / "tokenizer.json"
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / ".lock")):
            if path.exists():
                try:
                    json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as e:
                    logger.warning(
                        "%s: cached tokenizer %s is unreadable (%s); rebuilding it",
                        cfg.name,
                        path,
                        e,
                    )
                    path.unlink()
            if not path.exists():
                train = (data or self._load(cfg))["train"]

                def texts() -> Iterator[str]:
                    for _, table in hf.chunks(train, ["text"]):
                        yield from (t for t in table.column("text").to_pylist() if t)

                WordPiece.train(texts, cfg.vocab_size, cfg.lowercase).save(path)
                (folder / "params.json").write_text(json.dumps(params, indent=1))
                logger.info("%s: trained WordPiece tokenizer %s", cfg.name, path)
        return path

    def _stream(self, cfg: WikiTextConfig, ds, split: str, tok: WordPiece) -> np.ndarray:
        """All tokens of a split, one int32 stream, [SEP] between articles."""
        pieces: list[np.ndarray] = []
        sep = np.asarray([SEP_ID], dtype=np.int32)
        bad = BadRows(cfg.on_bad_rows, f"{self._where(cfg)} split {split!r}")
        for start, table in hf.chunks(ds, ["text"]):
            lines = table.column("text").to_pylist()
            keep = []
            for row, line in enumerate(lines, start):
                if line is None:
                    bad(f"row {row}", "text is null")
                elif line.strip():
                    keep.append(line)
            for line, ids in zip(keep, tok.encode_batch(keep), strict=True):
                if ARTICLE.match(line.rstrip("\n")) and pieces:
                    pieces.append(sep)
                pieces.append(ids)
        bad.log()
        stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
        if not len(stream):
            raise ValueError(f"{self._where(cfg)} split {split!r}: no text")
        return stream

    def _masked_table(
        self, cfg: WikiTextConfig, stream: np.ndarray, split_index: int, copies: int, tok
    ) -> pa.Table:
        """Cut the stream into max_len sequences and mask ``copies`` times."""
        t = cfg.max_len
        n_full = len(stream) // t
        full, rest = stream[: n_full * t].reshape(n_full, t), stream[n_full * t :]
        lengths = np.array([t] * n_full + ([len(rest)] if len(rest) else []), dtype=np.int64)
        if copies * len(stream) > MAX_VALUES:
            raise ValueError(
                f"{cfg.name}: {copies} × {len(stream)} tokens exceed a Parquet list<int32> "
                f"column ({MAX_VALUES}); lower task.dupe_factor"
            )
        ids, labels = [], []
        for copy in range(copies):
            rng = np.random.default_rng([cfg.seed, split_index, copy])
            for part in (full, rest[None]) if len(rest) else (full,):
                x, y = mask_tokens(part, rng, cfg.mask_prob, tok.num_regular)
                ids.append(x.ravel())
                labels.append(y.ravel())
        all_lengths = np.tile(lengths, copies)
        return pa.table(
            {
                "ids": _list_column(np.concatenate(ids), all_lengths),
                "label": _list_column(np.concatenate(labels), all_lengths),
            }
        )

    def prepare(self, cfg: WikiTextConfig) -> dict[str, Path]:
        """Tokenizer, packed and masked splits, once per machine (Parquet, under a lock)."""

        def build() -> dict[str, pa.Table]:
            data = self._load(cfg)
            tok = WordPiece.load(self.tokenizer_path(cfg, data))
            if tok.num_regular <= NUM_SPECIAL:
                raise ValueError(f"{self._where(cfg)}: the tokenizer learned no word pieces")
            tables = {}
            for index, split in enumerate(SPLITS):
                stream = self._stream(cfg, data[split], split, tok)
                copies = cfg.dupe_factor if split == "train" else 1
                tables[split] = self._masked_table(cfg, stream, index, copies, tok)
                logger.info(
                    "%s %s: %d tokens -> %d sequences of <= %d",
                    cfg.name,
                    split,
                    len(stream),
                    tables[split].num_rows,
                    cfg.max_len,
                )
            return tables

        return prepare_cached(cfg, SPLITS, build, identity={"hub": list(HUB)})


# ------------------------------------------------------ source: generate (offline stand-in)

SYNTHETIC_PARAGRAPHS = {"train": 2000, "validation": 200, "test": 200}


def _rng(*parts: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(parts).encode()))


def synthetic():
    """``source: generate``: a DatasetDict of WikiText-103 raw in the hub's schema (splits
    train / validation / test, one ``text`` row per line: headings, blank rows, paragraphs;
    ``SYNTHETIC_PARAGRAPHS`` per split), seeded by (repo, config, split)."""
    import datasets

    features = datasets.Features({"text": datasets.Value("string")})
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"text": text.wikitext_lines(n, _rng(*HUB, split))},
                features=features,
                split=split,
            )
            for split, n in SYNTHETIC_PARAGRAPHS.items()
        }
    )
