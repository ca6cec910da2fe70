"""``task.source: generate`` for WikiText-103 and GLUE: the hub's schema, determinism, the
same preparation path as saved data, and labels a simple model learns from the text."""

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from scipy import stats
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression, Ridge

from lk_study.config import Config, with_overrides
from lk_study.generators import text as st
from lk_study.tasks import Split, glue, hf, prepare, wikitext
from lk_study.tasks.glue import SPECS
from lk_study.tasks.wikitext import ARTICLE
from lk_study.tasks.wordpiece import SEP_ID
from lk_study.train import fit

# The hub's schema, written out from nyu-mll/glue's dataset card (independent of the
# generator): text columns, ClassLabel names (None: float32 score), evaluation splits.
HUB_GLUE = {
    "cola": (("sentence",), ("unacceptable", "acceptable"), ("validation",)),
    "sst2": (("sentence",), ("negative", "positive"), ("validation",)),
    "mrpc": (("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("validation",)),
    "qqp": (("question1", "question2"), ("not_duplicate", "duplicate"), ("validation",)),
    "stsb": (("sentence1", "sentence2"), None, ("validation",)),
    "mnli": (
        ("premise", "hypothesis"),
        ("entailment", "neutral", "contradiction"),
        ("validation_matched", "validation_mismatched"),
    ),
    "qnli": (("question", "sentence"), ("entailment", "not_entailment"), ("validation",)),
    "rte": (("sentence1", "sentence2"), ("entailment", "not_entailment"), ("validation",)),
    "wnli": (("sentence1", "sentence2"), ("not_entailment", "entailment"), ("validation",)),
}


def config(task: str, tmp_path, **over) -> Config:
    return with_overrides(
        Config(),
        {"task.name": task, "task.source": "generate", "task.cache_dir": str(tmp_path), **over},
    )


# --- schema --------------------------------------------------------------------------------


@pytest.mark.parametrize("task", list(HUB_GLUE))
def test_glue_schema_equals_the_hub(task):
    text, names, evals = HUB_GLUE[task]
    assert SPECS[task].text == text and SPECS[task].eval_splits == evals
    label = datasets.ClassLabel(names=list(names)) if names else datasets.Value("float32")
    features = datasets.Features(
        {
            **{c: datasets.Value("string") for c in text},
            "label": label,
            "idx": datasets.Value("int32"),
        }
    )
    tests = [s.replace("validation", "test") for s in evals]
    data = glue.synthetic(task)
    assert set(data) == {"train", *evals, *tests}
    for split, ds in data.items():
        n = 64 if split in tests else 128 if split in evals else 512
        assert ds.features == features and ds.column_names == [*text, "label", "idx"]
        assert len(ds) == n and ds["idx"] == list(range(n))
        assert all(isinstance(t, str) and t.strip() for c in text for t in ds[c])
        labels = np.array(ds["label"])
        if split in tests:
            assert (labels == -1).all()
        elif names:  # every class present, none below half its share
            counts = np.bincount(labels, minlength=len(names))
            assert len(counts) == len(names) and counts.min() > n / len(names) / 2, counts
        else:
            assert labels.min() >= 0.0 and labels.max() <= 5.0 and np.std(labels) > 1.0
        if split not in tests:  # labels are the documented rule of the text
            rule = st.LABEL_RULES[task]
            expected = [rule(*row) for row in zip(*(ds[c] for c in text), strict=True)]
            assert np.allclose(labels, expected, atol=1e-5)


def test_wikitext_schema_and_layout():
    data = wikitext.synthetic()
    assert set(data) == {"train", "validation", "test"}
    for split, ds in data.items():
        assert ds.features == datasets.Features({"text": datasets.Value("string")})
        lines = ds["text"]
        assert lines[0] == "" and lines[1:3] == [lines[1], ""] and ARTICLE.match(lines[1][:-1])
        filled = [t for t in lines if t]
        assert lines.count("") == len(filled) + 1  # a blank row after every line
        assert all(t.startswith(" ") and t.endswith(" \n") for t in filled)
        headings = [t for t in filled if t.startswith(" = ")]
        paragraphs = len(filled) - len(headings)
        assert paragraphs == {"train": 2000, "validation": 200, "test": 200}[split]
        assert sum(bool(ARTICLE.match(t[:-1])) for t in headings) >= paragraphs // 10
        assert any(t.startswith(" = = ") for t in headings)  # section headings too
        words = {w for t in filled for w in t.split()}
        assert 200 < len(words) < 1000 and {",", "."} <= words  # spaced punctuation


def test_generate_is_deterministic_and_splits_differ():
    for build in (wikitext.synthetic, lambda: glue.synthetic("mnli")):
        a, b = build(), build()
        assert {s: a[s].to_dict() for s in a} == {s: b[s].to_dict() for s in b}
    mnli = glue.synthetic("mnli")
    premises = [set(mnli[s]["premise"]) for s in ("validation_matched", "validation_mismatched")]
    assert not premises[0] & premises[1]
    assert glue.synthetic("rte")["train"]["sentence1"] != mnli["train"]["premise"]


def test_label_rules_by_hand():
    ok = "The old dog quickly saw that cat near the river."
    assert st.grammatical(ok) and st.grammatical(
        "One king fed the lamp and the fox hid every drum."
    )
    assert not st.grammatical("Dog the old quickly saw that cat near the river.")
    assert not st.grammatical("The king fed the.") and not st.grammatical("The big king.")
    assert st.sentiment("The good king saw the awful and lovely lamp.") == 1
    assert st.content(ok) == {"old", "dog", "saw", "cat", "river"}
    assert st.jaccard(ok, "Every dog saw this cat.") == pytest.approx(3 / 5)
    assert st.entailed(ok, "Which dog saw the cat?") and not st.entailed(ok, "The dog fed the cat.")
    assert [st.nli(ok, h) for h in ("The dog saw the cat.", "A fox saw it.")] == [0, 1]
    assert st.nli(ok, "The dog never saw the cat.") == 2
    assert len(st.CLASS_OF) == sum(len(w) for w in st.WORDS.values())  # classes are disjoint


def test_unknown_dataset_says_what_generate_covers():
    with pytest.raises(ValueError, match=r"stanfordnlp/imdb.*wikitext103_mlm and glue/<task>"):
        hf.load_splits("generate", "stanfordnlp/imdb", None, ["train"])


# --- preparation: the same path as hub / saved data ----------------------------------------


def test_prepare_wikitext_from_generate(tmp_path):
    cfg = config("wikitext103_mlm", tmp_path, **{"task.vocab_size": 400, "task.max_len": 32})
    paths = prepare(cfg.task)
    for split in ("train", "validation"):
        b = Split(paths[split]).batch(np.arange(200))
        ids, label = b["ids"].numpy(), b["label"].numpy()
        assert ids.shape == (200, 32) and int(ids.max()) < 400
        chosen = (label != -100).sum() / (ids != 0).sum()
        assert 0.1 < chosen < 0.2  # BERT masking, 15 %


@pytest.mark.parametrize("task", ["rte", "stsb"])
def test_prepare_glue_from_generate_equals_saved_copy(task, tmp_path):
    cfg = config(f"glue/{task}", tmp_path, **{"task.vocab_size": 300, "task.max_len": 40})
    paths = prepare(cfg.task)
    assert set(paths) == {"train", "validation"}
    train = Split(paths["train"], max_len=40)
    b = train.batch(np.arange(len(train)))
    assert len(train) == 512 and ((b["ids"] == SEP_ID).sum(1) == 1).all()
    if task == "stsb":
        assert b["label"].dtype.is_floating_point and 0 <= b["label"].min() < b["label"].max() <= 5
    # the generated DatasetDict saved to disk (source: PATH) prepares to the same tables
    glue.synthetic(task).save_to_disk(str(tmp_path / "saved"))
    saved = prepare(with_overrides(cfg, {"task.source": str(tmp_path / "saved")}).task)
    for split, path in paths.items():
        assert pq.read_table(path).equals(pq.read_table(saved[split]))


# --- labels are learnable ------------------------------------------------------------------


def bag_of_words(columns: list[list[str]], vectorizer: CountVectorizer) -> sp.csr_matrix:
    """Binary bag of words of each text column and, for a pair, of the shared words."""
    parts = [vectorizer.transform(c) for c in columns]
    if len(parts) == 2:
        parts.append(parts[0].multiply(parts[1]))
    return sp.hstack(parts).tocsr()


@pytest.mark.parametrize(
    "task, ngrams, floor",
    [("sst2", 1, 0.9), ("rte", 1, 0.85), ("qnli", 1, 0.85), ("mrpc", 1, 0.85),
     ("mnli", 1, 0.7), ("cola", 2, 0.7), ("stsb", 1, 0.8)],
)  # fmt: skip
def test_labels_are_learnable_by_bag_of_words(task, ngrams, floor):
    """Well above chance (0.5; mnli 1/3; stsb Pearson 0) on validation after fitting train."""
    data = glue.synthetic(task)
    text = SPECS[task].text
    vectorizer = CountVectorizer(binary=True, ngram_range=(1, ngrams), token_pattern=r"[a-z]+")
    vectorizer.fit([t for c in text for t in data["train"][c]])
    train = bag_of_words([data["train"][c] for c in text], vectorizer)
    for split in SPECS[task].eval_splits:
        x = bag_of_words([data[split][c] for c in text], vectorizer)
        y = np.array(data[split]["label"])
        if task == "stsb":
            pred = Ridge().fit(train, data["train"]["label"]).predict(x)
            score = stats.pearsonr(pred, y).statistic
        else:
            model = LogisticRegression(max_iter=1000).fit(train, data["train"]["label"])
            score = (model.predict(x) == y).mean()
        assert score > floor, (split, score)
    if task == "cola":  # the grammar is about word order: unigrams alone are near chance
        unigrams = CountVectorizer(binary=True, token_pattern=r"[a-z]+")
        x = unigrams.fit_transform(data["train"]["sentence"])
        model = LogisticRegression(max_iter=1000).fit(x, data["train"]["label"])
        score = model.score(unigrams.transform(data["validation"]["sentence"]), y)
        assert score < 0.65


def test_short_training_run_beats_chance_on_sst2(tmp_path):
    cfg = config(
        "glue/sst2",
        tmp_path,
        **{
            "task.vocab_size": 200,
            "task.max_len": 24,
            "model.d_model": 32,
            "model.num_layers": 1,
            "model.num_heads": 2,
            "model.d_ff": 64,
            "model.dropout": 0.0,
            "kernel.num_features": 16,
            "train.batch_size": 32,
            "train.max_steps": 120,
            "train.eval_every": 120,
            "train.lr": 3e-3,
            "train.warmup": 20,
        },
    )
    reports = []
    fit(cfg, lambda m, s: reports.append(m))
    assert reports[-1]["val_accuracy"] > 0.75, reports[-1]
