"""A grid crossed with Optuna, and where the Optuna studies live.

A study file with ``searcher: optuna`` and ``{grid: [...]}`` dimensions (or ``seeds:`` /
``variants:``) runs, at every grid point (``Study.points()``: grid lists x variants x seeds),
its own Optuna TPE study over the remaining dimensions (``Study.optuna_space(point)``) for
``Study.trials_at(point)`` trials; ``GridOptunaSearch`` is that one Tune searcher over all of
them. A study without grid points has one point, ``{}``, and so one TPE study.

    trial config = {**point, **its TPE study's suggestion}  # flat dotted keys, e.g. train.lr

Trials go out round robin (the point with the fewest trials so far next), so every point has
results early and each TPE study has seen its earlier trials end before it is asked again.
``optuna_searcher(study)`` builds it: per point an ``OptunaSearch`` over ``DefineByRun`` (the
point's space as ``trial.suggest_*`` calls) with ``tpe_sampler``.

After a driver kill, ``Tuner.restore`` brings back the searcher as it was at Tune's last
experiment checkpoint; ``GridOptunaSearch.restore`` reconciles an Optuna storage that went on
past it (``reconcile``), and so does a new searcher's first ``suggest`` (a run killed before
Tune's first checkpoint starts afresh on the same storage). ``ResumableASHA`` is ASHA that
never stops a trial on the rows a restarted trial replays (``REPLAYED``, see
``lk_study.tune.restart_history``).
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from lk_study.study import SQLITE, storage_url

if TYPE_CHECKING:
    from lk_study.study import Param, Study

MAX_STUDY_NAME = 512  # Optuna's RDB column
REPLAYED = "replayed"  # marks a report a restarted trial gives Tune again from its checkpoint


class GridOptunaSearch(Searcher):
    """One searcher per grid point, ``num_samples[i]`` trials from ``searchers[i]`` (in
    practice an ``OptunaSearch`` with its own TPE study), each trial's config the point's
    values plus the searcher's suggestion. ``FINISHED`` once every point has its trials.

    Results and completions go to the searcher that suggested the trial. ``save`` pickles the
    whole state (the sub-searchers with their Optuna studies, the counts, which trial belongs
    to which point), so ``Tuner.restore`` carries on where the study stopped."""

    def __init__(
        self,
        points: Sequence[dict[str, Any]],
        searchers: Sequence[Searcher],
        num_samples: Sequence[int],
        metric: str,
        mode: str,
    ) -> None:
        if not len(points) == len(searchers) == len(num_samples):
            raise ValueError(
                f"{len(points)} points, {len(searchers)} searchers and {len(num_samples)} "
                "sample counts: give one of each per grid point"
            )
        super().__init__(metric=metric, mode=mode)
        self.points = [dict(p) for p in points]
        self.searchers = list(searchers)
        self.num_samples = list(num_samples)
        self.suggested = [0] * len(points)  # trials handed out, per point
        self.owner: dict[str, int] = {}  # trial_id -> point index
        self.reconciled = False  # with the Optuna storage (``reconcile``), before suggesting

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if not getattr(self, "reconciled", True):  # a new study on a storage a killed run left
            self.reconcile()
        open_points = [i for i, n in enumerate(self.num_samples) if self.suggested[i] < n]
        if not open_points:
            return Searcher.FINISHED
        i = min(open_points, key=lambda j: (self.suggested[j], j))
        params = self.searchers[i].suggest(trial_id)
        if params is None:  # that searcher waits for results
            return None
        if params == Searcher.FINISHED:  # it has nothing more: the point is done
            self.num_samples[i] = self.suggested[i]
            return self.suggest(trial_id)
        self.suggested[i] += 1
        self.owner[trial_id] = i
        return {**self.points[i], **params}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.owner:
            self.searchers[self.owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id in self.owner:
            self.searchers[self.owner[trial_id]].on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        self.reconcile()

    def reconcile(self) -> list[int]:
        """After a restore: each persistent Optuna study (RDB) may hold trials asked after the
        checkpoint this searcher came from (the driver was killed in between). No restored
        Tune trial owns them, so they would stay RUNNING forever: mark them FAIL. Trials that
        a restored Tune trial owns stay RUNNING and get their value when it ends. Where
        there were such trials, the sampler's random state (rewound to the checkpoint) is
        moved on, so their parameters are not suggested again. Returns the FAILed trial
        numbers."""
        self.reconciled, failed = True, []
        for searcher in self.searchers:
            study = getattr(searcher, "_ot_study", None)
            if study is None or isinstance(study._storage, optuna.storages.InMemoryStorage):
                continue  # in memory: the pickled study is the whole truth
            done = getattr(searcher, "_completed_trials", set())
            owned = {
                t._trial_id for tid, t in getattr(searcher, "_ot_trials", {}).items()
                if tid not in done
            }  # fmt: skip
            running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            orphans = [t for t in running if t._trial_id not in owned]
            for t in orphans:
                study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
                failed.append(t.number)
            if orphans:
                _move_on(study.sampler, len(study.get_trials(deepcopy=False)))
        if failed:
            warnings.warn(
                f"Optuna trials {failed} were asked after the last searcher checkpoint and no "
                "restored trial runs them: marked FAIL",
                stacklevel=2,
            )
        return failed


def _move_on(sampler: optuna.samplers.BaseSampler, n_trials: int) -> None:
    """Reseed ``sampler`` (TPE and its random start-up sampler) from its own state and the
    study's trial count: deterministic, and not the sequence it already handed out."""
    for s in (sampler, getattr(sampler, "_random_sampler", None)):
        rng = getattr(getattr(s, "_rng", None), "rng", None)
        if rng is None:
            if s is sampler:
                sampler.reseed_rng()
            continue
        rng.seed((int(rng.randint(2**31 - 1)) + 7919 * n_trials) % 2**32)


class ResumableASHA(ASHAScheduler):
    """ASHA that never stops a trial on a ``REPLAYED`` row. A trial restarted after a driver
    kill gives Tune its earlier rows again; it went on past each of them before the kill, so
    ASHA had decided CONTINUE there. The rows still enter the rungs (Tune does not save
    ASHA's rungs, so this rebuilds them), but a stop computed against the rungs' smaller,
    reordered population after a restore would be a decision the uninterrupted study never
    made. The trial's next new row is judged as usual."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if result.get(REPLAYED) and action == TrialScheduler.STOP:
            self._num_stopped -= 1
            return TrialScheduler.CONTINUE
        return action


def study_names(name: str, points: Sequence[dict[str, Any]]) -> list[str]:
    """The Optuna study name of each grid point: the study's name, then for a real grid the
    point's index and values (what optuna-dashboard lists)."""
    if list(points) == [{}]:
        return [name]
    return [
        f"{name} [{i}] {' '.join(f'{k}={v}' for k, v in pt.items())}"[:MAX_STUDY_NAME]
        for i, pt in enumerate(points)
    ]


def optuna_storage(url: str) -> optuna.storages.RDBStorage | None:
    """The Optuna storage at ``url`` (None: in memory); an SQLite file's folder is created."""
    if not url:
        return None
    url = storage_url(url)
    path = url.removeprefix(SQLITE).partition("?")[0]
    if url.startswith(SQLITE) and path.startswith("/"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(url)


class DefineByRun:
    """The Optuna define-by-run space: only ``trial.suggest_*`` calls, conditionals honoured.
    A class, not a closure, so Tune can pickle the searcher into its experiment checkpoint."""

    def __init__(self, search: dict[str, Param]) -> None:
        self.search = search

    def __call__(self, trial: optuna.Trial) -> None:
        sampled: dict[str, Any] = {}
        for key, p in self.search.items():
            if not p.active(sampled):
                continue
            if p.kind == "choice":
                sampled[key] = trial.suggest_categorical(key, list(p.values))
            elif p.kind == "int":
                sampled[key] = trial.suggest_int(key, *p.values)
            else:
                sampled[key] = trial.suggest_float(key, *p.values, log=p.kind == "loguniform")


def tpe_sampler(seed: int) -> optuna.samplers.TPESampler:
    """Multivariate TPE that models conditional parameters jointly (Optuna 5's default
    samples them independently); ``group`` is marked experimental, which we accept."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)


def optuna_searcher(study: Study) -> GridOptunaSearch:
    """searcher: optuna -- at every grid point (``study.points()``; one, ``{}``, without
    grid lists, variants or seeds) its own TPE study (seed ``study.seed + i``) over the
    dimensions left there, in ``study.optuna.storage`` when set."""
    points = study.points()
    storage = optuna_storage(study.optuna.storage)  # one connection pool for all points
    names = study_names(study.name, points)
    obj = study.objective
    # a Pareto search: Optuna's multi-objective TPE over every objective. Optuna is told each
    # trial's LAST reported value(s) (Tune's final result), as the results table shows them
    metric = [o.metric for o in study.objectives] if study.also else obj.metric
    mode = [o.mode for o in study.objectives] if study.also else obj.mode
    searchers = [
        OptunaSearch(
            DefineByRun(study.optuna_space(point)),
            metric=metric,
            mode=mode,
            sampler=tpe_sampler(study.seed + i),
            study_name=names[i],
            storage=storage,
        )
        for i, point in enumerate(points)
    ]
    trials = [study.trials_at(point) for point in points]
    return GridOptunaSearch(points, searchers, trials, obj.metric, obj.mode)
