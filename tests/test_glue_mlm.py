"""WordPiece, WikiText-103 masked-LM pre-training, GLUE fine-tuning: all offline, on fixtures
built here in the hub's schema (``DatasetDict.save_to_disk``)."""

import logging

import datasets
import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm

from lk_study import train as train_module
from lk_study.config import Config, with_overrides
from lk_study.models.mlm import CHECKPOINT_FILE, MaskedLM, load_encoder
from lk_study.tasks import TASKS, Split, base, metrics, prepare
from lk_study.tasks.base import IGNORE
from lk_study.tasks.glue import SPECS, parse_label
from lk_study.tasks.wikitext import WikiText103MLM, mask_tokens
from lk_study.tasks.wordpiece import (
    MASK_ID,
    NUM_SPECIAL,
    PAD_ID,
    SEP_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    WordPiece,
    truncate_pair,
)
from lk_study.train import build_model, fit

WORDS = (
    "the a cat dog bird sat ran flew on under over mat park tree house small big red blue "
    "quickly slowly happy sad river mountain city people walked talked about music film good "
    "bad very really it was is were and but because"
).split()
TINY_MODEL = {
    "model.d_model": 16,
    "model.num_layers": 1,
    "model.num_heads": 2,
    "model.d_ff": 32,
    "model.dropout": 0.0,
    "kernel.num_features": 8,
    "train.batch_size": 4,
    "train.max_steps": 1,
    "train.eval_every": 1,
}


def sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = rng.choice(WORDS, size=rng.integers(4, 12))
        out.append(" ".join(words).capitalize() + rng.choice([".", "!", "?"]))
    return out


def wikitext_lines(n: int, seed: int) -> list[str]:
    """WikiText's raw layout: article headings, blank lines, paragraphs ending in a newline."""
    lines = []
    for i, s in enumerate(sentences(n, seed)):
        if i % 10 == 0:
            lines += [f" = Article {i // 10} = \n", ""]
        lines += [f" {s} \n", ""]
    return lines


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("wikitext")
    data = datasets.DatasetDict(
        {
            s: datasets.Dataset.from_dict({"text": wikitext_lines(n, seed)})
            for s, n, seed in (("train", 40, 0), ("validation", 20, 1), ("test", 10, 2))
        }
    )
    data.save_to_disk(str(root))
    return root


def glue_split(task: str, n: int, seed: int, test: bool = False) -> datasets.Dataset:
    spec = SPECS[task]
    rng = np.random.default_rng(seed)
    cols = {c: sentences(n, seed + 100 * i) for i, c in enumerate(spec.text)}
    if spec.num_labels == 1:
        label = datasets.Value("float32")
        cols["label"] = [-1.0] * n if test else list(np.round(rng.uniform(0, 5, n), 2))
    else:
        label = datasets.ClassLabel(num_classes=spec.num_labels)
        cols["label"] = [-1] * n if test else list(rng.integers(spec.num_labels, size=n))
    cols["idx"] = list(range(n))
    features = datasets.Features(
        {
            **{c: datasets.Value("string") for c in spec.text},
            "label": label,
            "idx": datasets.Value("int32"),
        }
    )
    return datasets.Dataset.from_dict(cols, features=features)


@pytest.fixture(scope="module")
def glue_root(tmp_path_factory):
    """One folder per task, as the hub lays the splits out (test splits labelled −1)."""
    root = tmp_path_factory.mktemp("glue")
    for task, spec in SPECS.items():
        splits = {"train": glue_split(task, 20, 0)}
        for i, s in enumerate(spec.eval_splits):
            splits[s] = glue_split(task, 10, 1 + i)
            splits[s.replace("validation", "test")] = glue_split(task, 5, 9, test=True)
        datasets.DatasetDict(splits).save_to_disk(str(root / task))
    return root


def mlm_config(corpus, tmp_path, **over):
    return with_overrides(
        Config(),
        {
            "task.name": "wikitext103_mlm",
            "task.source": str(corpus),
            "task.cache_dir": str(tmp_path),
            "task.vocab_size": 200,
            "task.max_len": 32,
            **TINY_MODEL,
            **over,
        },
    )


# --- WordPiece -----------------------------------------------------------------------------


def test_wordpiece_round_trip_specials_and_pairs(tmp_path):
    texts = sentences(200, 0)
    tok = WordPiece.train(texts, vocab_size=300)
    assert tok.vocab_size == 300  # filled up to exactly vocab_size with [unused*]
    assert NUM_SPECIAL < tok.num_regular <= 300
    assert [tok.tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert (PAD_ID, SEP_ID, MASK_ID) == (0, 2, 3) and base.IGNORE == IGNORE
    for text in texts[:20]:
        ids = tok.encode(text)
        assert ids.dtype == np.int32 and (ids >= NUM_SPECIAL).all()  # no [UNK], no padding id
        assert tok.decode(ids) == text.lower()  # BERT-uncased normalisation, lossless here
    path = tok.save(tmp_path / "tok" / "tokenizer.json")
    again = WordPiece.load(path)
    assert np.array_equal(again.encode(texts[0]), tok.encode(texts[0]))
    assert tok.encode("ωω жж").tolist() == [UNK_ID, UNK_ID]  # unseen characters

    a, b = tok.encode(texts[0]), tok.encode(texts[1])
    pair = tok.encode_pair(texts[0], texts[1], max_len=100)
    assert np.array_equal(pair, np.concatenate([a, [SEP_ID], b]))
    short = tok.encode_pair(texts[0], texts[1], max_len=7)
    n1, n2 = truncate_pair(len(a), len(b), 6)
    assert len(short) == 7 and short[n1] == SEP_ID
    assert np.array_equal(short, np.concatenate([a[:n1], [SEP_ID], b[:n2]]))
    assert np.array_equal(tok.encode(texts[0], max_len=3), a[:3])
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        WordPiece.load(tmp_path / "nowhere.json")
    with pytest.raises(ValueError, match="vocab_size=5 is too small"):
        WordPiece.train(texts, vocab_size=5)


def test_wordpiece_training_is_deterministic():
    """tokenizers' trainer alone gives a different vocabulary on most runs of this tie-rich
    corpus (issue 1794); ours must not, or machines preparing the same data would disagree."""
    rng = np.random.default_rng(0)
    words = [
        "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyzé"), rng.integers(2, 9)))
        for _ in range(2000)
    ]
    texts = [" ".join(rng.choice(words, size=20)) for _ in range(2000)]
    runs = {WordPiece.train(texts, 1000).tokenizer.to_str() for _ in range(3)}
    runs.add(WordPiece.train(lambda: iter(texts), 1000).tokenizer.to_str())  # re-readable
    runs.add(WordPiece.train(iter(texts), 1000).tokenizer.to_str())  # one-shot iterator
    assert len(runs) == 1
    tok = WordPiece.train(texts, 1000)
    assert tok.tokenizer.token_to_id("##a") is not None
    assert tok.encode("##a").tolist() == [UNK_ID, UNK_ID, tok.tokenizer.token_to_id("a")]


def test_longest_first_truncation_matches_one_at_a_time():
    for n1 in range(12):
        for n2 in range(12):
            for budget in range(1, 14):
                a, b = n1, n2
                while a + b > budget:  # Hugging Face's longest_first, token by token
                    if a > b:
                        a -= 1
                    else:
                        b -= 1
                assert truncate_pair(n1, n2, budget) == (a, b), (n1, n2, budget)


# --- masking -------------------------------------------------------------------------------


def test_masking_statistics_and_determinism():
    rng = np.random.default_rng(0)
    vocab = 1000
    ids = rng.integers(NUM_SPECIAL, vocab, size=(2000, 128)).astype(np.int32)
    ids[:, ::17] = SEP_ID  # specials are never chosen
    ids[::5, 100:] = PAD_ID
    inputs, labels = mask_tokens(ids, np.random.default_rng(1), 0.15, vocab)
    eligible = (ids != PAD_ID) & (ids != SEP_ID)
    chosen = labels != IGNORE
    assert not (chosen & ~eligible).any()
    assert abs(chosen.sum() / eligible.sum() - 0.15) < 0.003
    assert np.array_equal(labels[chosen], ids[chosen])
    assert np.array_equal(inputs[~chosen], ids[~chosen])
    to_mask = (inputs == MASK_ID)[chosen].mean()
    unchanged = (inputs == ids)[chosen].mean()
    replaced = ((inputs != ids) & (inputs != MASK_ID))[chosen].mean()
    assert abs(to_mask - 0.8) < 0.01 and abs(unchanged - 0.1) < 0.01
    assert abs(replaced - 0.1) < 0.01
    assert inputs[chosen & (inputs != ids) & (inputs != MASK_ID)].min() >= NUM_SPECIAL
    assert inputs.max() < vocab
    same = mask_tokens(ids, np.random.default_rng(1), 0.15, vocab)
    assert np.array_equal(same[0], inputs) and np.array_equal(same[1], labels)
    other = mask_tokens(ids, np.random.default_rng(2), 0.15, vocab)
    assert not np.array_equal(other[1], labels)


# --- WikiText-103 masked LM ----------------------------------------------------------------


def test_wikitext_prepare_packs_and_masks(corpus, tmp_path):
    cfg = mlm_config(corpus, tmp_path, **{"task.max_len": 16, "task.dupe_factor": 2}).task
    task = TASKS["wikitext103_mlm"]
    paths = prepare(cfg)
    tok = WordPiece.load(task.tokenizer_path(cfg))
    assert tok.vocab_size == task.vocab_size(cfg) == 200
    train = Split(paths["train"])
    b = train.batch(np.arange(len(train)))
    ids, label = b["ids"].numpy(), b["label"].numpy()
    assert ids.shape[1] == 16 and label.shape == ids.shape
    original = np.where(label != IGNORE, label, ids)
    half = len(train) // 2  # dupe_factor 2: the same sequences, masked twice, independently
    assert np.array_equal(original[:half], original[half:])
    assert not np.array_equal(label[:half], label[half:])
    # the unmasked stream is the corpus: lines tokenized in order, [SEP] between articles
    lines = [t for t in wikitext_lines(40, 0) if t.strip()]
    expected = []
    for line in lines:
        if line.startswith(" = ") and expected:
            expected.append(SEP_ID)
        expected.extend(tok.encode(line).tolist())
    stream = original[:half].ravel()
    assert stream[stream != PAD_ID].tolist() == expected
    eligible = (original != PAD_ID) & (original != SEP_ID)
    assert 0.08 < (label != IGNORE).sum() / eligible.sum() < 0.22
    assert len(Split(paths["validation"])) > 0


def test_mlm_fit_checkpoint_loads_into_glue(corpus, glue_root, tmp_path, capsys):
    cfg = mlm_config(corpus, tmp_path)
    reports = []
    fit(cfg, lambda m, s: reports.append((m, s)))
    metrics_, snapshot = reports[-1]
    assert {"val_loss", "val_accuracy", "train_loss"} <= set(metrics_)
    assert np.isfinite(metrics_["val_loss"]) and 0.0 <= metrics_["val_accuracy"] <= 1.0
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save(snapshot, ckpt / CHECKPOINT_FILE)  # what train_loop_per_worker's report does
    assert CHECKPOINT_FILE == train_module.CHECKPOINT_FILE

    tokenizer = TASKS["wikitext103_mlm"].tokenizer_path(cfg.task)
    glue = with_overrides(
        cfg,
        {
            "task.name": "glue/rte",
            "task.source": str(glue_root),
            "task.tokenizer": str(tokenizer),
            "task.max_len": 32,
        },
    )
    model = build_model(glue)
    loaded = load_encoder(model, ckpt)  # a checkpoint directory, or the file itself
    assert "embed.weight" in loaded and not any(k.startswith("head") for k in loaded)
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, snapshot["model"][f"encoder.{key}"]), key
    assert load_encoder(model, ckpt / CHECKPOINT_FILE) == loaded

    wider = with_overrides(glue, {"model.d_ff": 48})
    with pytest.raises(ValueError, match=r"shape.*ffn"):
        load_encoder(build_model(wider), ckpt)
    deeper = with_overrides(glue, {"model.num_layers": 2})
    with pytest.raises(ValueError, match=r"missing from the checkpoint: layers\.1\."):
        load_encoder(build_model(deeper), ckpt)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_encoder(model, tmp_path / "absent")

    reports.clear()  # fine-tuning from the MLM encoder (model.init_from) through the loop
    fit(with_overrides(glue, {"model.init_from": str(ckpt)}), lambda m, s: reports.append(m))
    assert "val_accuracy" in reports[-1]
    assert f"Loaded {len(loaded)} encoder tensors from {ckpt}" in capsys.readouterr().out


@pytest.mark.parametrize("d_model", [32, 512])
def test_masked_lm_starts_near_chance_loss(d_model):
    """Tied decoder rescaled by 1/sqrt(D): the loss at init is about ln V at any width
    (without it: 19 nats at D = 32 and 73 at D = 512, for ln V = 6.9)."""
    torch.manual_seed(0)
    cfg = with_overrides(
        Config(),
        {
            "task.name": "wikitext103_mlm",
            **TINY_MODEL,
            "model.d_model": d_model,
            "model.num_heads": 8,
            "task.vocab_size": 1000,
            "task.max_len": 16,
        },
    )
    model = build_model(cfg)
    ids = torch.randint(NUM_SPECIAL, 1000, (8, 16))
    label = torch.randint(NUM_SPECIAL, 1000, (8, 16))
    loss = model.loss(model({"ids": ids, "label": label}), label).item()
    assert abs(loss - np.log(1000)) < 1.0, loss


def test_masked_lm_head_interface():
    torch.manual_seed(0)
    cfg = with_overrides(Config(), {"task.name": "wikitext103_mlm", **TINY_MODEL})
    cfg = with_overrides(cfg, {"task.vocab_size": 50, "task.max_len": 8})
    model = build_model(cfg)
    assert isinstance(model, MaskedLM)
    head = {n for n, _ in model.named_parameters() if not n.startswith("encoder.")}
    assert head == {"bias", *(f"transform.{i}.{w}" for i in (0, 2) for w in ("weight", "bias"))}
    ids = torch.randint(NUM_SPECIAL, 50, (3, 8))
    label = torch.full((3, 8), IGNORE)
    label[0, 2], label[2, 5], label[2, 7] = 7, 9, 11
    assert model({"ids": ids}).shape == (3, 8, 50)
    out = model({"ids": ids, "label": label})
    assert out.shape == (3, 50)
    full = model({"ids": ids})
    assert torch.allclose(out, full[label != IGNORE], atol=1e-5)
    loss = model.loss(out, label)
    scores = model.scores(out)
    s, n = model.eval_loss(scores.double(), label)
    assert n == 3 and s / n == pytest.approx(loss.item(), rel=1e-5)
    pred, ref = model.predict(scores, label)
    assert ref.tolist() == [7, 9, 11] and pred.shape == (3,)
    loss.backward()  # tied decoder: the embedding gets the decoder's gradient
    assert model.encoder.embed.weight.grad[7].abs().sum() > 0
    none = torch.full((3, 8), IGNORE)
    assert model.loss(model({"ids": ids, "label": none}), none).item() == 0.0


# --- GLUE ----------------------------------------------------------------------------------

EXPECTED = {
    "cola": {"val_mcc"},
    "sst2": {"val_accuracy"},
    "mrpc": {"val_accuracy", "val_f1"},
    "qqp": {"val_accuracy", "val_f1"},
    "stsb": {"val_pearson", "val_spearman"},
    "mnli": {"val_matched_accuracy", "val_mismatched_accuracy"},
    "qnli": {"val_accuracy"},
    "rte": {"val_accuracy"},
    "wnli": {"val_accuracy"},
}


@pytest.mark.parametrize("task", list(SPECS))
def test_glue_task_builds_and_trains_one_step(task, glue_root, tmp_path):
    cfg = with_overrides(
        Config(),
        {
            "task.name": f"glue/{task}",
            "task.source": str(glue_root),
            "task.cache_dir": str(tmp_path),
            "task.vocab_size": 120,
            "task.max_len": 24,
            **TINY_MODEL,
        },
    )
    entry = TASKS[f"glue/{task}"]
    assert entry.Config().name == f"glue/{task}"
    paths = prepare(cfg.task)
    assert set(paths) == set(entry.splits) and not any("test" in s for s in paths)
    train = Split(paths["train"], max_len=24)
    assert len(train) == 20
    b = train.batch(np.arange(20))
    assert b["ids"].shape[1] <= 24 and int(b["ids"].max()) < 120
    if len(SPECS[task].text) == 2:
        assert ((b["ids"] == SEP_ID).sum(1) == 1).all()  # s1 [SEP] s2
    assert b["label"].dtype == (torch.float64 if task == "stsb" else torch.int64)
    reports = []
    fit(cfg, lambda m, s: reports.append(m))
    assert EXPECTED[task] <= set(reports[-1]), sorted(reports[-1])
    assert all(np.isfinite(reports[-1][k]) for k in EXPECTED[task])


def test_glue_metrics_equal_sklearn_scipy_and_hand_values():
    pred = np.array([1, 1, 0, 0, 1, 0])
    ref = np.array([1, 0, 0, 0, 1, 1])  # TP 2, FP 1, TN 2, FN 1
    cola = TASKS["glue/cola"].metrics(pred, ref)
    assert cola == {"mcc": pytest.approx((2 * 2 - 1 * 1) / 9)}  # (TP·TN − FP·FN)/√(3·3·3·3)
    assert cola["mcc"] == pytest.approx(skm.matthews_corrcoef(ref, pred))
    mrpc = TASKS["glue/mrpc"].metrics(pred, ref)
    assert mrpc == {"accuracy": pytest.approx(4 / 6), "f1": pytest.approx(2 / 3)}
    assert mrpc["f1"] == pytest.approx(skm.f1_score(ref, pred))
    assert TASKS["glue/qqp"].metrics(pred, ref) == mrpc
    mnli = TASKS["glue/mnli"].metrics(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]))
    assert mnli == {"accuracy": 0.75}
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 4.0, 9.0, 16.0])
    stsb = TASKS["glue/stsb"].metrics(x, y)
    assert stsb["spearman"] == pytest.approx(1.0)
    assert stsb["pearson"] == pytest.approx(25 / np.sqrt(5 * 129))  # Σdxdy / √(Σdx² Σdy²)
    assert stsb["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic)
    z = np.array([1.0, 3.0, 2.0, 5.0])
    assert TASKS["glue/stsb"].metrics(x, z)["spearman"] == pytest.approx(
        stats.spearmanr(x, z).statistic
    )
    for task in ("sst2", "qnli", "rte", "wnli"):
        assert TASKS[f"glue/{task}"].metrics(pred, ref) == metrics.accuracy(pred, ref)


def write_bad_cola(path, rows):
    sentence, label = zip(*rows, strict=True)
    data = {"sentence": list(sentence), "label": list(label)}
    good = {"sentence": sentences(6, 5), "label": ["0", "1"] * 3}
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(data), "validation": datasets.Dataset.from_dict(good)}
    ).save_to_disk(str(path))


def test_glue_malformed_rows_error_or_skip(tmp_path, caplog):
    ok = sentences(4, 3)
    cases = [
        ((2, (" ", "1")), r"split 'train', row 2: empty text in column 'sentence'"),
        ((1, (None, "0")), r"split 'train', row 1: empty text"),
        ((3, (ok[0], "x")), r"split 'train', row 3: label 'x' is not a number"),
        ((0, (ok[0], "5")), r"split 'train', row 0: label 5 is outside 0..1"),
        ((2, (ok[0], "0.5")), r"row 2: label 0.5 is not an integer class"),
    ]
    for i, ((row, bad), message) in enumerate(cases):
        rows = [(s, str(j % 2)) for j, s in enumerate(ok)]
        rows[row] = bad
        src = tmp_path / f"bad{i}"
        write_bad_cola(src, rows)
        cfg = TASKS["glue/cola"].Config(source=str(src), cache_dir=str(tmp_path), vocab_size=60)
        with pytest.raises(ValueError, match=message) as err:
            prepare(cfg)
        assert str(src) in str(err.value) and "on_bad_rows: skip" in str(err.value)

    rows = [(s, str(j % 2)) for j, s in enumerate(sentences(10, 4))]
    rows[1], rows[4], rows[7] = ("", "1"), (rows[4][0], "-1"), (rows[7][0], "one")
    write_bad_cola(tmp_path / "skip", rows)
    cfg = TASKS["glue/cola"].Config(
        source=str(tmp_path / "skip"), cache_dir=str(tmp_path), vocab_size=60, on_bad_rows="skip"
    )
    with caplog.at_level(logging.WARNING):
        paths = prepare(cfg)
    assert len(Split(paths["train"])) == 7
    assert "skipped 3 malformed row(s)" in caplog.text and "row 1: empty text" in caplog.text

    missing = tmp_path / "no" / "such" / "glue"
    cfg = TASKS["glue/sst2"].Config(source=str(missing), cache_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(missing / "sst2" / "dataset_dict.json")):
        prepare(cfg)


def test_parse_label_and_wikitext_bad_rows(tmp_path, caplog):
    assert parse_label(3.2, 1) == (3.2, "") and parse_label("2", 3) == (2, "")
    assert parse_label(5.5, 1)[1] == "score 5.5 is outside [0, 5]"
    assert parse_label(float("nan"), 1)[0] is None and parse_label(True, 2)[0] is None
    lines = wikitext_lines(12, 0)
    lines[5] = None
    src = tmp_path / "wt"
    datasets.DatasetDict(
        {s: datasets.Dataset.from_dict({"text": lines}) for s in ("train", "validation")}
    ).save_to_disk(str(src))
    cfg = WikiText103MLM.Config(source=str(src), cache_dir=str(tmp_path), vocab_size=120)
    with pytest.raises(ValueError, match=r"split 'train', row 5: text is null"):
        prepare(cfg)
    skip = WikiText103MLM.Config(
        source=str(src), cache_dir=str(tmp_path), vocab_size=120, on_bad_rows="skip"
    )
    with caplog.at_level(logging.WARNING):
        prepare(skip)
    assert (
        "skipped 1 malformed row(s) (task.on_bad_rows: skip), first: row 5: text is null"
        in caplog.text
    )
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent" / "dataset_dict.json")):
        prepare(WikiText103MLM.Config(source=str(tmp_path / "absent"), cache_dir=str(tmp_path)))
