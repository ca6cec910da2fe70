"""Chaos on the study's storage (faults.md D1, D3, D5, D6): a full and a read-only disk mid
study, two drivers on one study and two studies side by side, a damaged study, starts that
fail. Real CLI subprocesses on tiny quickstart studies; mounts need root (tmpfs)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lk_study import analysis, storage

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
STUDY = "quickstart-smoke"
SMOKE = [
    "--smoke",
    "--set",
    "train.max_steps=30",
    "--set",
    "train.eval_every=10",
    "--set",
    "scheduler.name=none",
]
WAIT = 900  # seconds; the studies take about a minute on an idle 2-core machine


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lk_study.cli", *args]


def tune_cmd(storage_dir: Path, trials: int, *extra: str, study: str = "") -> list[str]:
    study = study or "search_spaces/quickstart.yaml"
    sets = ["--set", f"budget.num_samples={trials}", *extra]
    return cli("tune", study, "--storage", str(storage_dir), *SMOKE, *sets)


class Driver:
    """A CLI subprocess with its output in files; killed (its process group) if left."""

    def __init__(self, cmd: list[str], log: Path) -> None:
        self.log = log
        self.out, self.err = open(f"{log}.out", "w"), open(f"{log}.err", "w")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=self.out, stderr=self.err, start_new_session=True
        )
        self.t0 = time.monotonic()

    def wait(self, timeout: float = WAIT) -> int:
        rc = self.proc.wait(timeout)
        self.out.close()
        self.err.close()
        self.seconds = time.monotonic() - self.t0
        return rc

    @property
    def stderr(self) -> str:
        return Path(f"{self.log}.err").read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def drivers():
    started: list[Driver] = []
    yield lambda cmd, log: started.append(Driver(cmd, log)) or started[-1]
    for d in started:
        d.kill()


def run(*args: str, timeout: float = WAIT) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def until(check, driver: Driver | None = None, timeout: float = WAIT, what: str = ""):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = check()
        except Exception:
            value = None
        if value:
            return value
        if driver is not None and driver.proc.poll() is not None:
            raise AssertionError(f"driver ended (rc {driver.proc.returncode}) before {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def finished(exp: Path) -> dict[str, dict[str, bytes]]:
    """TERMINATED trial id -> its folder's result.json / params.json bytes."""
    states = storage.statuses(str(exp)) or {}
    out = {}
    for folder in exp.iterdir():
        tid = folder.name.split("_")[2] if folder.name.startswith("trial_driver_") else ""
        if states.get(tid) == "TERMINATED":
            out[tid] = {f: (folder / f).read_bytes() for f in ("result.json", "params.json")}
    return out


def one_line_error(err: str) -> str:
    """The driver's own error: one line, its last, no traceback of its own after Ray's logs
    (Ray's processes and Tune's sync warnings print theirs before it)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("lk-study: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err[-3000:]
    return errors[0]


@pytest.fixture
def tmpfs(tmp_path):
    """A 24 MiB tmpfs (root only); unmounted at the end."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24M", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs (needs root)")
    yield mnt
    subprocess.run(["mount", "-o", "remount,rw", str(mnt)])
    subprocess.run(["umount", "-l", str(mnt)])


def fill(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` to the last byte."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 20, 4096, 1):
            try:
                while f.write(b"\0" * chunk):
                    pass
            except OSError:
                pass
    return filler


# ---------------------------------------------------------------- (a) + (b) full, read-only


def test_full_then_read_only_storage_stops_the_study_and_loses_nothing(tmpfs, tmp_path, drivers):
    """3 trials one at a time. The disk fills after trial 1: the driver stops with one line,
    trial 1's records intact, results readable; after freeing space resume goes on. The
    storage turns read-only after trial 2: the same; after remounting rw resume finishes."""
    exp = tmpfs / STUDY
    cmd = tune_cmd(tmpfs, 3, "--set", "budget.max_concurrent=1")
    report = {}
    for fault, done_before in (("full", 1), ("read-only", 2)):
        if fault == "full":
            d = drivers(cmd, tmp_path / "a")
        else:  # the resumed study runs on; turn the storage read-only after its 2nd trial
            d = drivers(cli("resume", str(exp)), tmp_path / "b")
        before = until(
            lambda n=done_before: (f := finished(exp)) and len(f) >= n and f, d, what=fault
        )
        if fault == "full":
            filler = fill(tmpfs)
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
        rc = d.wait()
        line = one_line_error(d.stderr)
        fix = "free space" if fault == "full" else "make it writable"
        assert rc == 1
        assert (
            line
            == f"lk-study: error: storage {exp} is {fault}; {fix} and run lk-study resume {exp}"
        )
        after = finished(exp)
        assert {t: after.get(t) for t in before} == before  # finished records untouched
        results = run("results", str(exp))
        assert results.returncode == 0, results.stderr[-2000:]
        assert all(t in results.stdout for t in before)
        if fault == "full":
            filler.unlink()
        else:
            subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
        report[fault] = (len(before), d.seconds)
    resumed = run("resume", str(exp))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    study = analysis.load_study(exp)
    assert list(study.trials.status) == ["TERMINATED"] * 3
    final = finished(exp)
    assert {t: final[t] for t in before} == before  # rows lost: 0
    steps = study.curves.groupby("trial_id").step.apply(sorted)
    assert all(s[-1] == 30 for s in steps), steps
    assert not (exp / storage.LOCK_FILE).exists()
    print("finished before the fault, driver seconds:", report)


# ---------------------------------------------------------------- (c) + (e) drivers, starts


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory):
    """Storage A: a study, and a second driver on it. Storage B: two starts that fail (use_gpu
    on this CPU machine; an objective the task never reports), then the fixed file, run while
    A's study runs. Returns what happened."""
    tmp = tmp_path_factory.mktemp("side")
    out = {"tmp": tmp}
    a = Driver(tune_cmd(tmp / "A", 2), tmp / "a1")
    try:
        until(lambda: (tmp / "A" / STUDY / storage.LOCK_FILE).exists(), a, what="A's lock")
        t0 = time.monotonic()
        out["second"] = run(*tune_cmd(tmp / "A", 2)[3:], timeout=120)
        out["second_s"] = time.monotonic() - t0
        text = (ROOT / "search_spaces/quickstart.yaml").read_text()
        bad = {
            "gpu": text.replace("use_gpu: false", "use_gpu: true"),
            "objective": text.replace("metric: val_accuracy", "metric: val_f1"),
        }
        for key, body in bad.items():
            path = tmp / f"{key}.yaml"
            path.write_text(body)
            out[key] = run(*tune_cmd(tmp / "B", 2, study=str(path))[3:], timeout=120)
            out[f"{key}_B_exists"] = (tmp / "B").exists()
        b = Driver(tune_cmd(tmp / "B", 2), tmp / "b1")
        out["rc"] = (a.wait(), b.wait())
        out["seconds"] = (a.seconds, b.seconds)
        out["stderr"] = (a.stderr, b.stderr)
    finally:
        a.kill()
        if "b" in locals():
            b.kill()
    return out


def test_one_driver_per_study_and_two_studies_side_by_side(side_by_side):
    out, tmp = side_by_side, side_by_side["tmp"]
    second = out["second"]
    assert second.returncode == 2, second.stderr[-2000:]
    line = one_line_error(second.stderr)
    assert f"study {tmp}/A/{STUDY} is being run by another driver: PID" in line
    assert socket.gethostname() in line
    assert out["second_s"] < 60  # refused before Ray starts
    assert out["rc"] == (0, 0), [e[-3000:] for e in out["stderr"]]
    for store in ("A", "B"):
        study = analysis.load_study(tmp / store / STUDY)
        assert list(study.trials.status) == ["TERMINATED"] * 2
        assert not (tmp / store / STUDY / storage.LOCK_FILE).exists()
    print("two studies side by side, seconds:", out["seconds"])


def test_starts_that_fail_leave_the_storage_untouched(side_by_side):
    out, tmp = side_by_side, side_by_side["tmp"]
    gpu, objective = out["gpu"], out["objective"]
    assert gpu.returncode == 2 and objective.returncode == 2
    line = one_line_error(gpu.stderr)
    assert f"{tmp}/gpu.yaml:" in line and "scaling.use_gpu: one trial needs" in line
    line = one_line_error(objective.stderr)
    assert f"{tmp}/objective.yaml:" in line
    assert "objective.metric 'val_f1' is not reported by task sparsity" in line
    assert not out["gpu_B_exists"] and not out["objective_B_exists"]
    # and then the fixed file ran on that storage (the side-by-side test checks its trials)
    assert out["rc"][1] == 0


# ---------------------------------------------------------------- (d) a damaged study


def test_a_damaged_study_is_read_and_not_resumed(side_by_side, tmp_path):
    exp = tmp_path / STUDY
    shutil.copytree(side_by_side["tmp"] / "A" / STUDY, exp)
    trials = sorted(p for p in exp.iterdir() if p.name.startswith("trial_driver_"))
    rows = [len((t / "result.json").read_text().splitlines()) for t in trials]
    result = trials[0] / "result.json"
    text = result.read_text()
    result.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])  # cut mid-row
    (trials[1] / "params.json").write_text("")
    state = sorted(exp.glob("experiment_state-*.json"))[-1]
    state.write_text(state.read_text()[:100])
    with pytest.warns(UserWarning) as caught:
        study = analysis.load_study(exp)
    named = " ".join(str(w.message) for w in caught)
    assert str(result) in named and str(trials[1] / "params.json") in named
    assert str(state) in named
    assert len(study.trials) == 2  # the good trials: one row lost, the params from result.json
    assert len(study.curves) == sum(rows) - 1
    resumed = run("resume", str(exp), timeout=120)
    assert resumed.returncode == 2
    line = one_line_error(resumed.stderr)
    assert f"{exp} holds a study that cannot be resumed: {state} is damaged" in line
    assert not (exp / storage.LOCK_FILE).exists()


# ---------------------------------------------------------------- pieces, without Ray


def test_writes_are_atomic_and_finished_files_are_not_rewritten(tmpfs):
    storage.write_json(str(tmpfs), "lk_study.json", {"a": 1})
    filler = fill(tmpfs)
    with pytest.raises(OSError):
        storage.write_json(str(tmpfs), "lk_study.json", {"a": "x" * 100_000})
    assert json.loads((tmpfs / "lk_study.json").read_text()) == {"a": 1}
    assert [p.name for p in tmpfs.iterdir() if p.name.endswith(".tmp")] == []
    fault = storage.storage_fault(str(tmpfs))
    assert str(fault) == f"storage {tmpfs} is full; free space and run lk-study resume {tmpfs}"
    filler.unlink()
    src = tmpfs / "src"
    (src / "t1").mkdir(parents=True)
    (src / "t1" / "result.json").write_text('{"step": 10}\n')
    dst = tmpfs / "dst"
    storage.copy_tree(str(src), str(dst))
    inode = (dst / "t1" / "result.json").stat().st_ino
    (src / "t1" / "new.json").write_text("x" * 2_000_000)
    filler = fill(tmpfs)
    with pytest.raises(OSError):
        storage.copy_tree(str(src), str(dst))
    assert (dst / "t1" / "result.json").read_text() == '{"step": 10}\n'
    assert (dst / "t1" / "result.json").stat().st_ino == inode  # skipped, not rewritten
    filler.unlink()


def test_study_lock_names_the_holder_and_takes_over_stale_ones(tmp_path, capsys):
    uri = str(tmp_path / "s")
    lock = storage.acquire_lock(uri)
    with pytest.raises(storage.StudyBusy, match=rf"PID {os.getpid()} on {socket.gethostname()}"):
        storage.acquire_lock(uri)
    storage.release_lock(uri, lock)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = {"host": socket.gethostname(), "pid": dead.pid, "started": "then"}
    (tmp_path / "s" / storage.LOCK_FILE).write_text(json.dumps(stale))
    lock = storage.acquire_lock(uri)
    assert f"taking over the stale lock of {uri} (PID {dead.pid}" in capsys.readouterr().out
    assert lock["pid"] == os.getpid()
    storage.release_lock(uri, lock)
    assert not (tmp_path / "s" / storage.LOCK_FILE).exists()


def test_curves_keep_one_row_per_step(tmp_path):
    exp = tmp_path / "st"
    trial = exp / "trial_driver_abc_1_x"
    trial.mkdir(parents=True)
    storage.write_json(
        str(exp), storage.STUDY_FILE, {"config": {}, "objective": {"metric": "v", "mode": "max"}}
    )
    (trial / "params.json").write_text("{}")
    rows = [{"trial_id": "abc", "step": s, "v": v} for s, v in ((10, 1), (20, 2), (10, 3), (20, 4))]
    (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    curves = analysis.load_study(exp).curves
    assert curves[["step", "v"]].values.tolist() == [[10, 3], [20, 4]]
