"""Integration tier: study storage on a real S3 API, a moto server on localhost (never AWS).

- a --smoke study on s3://BUCKET/studies through the CLI, its driver SIGKILLed after a trial
  has reported, resumed with ``lk-study resume s3://...``, then read back by ``load_study`` and
  ``lk-study results``;
- ``lk-study train`` with ``model.init_from`` an s3:// checkpoint of that study.

pyarrow (and so Ray and lk_study) reaches the server through ``AWS_ENDPOINT_URL``, set here for
this module and the subprocesses it starts, with dummy credentials and no proxies.
"""

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import pytest

pytestmark = pytest.mark.integration
moto_server = pytest.importorskip("moto.server", reason="moto[server] (the dev extra)")
boto3 = pytest.importorskip("boto3")

BIN = Path(sys.executable).parent
BUCKET = "lk-study-test"
STUDIES = f"s3://{BUCKET}/studies"
NAME = "quickstart-smoke"
STUDY = f"{STUDIES}/{NAME}"
SETS = [
    *("--set", "budget.num_samples=2"),
    *("--set", "train.max_steps=30"),
    *("--set", "train.eval_every=10"),
    *("--set", "scheduler.name=none"),
]
TUNE = [sys.executable, "-m", "lk_study.cli", "tune", "search_spaces/quickstart.yaml", "--smoke"]
PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free localhost port with the bucket; the AWS_* variables that
    point pyarrow, boto3 and every subprocess (Ray's workers too) at it, for this module."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    nowhere = tmp_path_factory.mktemp("aws") / "none"  # no user config or credentials
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(nowhere),
        "AWS_SHARED_CREDENTIALS_FILE": str(nowhere),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "RAY_DEDUP_LOGS": "0",
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        for key in (*PROXIES, "AWS_PROFILE", "RAY_ADDRESS"):
            mp.delenv(key, raising=False)
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        yield client
    server.stop()


@pytest.fixture(autouse=True)
def _local_only(s3):
    """Every S3 call of this module goes to the local server: never to AWS."""
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        assert urlparse(os.environ[key]).hostname == "127.0.0.1", os.environ[key]
    assert s3.meta.endpoint_url.startswith("http://127.0.0.1:")
    assert not any(os.environ.get(k) for k in PROXIES)


def keys(client, prefix: str) -> dict[str, int]:
    """key -> size of the objects under ``prefix`` in the bucket (read with boto3)."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return out


def fs():
    """pyarrow's filesystem of the bucket (the one lk_study and Ray use)."""
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(STUDIES)[0]


def run(cmd, timeout=400):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def s3_study(s3, tmp_path_factory):
    """The study on s3://, SIGKILLed after its first report reached the bucket, resumed."""
    log_path = tmp_path_factory.mktemp("driver") / "driver.log"
    with log_path.open("w") as log:
        driver = subprocess.Popen(
            [*TUNE, "--storage", STUDIES, *SETS],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        reported = False
        try:
            deadline = time.time() + 300
            while time.time() < deadline and driver.poll() is None:
                time.sleep(1)
                found = keys(s3, f"studies/{NAME}/")
                if any(k.endswith("/result.json") and n for k, n in found.items()):
                    reported = True
                    break
        finally:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started, at once
            driver.wait(timeout=60)
    text = log_path.read_text()
    assert reported, f"no trial reported to the bucket; driver log:\n{text[-3000:]}"
    found = keys(s3, f"studies/{NAME}/")
    assert f"studies/{NAME}/lk_study.json" in found
    assert f"studies/{NAME}/trials.parquet" not in found  # the study really was interrupted
    assert any("experiment_state" in k for k in found), sorted(found)

    out = run([sys.executable, "-m", "lk_study.cli", "resume", STUDY])
    assert f"Resuming study '{NAME}'" in out
    assert f"Results table: {STUDY}/trials.parquet" in out
    return out


def test_study_on_s3_survives_sigkill_and_resumes(s3, s3_study):
    from lk_study.analysis import load_study

    res = load_study(STUDY)
    assert res.path == STUDY
    trials = res.trials
    assert len(trials) == 2 and (trials["status"] == "TERMINATED").all(), trials
    assert (trials["step"] == 30).all()
    assert trials["val_accuracy"].between(0, 1).all()
    for tid in trials["trial_id"]:  # every report once, those from before the kill too
        steps = res.curves[res.curves["trial_id"] == tid]["step"].tolist()
        assert steps == [10, 20, 30], (tid, steps)
    table = pd.read_parquet(f"{STUDY}/trials.parquet".replace("s3://", ""), filesystem=fs())
    assert sorted(table["trial_id"]) == sorted(trials["trial_id"])
    # everything lives in the bucket: trial folders and each trial's Train checkpoint
    found = keys(s3, f"studies/{NAME}/")
    for tid in trials["trial_id"]:
        assert any(f"/train_runs/train-{tid}/checkpoint_" in k for k in found), tid

    out = run([sys.executable, "-m", "lk_study.cli", "results", STUDY], timeout=120)
    assert "Leaderboard (val_accuracy, max)" in out
    assert all(tid in out for tid in trials["trial_id"])


def test_train_from_an_s3_checkpoint(s3, s3_study, tmp_path):
    from lk_study import storage
    from lk_study.analysis import load_study

    trial = load_study(STUDY).trials.iloc[0]
    ckpt = storage.newest_checkpoint(storage.trial_run(STUDY, trial["trial_id"]))
    assert ckpt is not None and ckpt.startswith(f"{STUDY}/train_runs/")
    kernel = ["--set", f"kernel.name={trial['kernel.name']}"]
    if trial["kernel.name"] != "softmax":
        kernel += ["--set", f"kernel.num_features={int(trial['kernel.num_features'])}"]
    out = run(
        [
            sys.executable,
            "-m",
            "lk_study.cli",
            "train",
            "search_spaces/quickstart.yaml",
            "--smoke",
            "--storage",
            f"s3://{BUCKET}/finetune",
            *kernel,
            *("--set", "train.max_steps=10"),
            *("--set", "train.eval_every=10"),
            *("--set", f"model.init_from={ckpt}"),
        ]
    )
    assert "encoder tensors from" in out, out[-3000:]
    loaded = [ln for ln in out.splitlines() if "encoder tensors from" in ln]
    assert Path(ckpt).name in loaded[0]  # the checkpoint folder, copied to the worker
    assert "Final metrics:" in out and "step=10" in out
    assert any("/checkpoint_" in k for k in keys(s3, "finetune/"))
