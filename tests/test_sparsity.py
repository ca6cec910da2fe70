"""The sparsity task: shape, determinism, label semantics, Parquet round trip, and the
bag-of-bits baseline's closed form against the generator."""

import numpy as np
import pytest

from lk_study.tasks import Split, prepare
from lk_study.tasks.sparsity import SparsityConfig, bag_of_bits_accuracy, generate, label_of

T = 4


def test_shape_split_and_determinism(tmp_path):
    cfg = SparsityConfig(size=500, seq_len=200, num_signal=5, num_types=T, cache_dir=str(tmp_path))
    paths = prepare(cfg)
    train = Split(paths["train"])
    ids, labels = train.batch(np.arange(len(train)))["ids"].numpy(), train.label
    vids = Split(paths["validation"]).batch(np.arange(100))["ids"].numpy()
    assert ids.shape == (400, 200) and vids.shape == (100, 200)  # 80/20, length 200
    a, la = generate(500, 0, seq_len=200, num_signal=5, num_types=T)
    assert np.array_equal(a[:400], ids) and np.array_equal(la[:400], labels)
    assert 0.35 < labels.mean() < 0.65
    assert np.array_equal(label_of(ids, T), labels)
    # exactly k tokens of the query type
    content_type = (ids[:, 1:] - 1 - T) // 2
    assert ((content_type == (ids[:, :1] - 1)).sum(1) == 5).all()


def test_label_ignores_noise_and_follows_signal():
    ids, labels = generate(300, 3, seq_len=50, num_signal=7, num_types=T)
    query = ids[:, 0] - 1
    types = (ids[:, 1:] - 1 - T) // 2
    rng = np.random.default_rng(0)
    noisy = ids.copy()
    for i in range(len(ids)):  # re-randomise every noise token (type != query, any bit)
        noise = np.flatnonzero(types[i] != query[i]) + 1
        new_t = (query[i] + rng.integers(1, T, size=len(noise))) % T
        noisy[i, noise] = 1 + T + 2 * new_t + rng.integers(2, size=len(noise))
    assert np.array_equal(label_of(noisy, T), labels)
    flipped = ids.copy()
    signal = types == query[:, None]
    bits = (ids[:, 1:] - 1 - T) % 2
    flipped[:, 1:] = np.where(signal, 1 + T + 2 * types + (1 - bits), ids[:, 1:])
    assert np.array_equal(label_of(flipped, T), 1 - labels)


def test_bad_parameters():
    with pytest.raises(ValueError, match="num_signal must be odd"):
        generate(10, 0, seq_len=20, num_signal=4, num_types=T)
    with pytest.raises(ValueError, match="num_types must be >= 2"):
        generate(10, 0, seq_len=20, num_signal=3, num_types=1)


@pytest.mark.parametrize("k", [3, 7, 15, 31])
def test_bag_of_bits_accuracy_matches_the_generator(k):
    """The closed form against the generator's own data: the best rule from the count of
    1-bits (a majority vote over every content token, by symmetry) on 200,000 sequences."""
    ids, labels = generate(200_000, 1, seq_len=64, num_signal=k, num_types=4)
    ones = ((ids[:, 1:] - 1 - 4) % 2).sum(1)
    empirical = ((2 * ones > 63) == labels).mean()
    assert bag_of_bits_accuracy(64, k) == pytest.approx(empirical, abs=0.004)
    assert 0.5 < bag_of_bits_accuracy(64, k) < 0.8
    assert bag_of_bits_accuracy(8, 7) == 1.0  # no noise tokens: the count is the label
