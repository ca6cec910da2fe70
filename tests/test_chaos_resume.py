"""Integration tier: SIGKILL of the study driver at awkward moments, then resume (issue 12).

Each case runs the quickstart smoke study (2 trials at once, 40 steps, an evaluation and a
checkpoint every 10) as a real ``lk-study`` process in its own session, kills the whole
process group with SIGKILL when the study's files show the moment, resumes, and checks what
``load_study`` and the trials' files say against one uninterrupted reference run with the
same seeds (training on CPU is deterministic):

- every trial TERMINATED; trials finished before the kill kept, not rerun (same result.json);
- no row lost or repeated: each curve has the steps 10, 20, 30, 40 exactly once;
- every curve equals the reference (1e-6): the rows up to the checkpoint a trial resumed from
  and the rows trained after it (a resumed run continues exactly);
- at most one evaluation interval redone: a trial resumes from the newest checkpoint written
  before the kill; no checkpoint folder left beyond ``num_to_keep=1``;
- with Optuna in SQLite: no trial left RUNNING, no parameters suggested twice.

The searcher's restore (``GridOptunaSearch.reconcile``) and ``ResumableASHA`` are also checked
by hand, without Ray.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from lk_study.analysis import load_study
from lk_study.storage import statuses

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEPS = [10, 20, 30, 40]
EVERY = 10
NAME = "quickstart-smoke"
SMOKE = [
    "search_spaces/quickstart.yaml",
    "--smoke",
    "--set",
    "budget.num_samples=2",
    "--set",
    f"train.max_steps={STEPS[-1]}",
    "--set",
    f"train.eval_every={EVERY}",
    "--set",
    "scheduler.name=none",
]
KEY = ("kernel.name", "kernel.num_features", "train.lr")  # a trial across runs: its params


def clean_env():
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_ADDRESS", None)
    return env


def tune_cmd(storage, *extra, runner="auto"):
    runs = ["--set", f"scaling.runner={runner}"] if runner != "auto" else []
    cli = [sys.executable, "-m", "lk_study.cli", "tune", *SMOKE, *runs]
    return [*cli, "--storage", str(storage), *extra]


RUNNERS = ["trial", "train"]  # one worker: in the Tune trial (the default), or Ray Train


BUSY = "node timed out during startup"  # Ray's 30 s start limit, on a machine shared with others


def run(cmd, timeout=300):
    for _ in range(3):
        out = subprocess.run(
            cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=timeout
        )
        if out.returncode == 0 or BUSY not in out.stderr:
            break
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def result_lines(exp: Path) -> dict[str, list[str]]:
    """Trial folder -> its result.json lines (as on disk now)."""
    out = {}
    for d in exp.iterdir():
        if (d / "params.json").is_file():
            f = d / "result.json"
            text = f.read_text() if f.is_file() else ""
            out[d.name] = [ln for ln in text.splitlines() if ln.strip()]
    return out


def checkpoint_steps(exp: Path) -> dict[str, list[int]]:
    """train-<trial_id> -> the steps of its checkpoint folders whose upload finished."""
    from lk_study.trial import _complete

    out = {}
    for run_dir in (exp / "train_runs").glob("train-*"):
        folders = [c for c in run_dir.glob("checkpoint_*") if c.is_dir()]
        rows = [_complete(str(run_dir), c.name) for c in folders]
        out[run_dir.name] = sorted(r[-1]["step"] for r in rows if r)
    return out


def registered_step(exp: Path) -> dict[str, int]:
    """train-<trial_id> -> the step of its newest complete checkpoint (either runner)."""
    return {run: max(steps) for run, steps in checkpoint_steps(exp).items() if steps}


def mid_run(exp: Path) -> bool:
    """A trial has checkpointed twice or more and is not finished (its checkpoints go to the
    storage at once; Tune's result.json only every few seconds)."""
    return any(STEPS[1] <= s < STEPS[-1] for s in registered_step(exp).values())


def final_checkpoint(exp: Path) -> bool:
    """A trial's final checkpoint has just been registered."""
    return STEPS[-1] in registered_step(exp).values()


def start_and_kill(cmd, exp: Path, moment, log: Path, timeout=240) -> dict:
    """Run ``cmd`` in its own session, SIGKILL its process group once ``moment(exp)``; return
    what the study's files held then."""
    for _ in range(3):
        found = _start_and_kill(cmd, exp, moment, log, timeout)
        if found is not None:
            return found
    raise AssertionError(f"Ray did not start three times:\n{log.read_text()[-3000:]}")


def _start_and_kill(cmd, exp: Path, moment, log: Path, timeout: float) -> dict | None:
    size = log.stat().st_size if log.exists() else 0
    with log.open("a") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=clean_env(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            try:
                if exp.is_dir() and moment(exp):
                    break
            except OSError:
                pass
            time.sleep(0.05)
        if proc.poll() is not None and BUSY in log.read_text()[size:]:
            return None  # Ray never started: start again
        assert proc.poll() is None, f"the study ended before the moment:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"no such moment:\n{log.read_text()[-3000:]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, at once
        proc.wait(timeout=60)
    time.sleep(1)
    assert not (exp / "trials.parquet").exists()  # really interrupted
    return {
        "status": statuses(str(exp)),
        "lines": result_lines(exp),
        "checkpoints": checkpoint_steps(exp),
    }


def curves_by_key(exp: Path) -> dict[tuple, dict]:
    res = load_study(str(exp))
    out = {}
    for _, t in res.trials.iterrows():
        key = tuple(None if t.get(k) != t.get(k) else t.get(k) for k in KEY)
        out[key] = {
            "trial_id": t["trial_id"],
            "status": t["status"],
            "best": t.get("best.val_accuracy"),
            "rows": res.curves[res.curves["trial_id"] == t["trial_id"]].to_dict("records"),
        }
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run: trial params -> its curve."""
    storage = tmp_path_factory.mktemp("reference")
    run(tune_cmd(storage))
    ref = curves_by_key(storage / NAME)
    assert len(ref) == 2 and all(r["status"] == "TERMINATED" for r in ref.values())
    return ref


def check_resumed(exp: Path, before: list[dict], reference: dict) -> dict:
    """The assertions every case shares; ``before`` = what each kill left, in order. Returns
    the numbers: trials finished before the (last) kill, rows on disk then, steps redone."""
    after = curves_by_key(exp)
    assert len(after) == 2
    lines = result_lines(exp)
    last = before[-1]
    numbers = {
        "finished_before": sum(s == "TERMINATED" for s in last["status"].values()),
        "rows_on_disk_before": sorted(len(ls) for ls in last["lines"].values()),
        "redone_steps": [],
    }
    for key, trial in after.items():
        tid, rows = trial["trial_id"], trial["rows"]
        assert trial["status"] == "TERMINATED", (key, trial["status"])
        steps = [r["step"] for r in rows]
        assert steps == STEPS, (key, steps)  # no row lost, none twice
        folder = next(f for f in lines if f"_{tid}_" in f"_{f}_")
        run_name = f"train-{tid}"
        ckpts = [p for p in (exp / "train_runs" / run_name).glob("checkpoint_*") if p.is_dir()]
        assert len(ckpts) == 1, ckpts  # num_to_keep=1: no leftovers of the kills
        for b in before:  # finished before a kill: kept as it was, not rerun
            if b["status"].get(tid) == "TERMINATED":
                assert lines[folder] == b["lines"][folder], key
        killed = [b for b in before if b["status"].get(tid) != "TERMINATED"]
        replayed = [json.loads(ln) for ln in lines[folder]]
        replayed = [r["step"] for r in replayed if r.get("replayed") is True]
        resumed_from = max(replayed, default=0)
        if killed and killed[-1]["status"].get(tid):  # it had started when last killed
            b = killed[-1]
            newest = max(b["checkpoints"].get(run_name) or [0])
            assert resumed_from >= newest, (key, newest, resumed_from)  # from the newest
            done = [json.loads(ln)["step"] for ln in b["lines"].get(folder, [])]
            numbers["redone_steps"].append(max(max(done, default=0) - resumed_from, 0))
        # the whole curve equals the uninterrupted run's: the rows up to the checkpoint it
        # resumed from (kept), and those after it (the resumed run continues exactly: model,
        # optimiser, schedule, data order, feature draw and dropout's random state restored)
        for r, rr in zip(rows, reference[key]["rows"], strict=True):
            for m in ("val_accuracy", "val_loss", "train_loss"):
                assert r[m] == pytest.approx(rr[m], abs=1e-6), (key, r["step"], m)
    assert all(n <= EVERY for n in numbers["redone_steps"]), numbers
    return numbers


@pytest.mark.parametrize("runner", RUNNERS)
def test_kill_mid_run_then_resume_keeps_every_row(tmp_path, reference, runner):
    storage = tmp_path / "runs"
    exp = storage / NAME
    before = start_and_kill(tune_cmd(storage, runner=runner), exp, mid_run, tmp_path / "log")
    out = run(tune_cmd(storage, "--resume", runner=runner))
    assert f"Resuming study '{NAME}'" in out
    numbers = check_resumed(exp, [before], reference)
    print(runner, "mid-run:", numbers)


@pytest.mark.parametrize("runner", RUNNERS)
def test_kill_right_after_a_final_checkpoint_then_resume(tmp_path, reference, runner):
    storage = tmp_path / "runs"
    exp = storage / NAME
    cmd = tune_cmd(storage, runner=runner)
    before = start_and_kill(cmd, exp, final_checkpoint, tmp_path / "log")
    run([sys.executable, "-m", "lk_study.cli", "resume", str(exp)])  # lk-study resume PATH
    numbers = check_resumed(exp, [before], reference)
    print(runner, "final checkpoint:", numbers)


def test_kill_twice_in_a_row_then_resume(tmp_path, reference):
    storage = tmp_path / "runs"
    exp = storage / NAME
    log = tmp_path / "log"
    first = start_and_kill(tune_cmd(storage), exp, mid_run, log)
    at_first = registered_step(exp)

    def progressed(exp: Path) -> bool:  # the resumed run replayed, trained and checkpointed
        now = registered_step(exp)
        return any(step > at_first.get(run, 0) for run, step in now.items())

    second = start_and_kill(tune_cmd(storage, "--resume"), exp, progressed, log)
    run(tune_cmd(storage, "--resume"))
    numbers = check_resumed(exp, [first, second], reference)
    print("twice:", numbers)


WORKER = {"trial": "ray::ImplicitFunc", "train": "ray::RayTrainWorker"}  # process titles


def workers(session: int, title: str) -> list[int]:
    """PIDs of the processes of session ``session`` whose title starts with ``title``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if not entry.isdigit() or os.getsid(int(entry)) != session:
                continue
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0].decode()
        except (OSError, UnicodeDecodeError):
            continue
        if cmd.startswith(title):
            found.append(int(entry))
    return found


@pytest.mark.parametrize("runner", RUNNERS)
def test_worker_sigkill_mid_run_is_retried_from_its_checkpoint(tmp_path, reference, runner):
    """A real OS kill of the process that trains (the Tune trial's on the trial runner, the
    Ray Train worker on the train runner) once a trial has checkpointed: the trial restarts
    from its newest checkpoint and the study finishes by itself, curves as uninterrupted."""
    storage = tmp_path / "runs"
    exp = storage / NAME
    with (tmp_path / "log").open("w") as log:
        proc = subprocess.Popen(
            tune_cmd(storage, runner=runner), cwd=ROOT, env=clean_env(), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline, killed = time.time() + 240, []
        while not killed and time.time() < deadline and proc.poll() is None:
            if exp.is_dir() and mid_run(exp):
                at_kill = registered_step(exp)
                killed = workers(proc.pid, WORKER[runner])[:1]
                for pid in killed:
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        assert killed, "no worker process found mid-run:\n" + (tmp_path / "log").read_text()[-3000:]
        assert proc.wait(timeout=300) == 0, (tmp_path / "log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    after = curves_by_key(exp)
    assert len(after) == 2
    for key, trial in after.items():
        assert trial["status"] == "TERMINATED", (key, trial["status"])
        rows, ref = trial["rows"], reference[key]["rows"]
        assert [r["step"] for r in rows] == STEPS, (key, rows)
        for r, rr in zip(rows, ref, strict=True):
            for m in ("val_accuracy", "val_loss", "train_loss"):
                assert r[m] == pytest.approx(rr[m], abs=1e-6), (key, r["step"], m)
    left = {run: len([p for p in (exp / "train_runs" / run).glob("checkpoint_*") if p.is_dir()])
            for run in at_kill}  # fmt: skip
    assert set(left.values()) == {1}, left
    print(runner, "worker kill at checkpoints", at_kill)


def test_kill_with_optuna_in_sqlite_leaves_no_running_trial(tmp_path, reference):
    storage = tmp_path / "runs"
    exp = storage / NAME
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    cmd = tune_cmd(storage, "--set", f"optuna.storage={url}")
    before = start_and_kill(cmd, exp, mid_run, tmp_path / "log")
    run([*cmd, "--resume"])
    numbers = check_resumed(exp, [before], reference)
    ot = optuna.load_study(study_name=NAME, storage=url)
    states = [t.state for t in ot.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    done = [t for t in ot.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2
    params = [tuple(sorted(t.params.items())) for t in ot.trials]
    assert len(set(params)) == len(params)  # nothing suggested twice
    finals = sorted(r["rows"][-1]["val_accuracy"] for r in curves_by_key(exp).values())
    assert sorted(t.value for t in done) == pytest.approx(finals, abs=1e-9)
    print("sqlite:", numbers)


# ---------------------------------------------------------------------------- no Ray needed


def test_restored_searcher_fails_orphan_optuna_trials_and_does_not_repeat_them(tmp_path):
    from lk_study.searchers import optuna_searcher
    from lk_study.study import study_from_dict

    url = f"sqlite:///{tmp_path / 'o.db'}"
    study = study_from_dict(
        {
            "name": "orphans",
            "search": {
                "kernel.name": {"choice": ["softmax", "prf"]},
                "train.lr": {"loguniform": [1.0e-4, 1.0e-2]},
            },
            "budget": {"num_samples": 4},
            "optuna": {"storage": url},
        }
    )
    searcher = optuna_searcher(study)
    kept = [searcher.suggest("a"), searcher.suggest("b")]
    searcher.save(str(tmp_path / "searcher.pkl"))  # Tune's last experiment checkpoint
    orphan = searcher.suggest("c")  # asked after it; then the driver is killed
    restored = optuna_searcher(study)  # as Tuner.restore: a fresh one, then restore
    with pytest.warns(UserWarning, match=r"Optuna trials \[2\]"):
        restored.restore(str(tmp_path / "searcher.pkl"))
    new = restored.suggest("c2")
    assert new != orphan and new not in kept
    ot = optuna.load_study(study_name="orphans", storage=url)
    assert [t.state.name for t in ot.trials] == ["RUNNING", "RUNNING", "FAIL", "RUNNING"]
    restored.on_trial_complete("a", {"val_accuracy": 0.5})  # owned: gets its value
    assert optuna.load_study(study_name="orphans", storage=url).trials[0].value == 0.5


def test_resumable_asha_never_stops_on_a_replayed_row():
    from ray.tune.schedulers import TrialScheduler

    from lk_study.searchers import REPLAYED, ResumableASHA

    class Trial:
        def __init__(self, trial_id):
            self.trial_id = trial_id

    asha = ResumableASHA(
        time_attr="step", metric="val_accuracy", mode="max", max_t=40, grace_period=10
    )
    good, bad, late = Trial("good"), Trial("bad"), Trial("late")
    for t in (good, bad, late):
        asha.on_trial_add(None, t)
    row = {"step": 10, "val_accuracy": 0.9, REPLAYED: True}
    assert asha.on_trial_result(None, good, row) == TrialScheduler.CONTINUE
    low = {"step": 10, "val_accuracy": 0.1}
    assert asha.on_trial_result(None, bad, {**low, REPLAYED: True}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, late, low) == TrialScheduler.STOP  # a new row: judged


def test_each_checkpoint_keeps_the_history_and_a_resumed_run_carries_it_on():
    import copy

    from lk_study.config import Config, with_overrides
    from lk_study.train import fit

    cfg = with_overrides(
        Config(),
        {
            "task.name": "sparsity",
            "task.size": 64,
            "task.seq_len": 16,
            "task.num_signal": 3,
            "task.num_types": 3,
            "model.d_model": 16,
            "model.num_layers": 1,
            "model.num_heads": 2,
            "model.d_ff": 32,
            "train.max_steps": 6,
            "train.eval_every": 2,
            "train.batch_size": 8,
            "model.dropout": 0.3,  # dropout draws from torch's random state: restored too
        },
    )
    full, snaps = [], []
    fit(cfg, lambda m, s: (full.append(m), snaps.append(copy.deepcopy(s))))
    assert [[r["step"] for r in s["history"]] for s in snaps] == [[2], [2, 4], [2, 4, 6]]
    assert snaps[-1]["history"] == full
    resumed = []
    fit(cfg, lambda m, s: resumed.append(s), state=snaps[0])
    assert [r["step"] for r in resumed[-1]["history"]] == [2, 4, 6]
    assert resumed[-1]["history"][0] == full[0]  # the rows before the checkpoint, as reported
    for r, f in zip(resumed[-1]["history"][1:], full[1:], strict=True):  # and after it, exactly
        for m in ("train_loss", "val_loss", "val_accuracy"):
            assert r[m] == pytest.approx(f[m], abs=1e-7), (r["step"], m)


def test_restart_registers_the_newest_complete_checkpoint_and_deletes_the_rest(tmp_path):
    from lk_study.searchers import REPLAYED
    from lk_study.train import write_history
    from lk_study.trial import TRAIN_SNAPSHOT, restart_history

    run = tmp_path / "train-x"
    rows = [{"step": s, "val_accuracy": s / 100, "total_steps": 40} for s in STEPS]
    for i in range(3):  # checkpoints at 10, 20, 30
        folder = run / f"checkpoint_{i}"
        folder.mkdir(parents=True)
        (folder / "state.pt").write_bytes(b"x" * (10 + i))
        write_history(rows[: i + 1], str(folder))
    (run / "checkpoint_2" / "state.pt").write_bytes(b"x")  # 30: upload cut short by the kill
    registered = {"version": 0, "checkpoint_dir_name": "checkpoint_0", "metrics": rows[0]}
    snapshot = {  # 10 registered; 20 uploaded, not registered yet when the driver died
        "ray_version": "2.60.0",
        "checkpoint_results": [registered],
        "checkpoint_report_indices": [0],
        "latest_checkpoint_result": registered,
        "pending_training_results": [],
        "pending_validation_specs": [],
        "current_report_index": 1,
        "validated_checkpoint_dir_names": [],
        "timed_out_validation_checkpoint_dir_names": [],
        "failed_validation_checkpoint_dir_names": [],
    }
    (run / TRAIN_SNAPSHOT).write_text(json.dumps(snapshot))
    replay = restart_history(str(run))
    assert [r["step"] for r in replay] == [10, 20] and all(r[REPLAYED] for r in replay)
    assert replay[-1]["checkpoint_path"] == str(run / "checkpoint_1")
    assert sorted(p.name for p in run.glob("checkpoint_*") if p.is_dir()) == ["checkpoint_1"]
    now = json.loads((run / TRAIN_SNAPSHOT).read_text())
    assert now["latest_checkpoint_result"]["checkpoint_dir_name"] == "checkpoint_1"
    assert now["checkpoint_results"] == [now["latest_checkpoint_result"]]
    assert set(now) == set(snapshot) and now["current_report_index"] == 2
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import (
        _CheckpointManagerState,
    )

    _CheckpointManagerState.parse_obj(now)  # Ray Train reads it back
    assert restart_history(str(run)) == replay  # a second kill: the same again
    (run / TRAIN_SNAPSHOT).write_text('{"ray_ver')  # the snapshot itself cut short
    assert restart_history(str(run)) == replay
    assert restart_history(str(tmp_path / "new")) == []  # a new trial


def test_trial_runner_resumes_from_its_newest_complete_checkpoint(tmp_path):
    """The trial runner's restart (no Ray Train snapshot): the newest checkpoint whose files
    are all there at their sizes; older ones, one cut short and a half-renamed one deleted."""
    from lk_study.searchers import REPLAYED
    from lk_study.train import write_history
    from lk_study.trial import finished, resume_point

    run = tmp_path / "train-x"
    rows = [{"step": s, "total_steps": 40} for s in STEPS]
    for i in range(3):  # checkpoints at 10, 20, 30
        folder = run / f"checkpoint_{i:06d}"
        folder.mkdir(parents=True)
        (folder / "state.pt").write_bytes(b"x" * (10 + i))
        write_history(rows[: i + 1], str(folder))
    (run / "checkpoint_000002" / "state.pt").write_bytes(b"x")  # 30: cut short by a kill
    (run / ".checkpoint_000003.tmp").mkdir()  # 40: killed before its rename
    name, replay = resume_point(str(run))
    assert name == "checkpoint_000001"
    assert [r["step"] for r in replay] == [10, 20] and all(r[REPLAYED] for r in replay)
    assert replay[-1]["checkpoint_path"] == str(run / "checkpoint_000001")
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_000001"]
    assert not finished(replay) and finished([{"step": 40, "total_steps": 40}])
    assert resume_point(str(tmp_path / "new")) == (None, [])
