"""The study's console: what a researcher watches while a study runs.

``Progress`` is a Tune callback that replaces Tune's own output (``RunConfig(verbose=0)``):
a line when a trial starts, a status table of the running trials every ``every`` seconds
(trial, kernel, M, the searched keys, step, the objective), and one line per finished trial
(its reason when it failed). Lines are flushed at once, so they stream under
``ray job submit``. Ray's and Ray Train's own logs go to files (``lk_study.tune.ensure_ray``
with ``log_to_driver=False``; copied to ``STUDY/logs`` when the study ends); ``lk-study tune
--verbose`` brings Tune's output and the workers' logs back instead.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from ray import tune

from lk_study.storage import error_reason

if TYPE_CHECKING:
    from lk_study.study import Study

SHORT = {"kernel.name": "kernel", "kernel.num_features": "M"}  # column names on the console


def _value(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return "-" if value is None else str(value)


class Progress(tune.Callback):
    """Prints the study's progress (see the module docstring) to ``out``."""

    def __init__(self, study: Study, every: float = 30.0, out: TextIO | None = None) -> None:
        self.metric, self.mode = study.objective.metric, study.objective.mode
        self.base = {"kernel.name": study.config.kernel.name}
        self.base["kernel.num_features"] = study.config.kernel.num_features
        searched = [k for k in study.search if k not in SHORT]
        for variant in study.variants:
            searched += [k for k in variant if k not in SHORT and k not in searched]
        self.keys = ["kernel.name", "kernel.num_features", *searched]
        self.every, self.out = every, out
        self.total = study.num_trials()
        self.t0 = self.last_table = time.monotonic()
        self.latest: dict[str, dict] = {}  # trial_id -> its newest row
        self.started: dict[str, float] = {}
        self.done = 0

    def _print(self, text: str) -> None:
        print(text, file=self.out or sys.stdout, flush=True)

    def _params(self, trial) -> dict[str, Any]:
        config = dict(trial.config or {})
        config = config.get("point", config)
        params = {k: config.get(k, self.base.get(k)) for k in self.keys}
        if params["kernel.name"] == "softmax":  # no random features
            params["kernel.num_features"] = None
        return params

    def _describe(self, trial) -> str:
        params = self._params(trial)
        return " ".join(
            f"{SHORT.get(k, k)}={_value(v)}" for k, v in params.items() if v is not None
        )

    def _elapsed(self) -> str:
        s = int(time.monotonic() - self.t0)
        return f"{s // 60}m{s % 60:02d}s"

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self.started[trial.trial_id] = time.monotonic()
        self._print(f"[{self._elapsed()}] start  {trial.trial_id}  {self._describe(trial)}")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self.latest[trial.trial_id] = result
        if time.monotonic() - self.last_table >= self.every:
            self.table(trials)

    def table(self, trials: list) -> None:
        """The running trials, one row each, and the counts."""
        self.last_table = time.monotonic()
        running = [t for t in trials if t.status == "RUNNING"]
        self._print(
            f"[{self._elapsed()}] {self.done}/{self.total} trials finished, {len(running)} "
            f"running{self._best()}"
        )
        head = ["trial", *[SHORT.get(k, k) for k in self.keys], "step", self.metric]
        rows = []
        for t in running:
            row = self.latest.get(t.trial_id, {})
            params = self._params(t)
            rows.append(
                [t.trial_id, *[_value(params[k]) for k in self.keys]]
                + [_value(row.get("step")), _value(row.get(self.metric))]
            )
        if rows:
            widths = [max(len(str(c)) for c in col) for col in zip(head, *rows, strict=True)]
            for r in [head, *rows]:
                self._print(
                    "  " + "  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True))
                )

    def _best(self) -> str:
        scored = [
            (r[self.metric], tid)
            for tid, r in self.latest.items()
            if isinstance(r.get(self.metric), int | float) and not math.isnan(r[self.metric])
        ]
        if not scored:
            return ""
        value, tid = max(scored) if self.mode == "max" else min(scored)
        return f"; best {self.metric} {value:.4g} ({tid})"

    def _finished(self, trial, status: str, reason: str = "") -> None:
        self.done += 1
        row = self.latest.get(trial.trial_id, {})
        took = time.monotonic() - self.started.get(trial.trial_id, self.t0)
        line = (
            f"[{self._elapsed()}] {status.lower():<6} {trial.trial_id}  {self._describe(trial)}"
            f"  step {_value(row.get('step'))}  {self.metric} {_value(row.get(self.metric))}"
            f"  ({took:.0f} s; {self.done}/{self.total})"
        )
        self._print(line + (f"\n    reason: {reason}" if reason else ""))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._finished(trial, "done")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        reason = ""
        try:
            with open(trial.error_file) as f:
                reason = error_reason(f.read())
        except (OSError, TypeError):
            reason = "see the trial's error.txt"
        self._finished(trial, "error", reason)

    def on_experiment_end(self, trials: list, **info) -> None:
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        self._print(f"[{self._elapsed()}] study finished: {summary}{self._best()}")


TIMELINE_FILE = "timeline.json"  # in the study folder: when each trial started and reported


class Timeline(tune.Callback):
    """Records, on the driver's clock, when each trial started, first reported and ended,
    with the training seconds it reported (``seconds``: training and evaluation time since
    its data and model were ready), and writes them to ``STUDY/timeline.json`` when the study
    ends. ``lk-study bench study`` reads it: a trial's start-up = (first report - start) -
    its seconds at the first report; Ray's share = 1 - Σ seconds / Σ (end - start)."""

    def __init__(self, exp_path: str) -> None:
        self.exp_path = exp_path
        self.trials: dict[str, dict[str, float]] = {}

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self.trials[trial.trial_id] = {"start": time.time()}

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        entry = self.trials.setdefault(trial.trial_id, {"start": math.nan})
        if result.get("replayed"):
            return  # rows a restarted trial gives again: not this run's timing
        entry.setdefault("first", time.time())
        entry.setdefault("first_seconds", float(result.get("seconds", math.nan)))
        entry["seconds"] = float(result.get("seconds", math.nan))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.trials.setdefault(trial.trial_id, {"start": math.nan})["end"] = time.time()

    on_trial_error = on_trial_complete

    def on_experiment_end(self, trials: list, **info) -> None:
        from lk_study.storage import read_json, write_json

        try:
            old = read_json(self.exp_path, TIMELINE_FILE) or {}
        except ValueError:
            old = {}
        write_json(self.exp_path, TIMELINE_FILE, {**old, **self.trials})
