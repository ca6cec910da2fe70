"""Experiment tracking: a study's trials also in MLflow and/or Weights & Biases, through Ray
Tune's own logger callbacks, set by the study file's ``tracking`` section::

    tracking:
      mlflow: sqlite:///mlflow.db  # a tracking URI, or a local folder (an absolute file: URI)
      wandb: my-project            # a W&B project

What goes where (the study folder keeps everything as before; these are copies):

- one MLflow run per Tune trial, named after it (tags ``trial_name``, ``trial_id``), in the
  MLflow experiment named after the study; one W&B run per trial (its id: the trial's id) in
  the W&B group named after the study, in project ``tracking.wandb``;
- params (MLflow) / config (W&B): the trial's parameters under their dotted names
  (``kernel.name``, ``train.lr``; a grid/random trial's ``point`` dict flattened). The base
  config is not logged: it is the study file's;
- metrics: every number of every report. MLflow logs each at the report's ``step`` (our own
  counter, which survives restores; Tune's ``training_iteration`` for rows without one). W&B
  counts the reports itself: plot against the ``step`` metric (its x-axis setting).
- a trial resumed after a driver kill or retried logs into its MLflow run from before (found
  by its ``trial_id`` tag) from the first step past the last one that run holds: the rows it
  replays from its checkpoint are there already. (W&B resumes the run with the trial's id;
  replayed rows are logged again, at the same ``step``.)

The callbacks run in the Tune driver: a ``file:`` or ``sqlite:`` store is on the driver's
machine (with ``ray job submit``, the cluster's head node), W&B needs its login (or
``WANDB_MODE=offline``) there.

MLflow and W&B are the optional extra ``pip install 'lk_study[tracking]'`` (MLflow as
``mlflow-skinny``: the client and its stores, without the ``mlflow ui`` server, whose full
package does not install beside our pyarrow; see pyproject.toml). ``Tracking`` (the section)
needs neither, nor Ray: it checks that the package is installed, so a missing one is an error
when the study file is read, before Ray starts. Ray and the packages are imported by
``tracking_callbacks`` only.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from lk_study.tasks.base import check as _check

if TYPE_CHECKING:
    from ray.tune import Callback

EXTRA = "pip install 'lk_study[tracking]'"
POINT = "point"  # lk_study.tune.POINT: a grid/random trial's parameters, one dict
STEP = "step"  # our own counter in every report (lk_study.train); survives restores
TRAINING_ITERATION = "training_iteration"  # Tune's counter: restarts at 1 after a restore
# MLflow tracking URI schemes (SQLAlchemy ones may name a driver: postgresql+psycopg2://)
MLFLOW_SCHEMES = ("file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
MLFLOW_FORMS = (
    "file:/abs/path, sqlite:///mlflow.db, http(s)://host:port, databricks, "
    "postgresql://..., or a local folder such as mlruns"
)
SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
SQLITE = "sqlite:///"
WANDB_FORBIDDEN = re.compile(r"[/\\#?%:]")  # characters W&B refuses in a project name


@dataclass(frozen=True)
class Tracking:
    """Where a study's trials are tracked besides its folder. ``mlflow``: an MLflow tracking
    URI (``file:/abs/path``, ``sqlite:///mlflow.db``, ``http(s)://host:port``,
    ``databricks``) or a local folder, made absolute against the current directory when the
    study starts (``mlflow_uri``); ``wandb``: a W&B project (the entity: ``WANDB_ENTITY``, or
    the login's default). Empty: not tracked there."""

    mlflow: str = ""
    wandb: str = ""

    def __post_init__(self) -> None:
        if self.mlflow:
            _check(
                _mlflow_scheme_ok(self.mlflow),
                "mlflow",
                f"{self.mlflow!r} is not an MLflow tracking URI; write {MLFLOW_FORMS}",
            )
            _check(_installed("mlflow"), "mlflow", f"needs the mlflow package: {EXTRA}")
        if self.wandb:
            _check(
                len(self.wandb) <= 128 and not WANDB_FORBIDDEN.search(self.wandb),
                "wandb",
                f"{self.wandb!r} is not a W&B project name (at most 128 characters, none of "
                "/ \\ # ? % :); set the entity with WANDB_ENTITY",
            )
            _check(_installed("wandb"), "wandb", f"needs the wandb package: {EXTRA}")


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _scheme(value: str) -> str | None:
    """The URI scheme of ``value`` without a driver (``postgresql+psycopg2`` -> postgresql),
    ``databricks`` for the bare profile URIs; None for a path."""
    if value in ("databricks", "databricks-uc"):
        return "databricks"
    m = SCHEME.match(value)
    return m.group(1).lower().split("+")[0].removesuffix("-uc") if m else None


def _mlflow_scheme_ok(value: str) -> bool:
    scheme = _scheme(value)
    if scheme in ("http", "https"):
        return bool(urlparse(value).netloc)
    return scheme is None or scheme in MLFLOW_SCHEMES


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def mlflow_uri(value: str) -> str:
    """The tracking URI a ``tracking.mlflow`` value names, absolute: a local folder becomes
    the ``file:`` URI of its absolute path (``mlruns`` -> ``file:///home/me/mlruns``); a
    relative ``file:`` or ``sqlite:///`` path is taken from the current directory; other
    URIs are unchanged."""
    scheme = _scheme(value)
    if scheme is None:
        return Path(_absolute(value)).as_uri()
    if scheme == "file":
        parsed = urlparse(value)
        if parsed.netloc or os.path.isabs(parsed.path):
            return value
        return Path(_absolute(parsed.path)).as_uri()
    path = value.removeprefix(SQLITE)
    if value.startswith(SQLITE) and path and not path.startswith((":memory:", "/")):
        return SQLITE + _absolute(path)
    return value


def tracking_record(tracking: Tracking) -> dict[str, str]:
    """The section as a study folder's lk_study.json records it: its set keys, the MLflow URI
    absolute (so a resume from another directory tracks to the same place); {} when unset."""
    mlflow = mlflow_uri(tracking.mlflow) if tracking.mlflow else ""
    record = {"mlflow": mlflow, "wandb": tracking.wandb}
    return {k: v for k, v in record.items() if v}


def trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """A Tune trial's parameters under their dotted names: Optuna's suggestions
    (``{"kernel.name": ..., "train.lr": ...}``) as they are, a grid/random trial's
    ``{"point": {...}}`` flattened into them."""
    params = {k: v for k, v in config.items() if k != POINT}
    return {**params, **dict(config.get(POINT) or {})}


def tracking_callbacks(tracking: Tracking, study_name: str) -> list[Callback]:
    """Ray Tune logger callbacks for ``tracking`` (none when it tracks nowhere), for the
    study's ``tune.RunConfig(callbacks=...)``: MLflow runs in the experiment ``study_name``,
    W&B runs in the group ``study_name`` of project ``tracking.wandb``."""
    callbacks = []
    if tracking.mlflow:
        callbacks.append(
            _mlflow_callback()(
                tracking_uri=mlflow_uri(tracking.mlflow),
                experiment_name=study_name,
                save_artifact=False,  # checkpoints stay in the study folder
            )
        )
    if tracking.wandb:
        callbacks.append(
            _wandb_callback()(
                project=tracking.wandb,
                group=study_name,
                excludes=[TRAINING_ITERATION],  # W&B's step: its own count (see the docstring)
                resume="allow",  # a resumed trial continues its W&B run (wandb.init's id)
            )
        )
    return callbacks


# The callbacks subclass Ray's, so they are made when first asked for: lk_study.study imports
# this module for ``Tracking`` and stays free of Ray (tests/test_layering.py).


@functools.cache
def _mlflow_callback() -> type:
    """Ray's ``MLflowLoggerCallback`` with our names and steps: params under their dotted
    names (Ray's would log ``point/kernel.name``), metrics at our ``step`` (Ray's: Tune's
    ``training_iteration``), a resumed trial in its run from before."""
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class MLflowCallback(MLflowLoggerCallback):
        def setup(self, *args, **kwargs) -> None:
            # MLflow 3 refuses a file store unless MLFLOW_ALLOW_FILE_STORE: the study asks for
            # one (a value of false set by hand still wins)
            if self.tracking_uri.startswith("file:"):
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            super().setup(*args, **kwargs)
            self._held: dict = {}  # trial -> the last step its run held when it (re)started

        def log_trial_start(self, trial) -> None:
            import mlflow

            client = mlflow.MlflowClient(self.tracking_uri)
            if trial not in self._trial_runs:
                self._trial_runs[trial] = self._open_run(client, trial)
            run_id = self._trial_runs[trial]
            held = client.get_run(run_id).data.metrics  # latest values: the last step
            self._held[trial] = held.get(STEP, held.get(TRAINING_ITERATION, -math.inf))
            self.mlflow_util.log_params(run_id=run_id, params_to_log=trial_params(trial.config))

        def _open_run(self, client, trial) -> str:
            """The run of ``trial``: its run from before a restore, or a new one."""
            found = client.search_runs(
                [self.mlflow_util.experiment_id],
                filter_string=f"tags.trial_id = '{trial.trial_id}'",
                max_results=1,
            )
            if found:
                client.update_run(found[0].info.run_id, status="RUNNING")
                return found[0].info.run_id
            tags = {**self.tags, "trial_name": str(trial), "trial_id": trial.trial_id}
            return self.mlflow_util.start_run(tags=tags, run_name=str(trial)).info.run_id

        def log_trial_result(self, iteration: int, trial, result: dict) -> None:
            step = result[STEP] if STEP in result else result[TRAINING_ITERATION]
            if step <= self._held.get(trial, -math.inf):
                return  # replayed by a resumed trial: its run has it
            metrics = {k: v for k, v in result.items() if k != "config"}  # config: params
            self.mlflow_util.log_metrics(
                run_id=self._trial_runs[trial], metrics_to_log=metrics, step=int(step)
            )

    return MLflowCallback


@functools.cache
def _wandb_callback() -> type:
    """Ray's ``WandbLoggerCallback`` with the trial's parameters as W&B's config under their
    dotted names (Ray's would nest a grid trial's under ``point``, at the start and with every
    report)."""
    from ray.air.integrations.wandb import WandbLoggerCallback

    class WandbCallback(WandbLoggerCallback):
        def _start_logging_actor(self, trial, exclude_results: list, **init_kwargs) -> None:
            init_kwargs["config"] = trial_params(trial.config)  # wandb.init's
            super()._start_logging_actor(trial, exclude_results, **init_kwargs)

        def log_trial_result(self, iteration: int, trial, result: dict) -> None:
            config = trial_params(result.get("config") or {})  # each report updates W&B's
            super().log_trial_result(iteration, trial, {**result, "config": config})

    return WandbCallback
