"""The study's ``tracking`` section: its checks and URIs; then Ray Tune's MLflow and W&B
loggers (``tracking_callbacks``) under real tiny Tune runs, read back from a local MLflow file
store and from a stand-in for the ``wandb`` module inside Ray's W&B logging actor."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from ray import tune

from lk_study import tracking
from lk_study.config import ConfigError, _build, _Where
from lk_study.tracking import Tracking, mlflow_uri, tracking_callbacks, tracking_record

mlflow = pytest.importorskip("mlflow")  # the extra lk_study[tracking]; dev installs it


def section(data: dict) -> Tracking:
    """The ``tracking`` section of a study file, built as lk_study.study builds sections."""
    lines = {"tracking": 3, **{f"tracking.{k}": 4 + i for i, k in enumerate(data)}}
    return _build(Tracking, data, "tracking", _Where("study.yaml", lines))


# ---------------------------------------------------------------------------- the section


def test_local_folders_and_relative_paths_become_absolute_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert mlflow_uri("mlruns") == (tmp_path / "mlruns").as_uri() == f"file://{tmp_path}/mlruns"
    assert mlflow_uri("./a/../mlruns") == f"file://{tmp_path}/mlruns"
    assert mlflow_uri("~/mlruns") == Path("~/mlruns").expanduser().as_uri()
    assert mlflow_uri("file:mlruns") == f"file://{tmp_path}/mlruns"
    assert mlflow_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    for uri in (
        "file:/abs/mlruns",
        "file:///abs/mlruns",
        "sqlite:////abs/mlflow.db",
        "http://127.0.0.1:5000",
        "https://mlflow.example.org/",
        "databricks",
        "databricks://profile",
        "postgresql+psycopg2://u@db/mlflow",
    ):
        assert mlflow_uri(uri) == uri
        assert section({"mlflow": uri}).mlflow == uri  # kept as written; absolute when used


def test_the_record_holds_absolute_uris_and_only_set_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking_record(Tracking()) == {}
    assert tracking_record(Tracking(mlflow="mlruns")) == {"mlflow": f"file://{tmp_path}/mlruns"}
    both = Tracking(mlflow="http://h:5000", wandb="kernels")
    assert Tracking(**tracking_record(both)) == both


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"mlflow": "htps://h:5000"},
            "study.yaml:4: tracking.mlflow: 'htps://h:5000' is not an MLflow tracking URI; "
            "write file:/abs/path, sqlite:///mlflow.db",
        ),
        ({"mlflow": "http:/h"}, "tracking.mlflow: 'http:/h' is not an MLflow tracking URI"),
        ({"mlflow": 5000}, "study.yaml:4: tracking.mlflow = 5000 is not a valid str"),
        (
            {"wandb": "me/kernels"},
            "study.yaml:4: tracking.wandb: 'me/kernels' is not a W&B project name",
        ),
        ({"mlfow": "mlruns"}, "unknown key 'tracking.mlfow' (did you mean 'mlflow'?)"),
    ],
)
def test_bad_values_name_the_line_and_what_is_valid(data, message):
    with pytest.raises(ConfigError) as e:
        section(data)
    assert message in str(e.value)


@pytest.mark.parametrize("package", ["mlflow", "wandb"])
def test_a_missing_extra_says_what_to_install(package, monkeypatch):
    monkeypatch.setattr(tracking, "_installed", lambda name: name != package)
    with pytest.raises(ConfigError) as e:
        section({package: "kernels"})
    assert str(e.value) == (
        f"study.yaml:4: tracking.{package}: needs the {package} package: "
        "pip install 'lk_study[tracking]'"
    )


def test_the_section_is_checked_without_ray():
    """A study file is validated before Ray starts: the section imports neither Ray nor
    MLflow (tracking_callbacks does, when the study runs)."""
    code = (
        "import sys\n"
        "from lk_study.tracking import Tracking\n"
        "Tracking(mlflow='mlruns')\n"
        "bad = [m for m in ('ray', 'mlflow', 'wandb') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_trial_params_are_the_dotted_names():
    from lk_study.tune import POINT

    assert tracking.POINT == POINT
    flat = {"kernel.name": "prf", "train.lr": 0.003}
    assert tracking.trial_params(flat) == flat
    assert tracking.trial_params({POINT: flat}) == flat
    assert tracking_callbacks(Tracking(), "s") == []


# ---------------------------------------------------------------------------- real Tune runs


@pytest.fixture(scope="module")
def local_ray():
    # Tune's workers cannot import this test module: ship its functions by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, address="local", include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def reports(config):
    """Three reports at our own ``step``, as lk_study's trials report."""
    params = tracking.trial_params(config)
    for step in (10, 20, 30):
        tune.report({"step": step, "val_accuracy": params["train.lr"] * step})


POINTS = [{"kernel.name": "prf", "train.lr": 0.003}, {"kernel.name": "softmax", "train.lr": 0.01}]


def test_each_trial_is_an_mlflow_run_of_the_study(local_ray, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # set (back) by the callback
    monkeypatch.chdir(tmp_path)
    study = Tracking(mlflow="mlruns")  # a plain folder: a file store
    tuner = tune.Tuner(
        reports,
        param_space={tracking.POINT: tune.grid_search(POINTS)},  # a grid study's trials
        tune_config=tune.TuneConfig(max_concurrent_trials=2),
        run_config=tune.RunConfig(
            name="tiny-study",
            storage_path=str(tmp_path / "ray_results"),
            callbacks=tracking_callbacks(study, "tiny-study"),
            verbose=0,
        ),
    )
    results = tuner.fit()
    assert not results.errors
    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"

    client = mlflow.MlflowClient(f"file://{tmp_path}/mlruns")
    experiment = client.get_experiment_by_name("tiny-study")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    trial_ids = {r.metrics["trial_id"] for r in results}
    assert {r.data.tags["trial_id"] for r in runs} == trial_ids
    by_kernel = {r.data.params["kernel.name"]: r for r in runs}
    for point in POINTS:
        run = by_kernel[point["kernel.name"]]
        assert run.info.status == "FINISHED"
        assert run.data.params == {k: str(v) for k, v in point.items()}  # dotted, flattened
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        lr = point["train.lr"]
        assert [(m.step, m.value) for m in history] == [(s, lr * s) for s in (10, 20, 30)]
        assert not [k for k in run.data.metrics if k.startswith("config")]


class FakeTrial:
    """What the MLflow callback reads of a Tune trial."""

    def __init__(self, trial_id: str, config: dict) -> None:
        self.trial_id, self.config = trial_id, config

    def __str__(self) -> str:
        return f"reports_{self.trial_id}"


def test_a_resumed_trial_continues_its_run_without_the_replayed_rows(tmp_path, monkeypatch):
    """After a driver kill, the restored trial (same id) replays its rows up to its
    checkpoint and trains on: one run, each step once; a retry in the same driver too."""
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    trial = FakeTrial("abc12_00000", {"kernel.name": "prf", "train.lr": 0.003})

    def driver(rows: list[int], restarts: int = 0) -> None:
        (callback,) = tracking_callbacks(Tracking(mlflow=str(tmp_path)), "resumed")
        callback.setup()
        for _ in range(restarts + 1):
            callback.log_trial_start(trial)
            for i, step in enumerate(rows, 1):
                callback.log_trial_result(i, trial, {"step": step, "loss": 1 / step})
        callback.log_trial_end(trial)

    driver([10, 20, 30])  # killed after step 30 (its checkpoint: step 20)
    driver([10, 20, 30, 40], restarts=1)  # replays 10, 20; retrains 30; a retry replays all
    client = mlflow.MlflowClient(Path(tmp_path).as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("resumed").experiment_id])
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [10, 20, 30, 40]
    assert run.data.params == {"kernel.name": "prf", "train.lr": "0.003"}


class StubWandb:
    """What Ray's W&B logging actor calls of the ``wandb`` module, written to ``path`` when
    the run finishes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.calls: dict = {"init": None, "config": {}, "log": []}
        self.config = self  # run.config and wandb.config: attribute sets and update()

    def init(self, **kwargs):
        self.calls["init"] = kwargs
        return self

    def update(self, values: dict, allow_val_change: bool = False) -> None:
        self.calls["config"].update(values)

    def log(self, values: dict, step=None) -> None:
        self.calls["log"].append([values, step])

    def finish(self) -> None:
        Path(self.path).write_text(json.dumps(self.calls, default=str))


def test_each_trial_is_a_wandb_run_of_the_study_group(local_ray, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # no API key asked for (nothing is sent)
    from ray.air.integrations.wandb import _WandbLoggingActor

    out = str(tmp_path / "wandb.json")

    class StubActor(_WandbLoggingActor):  # Ray's actor, with our stub for the wandb module
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._wandb = StubWandb(out)

    (callback,) = tracking_callbacks(Tracking(wandb="kernels"), "tiny-study")
    callback._logger_actor_cls = StubActor  # Ray's seam for this (its own tests use it)
    tune.Tuner(
        reports,
        param_space={tracking.POINT: tune.grid_search(POINTS[:1])},
        run_config=tune.RunConfig(
            name="tiny-study", storage_path=str(tmp_path), callbacks=[callback], verbose=0
        ),
    ).fit()
    calls = json.loads(Path(out).read_text())
    trial_id = calls["config"]["trial_id"]
    assert calls["init"]["config"] == POINTS[0]  # dotted names, not {"point": {...}}
    assert {k: calls["init"][k] for k in ("project", "group", "id", "resume")} == {
        "project": "kernels",
        "group": "tiny-study",
        "id": trial_id,
        "resume": "allow",
    }
    assert "point" not in calls["config"] and POINTS[0].items() <= calls["config"].items()
    assert [(row["step"], row["val_accuracy"], step) for row, step in calls["log"]] == [
        (s, 0.003 * s, None)
        for s in (10, 20, 30)  # step None: W&B counts the reports
    ]
