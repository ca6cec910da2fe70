"""A grid crossed with Optuna (GridOptunaSearch) and Optuna studies in SQLite: the searcher
driven by hand, then under a real Tune run that is interrupted and restored."""

import math
import os
import pickle
import signal
import sys
from collections import Counter

import optuna
import pytest
import ray
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher

from lk_study import analysis
from lk_study.searchers import optuna_searcher, study_names
from lk_study.study import storage_url, study_from_dict, study_record

SPACE = {
    "kernel.name": {"grid": ["softmax", "prf"]},
    "kernel.num_features": {"int": [8, 64], "when": {"kernel.name": ["prf"]}},
    "train.lr": {"loguniform": [1.0e-4, 1.0e-2]},
}


def make_study(num_samples=3, seeds=(0, 1), **extra):
    return study_from_dict(
        {
            "name": "gx",
            "seeds": list(seeds),
            "search": SPACE,
            "budget": {"num_samples": num_samples},
            **extra,
        }
    )


def score(config):
    """A cheap objective with its optimum at lr = 1e-3, better for prf and more features."""
    lr = config["train.lr"]
    return -abs(math.log10(lr) + 3) + config.get("kernel.num_features", 0) / 100


def point_of(config):
    return config["kernel.name"], config["train.seed"]


def test_every_grid_point_gets_its_own_optuna_trials_and_save_restore_continues(tmp_path):
    study = make_study()
    assert study.num_trials() == 4 * 3  # (softmax, prf) x seeds (0, 1), 3 TPE trials each
    searcher = optuna_searcher(study)
    configs = {}
    for i in range(7):  # stop part-way
        configs[f"t{i}"] = searcher.suggest(f"t{i}")
        searcher.on_trial_result(f"t{i}", {"val_accuracy": 0.0, "training_iteration": 1})
        searcher.on_trial_complete(f"t{i}", {"val_accuracy": score(configs[f"t{i}"])})
    ckpt = tmp_path / "searcher.pkl"
    searcher.save(str(ckpt))
    restored = optuna_searcher(study)  # as Tuner.restore does: a fresh one, then restore
    restored.restore(str(ckpt))
    # the sub-searchers' Optuna studies and RNGs came back: the same next suggestion
    configs["t7"] = restored.suggest("t7")
    assert configs["t7"] == searcher.suggest("t7")
    restored.on_trial_complete("t7", {"val_accuracy": score(configs["t7"])})
    for i in range(8, 12):
        configs[f"t{i}"] = restored.suggest(f"t{i}")
        restored.on_trial_complete(f"t{i}", {"val_accuracy": score(configs[f"t{i}"])})
    assert restored.suggest("t12") == Searcher.FINISHED
    counts = Counter(point_of(c) for c in configs.values())
    assert counts == {(k, s): 3 for k in ("softmax", "prf") for s in (0, 1)}
    for c in configs.values():
        assert 1e-4 <= c["train.lr"] <= 1e-2
        if c["kernel.name"] == "prf":  # the condition on the grid key, honoured per point
            assert isinstance(c["kernel.num_features"], int)
            assert 8 <= c["kernel.num_features"] <= 64
        else:
            assert "kernel.num_features" not in c
    # each point's Optuna study saw exactly its own trials
    for i, sub in enumerate(restored.searchers):
        done = sub._ot_study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
        assert len(done) == 3
        assert {point_of({**restored.points[i], **t.params}) for t in done} == {
            point_of(restored.points[i])
        }
    pickle.loads(pickle.dumps(restored))  # Tune pickles the searcher into tuner.pkl


def test_points_where_optuna_has_nothing_to_search_run_once():
    study = study_from_dict(
        {
            "name": "once",
            "search": {k: v for k, v in SPACE.items() if k != "train.lr"},
            "budget": {"num_samples": 4},
        }
    )
    searcher = optuna_searcher(study)
    configs = []
    while (c := searcher.suggest(f"t{len(configs)}")) != Searcher.FINISHED:
        configs.append(c)
    assert study.num_trials() == len(configs) == 1 + 4
    assert sum(c == {"kernel.name": "softmax"} for c in configs) == 1


# ---------------------------------------------------------------------------- real Tune runs


@pytest.fixture(scope="module")
def local_ray():
    # Tune's workers cannot import this test module: ship its functions by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, address="local", include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def objective(config):
    tune.report({"val_accuracy": score(config), "step": 1})


class InterruptAfter(tune.Callback):
    """Interrupts the run once ``trials`` trials have ended, as Ctrl+C does (Tune saves its
    state and returns), unless ``release`` exists."""

    def __init__(self, trials, release):
        self.trials, self.release, self.done = trials, release, 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        if self.done >= self.trials and not self.release.exists():
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's handler, as for SIGINT


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_tune_runs_the_grid_with_optuna_and_restore_finishes_it(local_ray, tmp_path, storage):
    db = f"sqlite:///{tmp_path}/dbs/optuna.db"
    study = make_study(seeds=[0], **({"optuna": {"storage": db}} if storage == "sqlite" else {}))
    assert study.num_trials() == 2 * 3
    exp = tmp_path / study.name
    analysis.write_json(str(exp), analysis.STUDY_FILE, study_record(study))
    release = tmp_path / "release"
    tuner = tune.Tuner(
        objective,
        tune_config=tune.TuneConfig(
            metric="val_accuracy",
            mode="max",
            search_alg=ConcurrencyLimiter(optuna_searcher(study), max_concurrent=1),
            num_samples=study.num_trials(),
        ),
        run_config=tune.RunConfig(
            name=study.name,
            storage_path=str(tmp_path),
            callbacks=[InterruptAfter(2, release)],
            verbose=0,
        ),
    )
    first = tuner.fit()
    assert 2 <= len(first) < study.num_trials()  # interrupted
    release.touch()
    assert tune.Tuner.can_restore(str(exp))
    grid = tune.Tuner.restore(str(exp), objective, resume_unfinished=True).fit()
    assert len(grid) == study.num_trials() and not grid.errors
    # the restored run carried on with the saved searcher, not a fresh one from tuner.pkl
    saved = optuna_searcher(study)
    saved.restore_from_dir(str(exp))
    assert saved.suggested == [3, 3] and len(saved.owner) == 6
    assert saved.suggest("next") == Searcher.FINISHED

    trials = analysis.load_study(exp).trials  # the results table: plain dotted config names
    assert {"kernel.name", "kernel.num_features", "train.lr", "train.seed"} <= set(trials)
    assert Counter(trials["kernel.name"]) == {"softmax": 3, "prf": 3}
    assert (
        trials["val_accuracy"] == [score(r.dropna().to_dict()) for _, r in trials.iterrows()]
    ).all()
    assert trials.loc[trials["kernel.name"] == "softmax", "kernel.num_features"].isna().all()

    if storage == "sqlite":  # optuna-dashboard's view: one Optuna study per grid point
        assert study_record(study)["optuna"] == {"storage": db}
        names = study_names(study.name, study.points())
        assert names == [
            "gx [0] kernel.name=softmax train.seed=0",
            "gx [1] kernel.name=prf train.seed=0",
        ]
        for name, kernel in zip(names, ("softmax", "prf"), strict=True):
            ot = optuna.load_study(study_name=name, storage=db)
            done = ot.get_trials(states=[optuna.trial.TrialState.COMPLETE])
            assert len(done) == 3
            for t in done:
                config = {"kernel.name": kernel, **t.params}
                assert t.value == pytest.approx(score(config))
            assert (
                ot.best_value == trials.loc[trials["kernel.name"] == kernel, "val_accuracy"].max()
            )


def test_relative_sqlite_path_is_taken_from_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage_url("sqlite:///runs/optuna.db") == f"sqlite:///{tmp_path}/runs/optuna.db"
    assert storage_url(f"sqlite:///{tmp_path}/a.db") == f"sqlite:///{tmp_path}/a.db"
    assert storage_url("postgresql://host/db") == "postgresql://host/db"
    study = make_study(optuna={"storage": "sqlite:///runs/optuna.db"})
    assert study_record(study)["optuna"] == {"storage": f"sqlite:///{tmp_path}/runs/optuna.db"}
    assert "optuna" not in study_record(make_study())  # older study folders still match
    optuna_searcher(study)
    assert (tmp_path / "runs" / "optuna.db").is_file()
