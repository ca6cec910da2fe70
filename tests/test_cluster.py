"""Integration tier: studies on real clusters and after a hard driver crash.

- ``ray job submit`` to a ``ray start --head`` cluster started here;
- a two-node ``ray.cluster_utils.Cluster``: one trial, two data-parallel workers;
- SIGKILL of the driver mid-study, then the same command with --resume continues it.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from lk_study.analysis import load_study

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = """
name: {name}
searcher: grid
config:
  task: {{name: sparsity, size: 300, seq_len: 16, num_signal: 3, num_types: 3}}
  model: {{d_model: 16, num_layers: 1, num_heads: 2, d_ff: 32}}
  kernel: {{name: prf, num_features: 8}}
  train: {{batch_size: 16, max_steps: {steps}, eval_every: 5, lr: 3.0e-3, warmup: 2}}
  scaling: {{num_workers: {workers}, resources_per_worker: {{CPU: 0.9}}}}
search:
  train.seed: {{grid: {seeds}}}
budget: {{max_concurrent: 1}}
scheduler: {{name: none}}
"""


def study_file(tmp_path, name, steps=10, workers=1, seeds=(0,)):
    path = tmp_path / f"{name}.yaml"
    path.write_text(TINY.format(name=name, steps=steps, workers=workers, seeds=list(seeds)))
    return path


def clean_env():
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_ADDRESS", None)
    return env


def test_ray_job_submit_to_a_started_cluster(tmp_path):
    env = clean_env()
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--num-cpus=2",
            "--port=6391",
            "--dashboard-port=8276",
            "--include-dashboard=true",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        runtime_env = json.dumps({"excludes": [".venv", "lk_results", ".git", "*.parquet"]})
        study = study_file(tmp_path, "jobstudy")
        submit = [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            "http://127.0.0.1:8276",
            "--working-dir",
            str(ROOT),
            "--runtime-env-json",
            runtime_env,
            "--",
            "python",
            "jobs/tune.py",
            str(study),
            "--storage",
            str(tmp_path / "runs"),
        ]
        for _ in range(60):  # the dashboard takes a few seconds to come up
            proc = subprocess.run(
                submit,
                env={**env, "RAY_AUTH_MODE": "token"},
                capture_output=True,
                text=True,
                timeout=400,
            )
            if "Connection refused" not in proc.stdout + proc.stderr:
                break
            time.sleep(2)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        assert "succeeded" in proc.stdout + proc.stderr
        trials = pd.read_parquet(tmp_path / "runs" / "jobstudy" / "trials.parquet")
        assert len(trials) == 1 and trials["status"].tolist() == ["TERMINATED"]
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the cluster this test started, nothing else
        head.wait(timeout=60)
        current = Path("/tmp/ray/ray_current_cluster")
        if current.exists() and "6391" in current.read_text():
            current.unlink()  # else a later plain ray.init() would try to join the dead cluster


def test_two_node_cluster_runs_two_data_parallel_workers(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from lk_study.study import load_study_file
    from lk_study.tune import run_study

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True}
    )
    cluster.add_node(num_cpus=1)
    try:
        study = load_study_file(study_file(tmp_path, "twonode", workers=2))
        path = run_study(study, str(tmp_path / "runs"), address=cluster.address)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    trials = load_study(path).trials
    assert trials["status"].tolist() == ["TERMINATED"]
    assert trials["world_size"].tolist() == [2] and trials["step"].tolist() == [10]
    assert trials["val_accuracy"].between(0, 1).all()


def test_sigkill_of_the_driver_then_resume_keeps_finished_trials(tmp_path):
    study = study_file(tmp_path, "crash", steps=15, seeds=(0, 1, 2))
    storage = tmp_path / "runs"
    cmd = [sys.executable, "-m", "lk_study.cli", "tune", str(study), "--storage", str(storage)]
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(
        cmd, env=clean_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        exp = storage / "crash"
        finished: pd.DataFrame | None = None
        deadline = time.time() + 300
        while time.time() < deadline:
            time.sleep(2)
            try:
                trials = load_study(str(exp)).trials
            except (FileNotFoundError, OSError, ValueError):
                continue
            if not trials.empty and (trials["status"] == "TERMINATED").any():
                finished = trials[trials["status"] == "TERMINATED"].copy()
                break
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started, at once
        driver.wait(timeout=60)
    log.close()
    tail = (tmp_path / "driver.log").read_text()[-3000:]
    assert finished is not None, f"no trial finished before the deadline; driver log:\n{tail}"
    assert not (exp / "trials.parquet").exists()  # the study really was interrupted

    resume = [*cmd, "--resume"]  # insists on resuming: fails if the kill lost the experiment
    out = subprocess.run(resume, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Resuming study 'crash'" in out.stdout
    res = load_study(str(exp))
    after = res.trials.set_index("trial_id")
    assert len(after) == 3 and (after["status"] == "TERMINATED").all()
    assert (after["step"] == 15).all()
    for _, row in finished.iterrows():  # kept, same id and result, and not run again
        assert after.loc[row["trial_id"], "best.val_accuracy"] == row["best.val_accuracy"]
        steps = res.curves[res.curves["trial_id"] == row["trial_id"]]["step"].tolist()
        assert steps == [5, 10, 15]
