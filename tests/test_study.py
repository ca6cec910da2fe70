"""Integration tier: a real --smoke study through Ray Tune + Optuna + Ray Train, via the CLI."""

import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from lk_study.analysis import load_study

pytestmark = pytest.mark.integration

COLUMNS = {
    "trial_id",
    "status",
    "kernel.name",
    "kernel.num_features",
    "train.lr",
    "task.name",
    "model.d_model",
    "train.max_steps",
    "step",
    "epoch",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "tokens_per_s",
    "seconds",
    "best.val_accuracy",
    "best.val_loss",
}


def cli(*args, timeout=420, both=False):
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "lk_study.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr if both else proc.stdout


def assert_quiet(console: str) -> None:
    """A healthy study's console: no error-looking line, none of Ray Train's chatter, no
    Ray C++ log line (``[... E 1234 5678] core_worker.cc``)."""
    for line in console.splitlines():
        assert "ERROR" not in line and "RayTrainWorker" not in line, line
        assert not re.search(r"\b[EF] \d+ \d+\]", line), line


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    storage = tmp_path_factory.mktemp("studies")
    out = cli(
        "tune",
        "search_spaces/quickstart.yaml",
        "--smoke",
        "--storage",
        str(storage),
        "--set",
        "budget.num_samples=3",
        both=True,
    )
    return storage / "quickstart-smoke", out


def test_smoke_study_runs_and_prints_leaderboard(smoke_study):
    path, out = smoke_study
    assert "Leaderboard (val_accuracy, max)" in out
    assert f"Results table: {path}/trials.parquet" in out
    assert_quiet(out)
    trials = pd.read_parquet(path / "trials.parquet")
    for tid in trials["trial_id"]:  # one line when each trial starts, one when it ends
        assert len(re.findall(rf"\] start +{tid} ", out)) == 1, out
        assert len(re.findall(rf"\] done +{tid} ", out)) == 1, out
    assert "study finished: 3 TERMINATED" in out
    assert (path / "logs").is_dir()  # Ray's own logs: in the study folder
    assert len(trials) == 3
    assert COLUMNS <= set(trials.columns), COLUMNS - set(trials.columns)
    assert set(trials["status"]) <= {"TERMINATED"}
    assert trials["kernel.name"].isin(["softmax", "prf", "gmm_prf"]).all()
    # num_features is searched only for random-feature kernels
    rf = trials["kernel.name"] != "softmax"
    assert trials.loc[rf, "kernel.num_features"].isin([8, 32]).all()
    # ASHA (grace period 10 in --smoke) may stop a trial at step 10; the rest reach 20
    assert trials["step"].isin([10, 20]).all() and (trials["step"] == 20).any()
    assert trials["val_accuracy"].between(0, 1).all()
    assert (trials["best.val_accuracy"] >= trials["val_accuracy"]).all()


def test_results_command_and_curves(smoke_study, tmp_path):
    path, _ = smoke_study
    out_file = tmp_path / "t.parquet"
    out = cli("results", str(path), "--out", str(out_file), timeout=120)
    assert "Leaderboard" in out and "Wrote 3 trials" in out
    assert len(pd.read_parquet(out_file)) == 3
    res = load_study(str(path))
    steps = res.curves.groupby("trial_id")["step"].apply(list).map(tuple)
    assert set(steps) <= {(10,), (10, 20)} and len(steps) == 3
    assert dict(zip(res.trials["trial_id"], res.trials["step"], strict=True)) == {
        t: s[-1] for t, s in steps.items()
    }


def test_resume_verb_and_rerun_keep_finished_trials(smoke_study):
    """`lk-study resume PATH` (no study file) and rerunning the same command both resume."""
    path, _ = smoke_study
    before = pd.read_parquet(path / "trials.parquet").set_index("trial_id")
    resumed = cli("resume", str(path))
    rerun = cli(
        "tune",
        "search_spaces/quickstart.yaml",
        "--smoke",
        "--storage",
        str(path.parent),
        "--set",
        "budget.num_samples=3",
    )
    for out in (resumed, rerun):
        assert "Resuming study 'quickstart-smoke'" in out
    after = pd.read_parquet(path / "trials.parquet").set_index("trial_id")
    assert set(after.index) == set(before.index)
    assert (after.loc[before.index, "best.val_accuracy"] == before["best.val_accuracy"]).all()


def test_grid_study_with_seeds(tmp_path):
    out = cli("tune", "search_spaces/sparsity.yaml", "--smoke", "--storage", str(tmp_path))
    assert "4 trials (grid)" in out
    trials = pd.read_parquet(tmp_path / "sparsity-smoke" / "trials.parquet")
    combos = set(zip(trials["kernel.name"], trials["task.num_signal"], strict=True))
    assert combos == {("softmax", 5), ("softmax", 15), ("gmm_prf", 5), ("gmm_prf", 15)}
    assert (trials["train.seed"] == 0).all() and (trials["status"] == "TERMINATED").all()
    assert (trials["step"] == 10).all()  # scheduler none: every trial runs to the end


FAULTS_STUDY = """
name: faults
searcher: grid
config:
  task: {name: sparsity, size: 400, seq_len: 16, num_signal: 3, num_types: 3}
  model: {d_model: 16, num_layers: 1, num_heads: 2, d_ff: 32}
  kernel: {name: prf, num_features: 8}
  train: {batch_size: 16, max_steps: 20, eval_every: 5, lr: 3.0e-3, warmup: 2}
  scaling: {resources_per_worker: {CPU: 0.9}}
search:
  train.lr: {grid: [3.0e-3, 1.0e+12]}
scheduler: {name: none}
"""


@pytest.mark.parametrize("runner", ["trial", "train"])  # Tune's retry / Ray Train's restart
def test_worker_failure_is_retried_and_nan_trial_errors(tmp_path, monkeypatch, runner):
    study = tmp_path / "faults.yaml"
    study.write_text(FAULTS_STUDY)
    marker = tmp_path / "failed-once"
    monkeypatch.setenv("LK_STUDY_FAIL_AT_STEP", "12")
    monkeypatch.setenv("LK_STUDY_FAIL_MARKER", str(marker))
    runs = ["--storage", str(tmp_path / "runs"), "--set", f"scaling.runner={runner}"]
    out = cli("tune", str(study), *runs, both=True)
    assert "reason: FloatingPointError: training loss became nan" in out  # on the console
    assert marker.exists()  # the failure was injected (in the healthy trial: the other NaNs early)
    res = load_study(str(tmp_path / "runs" / "faults"))
    trials = res.trials.set_index("train.lr")
    healthy, diverged = trials.loc[3e-3], trials.loc[1e12]
    assert healthy["status"] == "TERMINATED" and healthy["step"] == 20
    assert diverged["status"] == "ERROR"
    assert "training loss became nan" in diverged["error"]
    steps = res.curves[res.curves["trial_id"] == healthy["trial_id"]]["step"].tolist()
    assert steps[-1] == 20 and 10 in steps  # resumed from the step-10 checkpoint


def test_jobs_train_runs_one_training_without_tune(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "jobs/train.py",
            "search_spaces/quickstart.yaml",
            "--smoke",
            "--set",
            "kernel.name=gmm_prf",
            "--storage",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=420,
        env={**os.environ, "RAY_DEDUP_LOGS": "0"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Final metrics: " in proc.stdout and "step=20" in proc.stdout
    assert any((tmp_path / "quickstart-smoke-single").glob("checkpoint_*"))


def test_pretrain_then_glue_job_chains_the_two_studies(tmp_path):
    """jobs/pretrain_then_glue.py --smoke: MLM pre-training per kernel, then GLUE
    fine-tuning whose trials start from the matching kernel's checkpoint and tokenizer."""
    proc = subprocess.run(
        [sys.executable, "jobs/pretrain_then_glue.py", "--smoke", "--storage", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "RAY_DEDUP_LOGS": "0"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    mlm = load_study(str(tmp_path / "wikitext_mlm-smoke")).trials
    glue = load_study(str(tmp_path / "glue_grid-smoke")).trials
    assert set(mlm["kernel.name"]) == {"softmax", "gmm_prf"}
    assert (mlm["status"] == "TERMINATED").all()
    assert len(glue) == 4 and (glue["status"] == "TERMINATED").all(), glue[["status", "error"]]
    assert set(zip(glue["task.name"], glue["kernel.name"], strict=True)) == {
        (t, k) for t in ("glue/rte", "glue/stsb") for k in ("softmax", "gmm_prf")
    }
    assert (glue["model.init_from"] == "study:wikitext_mlm-smoke").all()
    assert glue["val_score"].notna().all() and (glue["epoch"] == 1.0).all()
    # every fine-tuning run loaded the encoder of its kernel's pre-training trial
    # (the trials' own output is in the study's copy of Ray's logs, not on the quiet console)
    logs = [
        f.read_text(errors="replace") for f in (tmp_path / "glue_grid-smoke" / "logs").glob("*.out")
    ]
    for kernel, trial in zip(mlm["kernel.name"], mlm["trial_id"], strict=True):
        loaded = f"encoder tensors from {tmp_path}/wikitext_mlm-smoke/train_runs/train-{trial}"
        assert sum(text.count(loaded) for text in logs) == 2, kernel
        assert loaded not in proc.stdout + proc.stderr
    out = cli("results", str(tmp_path / "glue_grid-smoke"), "--table", "glue", timeout=120)
    assert "RTE" in out and "STS-B" in out
