"""One trial's training and checkpoints, on either runner (``lk_study.config.runner``).

``run_in_trial(cfg, run)``, the ``trial`` runner: the one training loop (``train.fit``) inside
the Tune trial's own process (the trial reserves the worker's CPUs/GPUs): no Ray Train
controller, worker group or process group to start, and Tune reuses the trial actor for the
next trial, so a trial starts in about a second. Its checkpoints go where Ray Train's would,
``STUDY/train_runs/train-<trial_id>/checkpoint_NNNNNN`` (written to a temporary name and
renamed, ``HISTORY_FILE`` last), so resume, ``study:`` references and spectra read both
runners alike; the newest one is kept.

Restarted trials (a driver kill and ``Tuner.restore``, or Tune's retry of a failed trial)
resume from the newest *complete* checkpoint (every file its ``HISTORY_FILE`` lists, at its
size) and give Tune the metric history it keeps again, marked ``REPLAYED``
(``lk_study.searchers.ResumableASHA`` never stops a trial on those rows): at most one
evaluation interval is redone and every curve is whole. ``restart_history`` does the same for
the ``train`` runner's Ray Train runs, through Ray Train's checkpoint snapshot.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

import ray
from ray import tune

from lk_study import storage as study_files
from lk_study.config import Config

TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's registered checkpoints
CHECKPOINT_PATH = "checkpoint_path"  # what TuneReportCallback adds to a row with a checkpoint


def restart_history(run: str) -> list[dict]:
    """Before a Tune trial's Train run ``run`` (folder or URI) starts: make it resume from its
    newest complete checkpoint, delete the other ``checkpoint_*`` folders, and return the
    metric history that checkpoint keeps (every report up to it, each marked ``REPLAYED``,
    the last with its ``checkpoint_path``); [] for a new run.

    Ray Train registers a checkpoint up to a poll interval (2 s) after its upload; a driver
    killed in between would leave it unregistered and redo two evaluation intervals, so a
    newer complete one is registered here (``_adopt``). Called once per Tune trial start, so
    a worker-group restart inside ``trainer.fit()`` (Tune's rows intact) replays nothing."""
    from lk_study.searchers import REPLAYED

    snapshot = _adopt(run, _read(run, TRAIN_SNAPSHOT))
    latest = snapshot.get("latest_checkpoint_result") or {}
    _delete_unregistered(run, _registered(snapshot))
    if not latest.get("checkpoint_dir_name"):
        return []
    ckpt = study_files.join(run, latest["checkpoint_dir_name"])
    history = (_read(ckpt, HISTORY) or {}).get("rows") or []
    if not history:  # a checkpoint from before histories: at least its own metrics
        history = [latest["metrics"]] if latest.get("metrics") else []
    rows = [{**row, REPLAYED: True} for row in history]
    if rows:
        rows[-1][CHECKPOINT_PATH] = study_files.filesystem(ckpt)[1]
    return rows


HISTORY = "history.json"  # lk_study.train.HISTORY_FILE (no torch import needed to read it)


def _registered(snapshot: dict) -> set:
    """The checkpoint folders Ray Train's snapshot names."""
    latest = snapshot.get("latest_checkpoint_result") or {}
    results = [
        *snapshot.get("checkpoint_results", []),
        *snapshot.get("pending_training_results", []),
    ]
    return {r.get("checkpoint_dir_name") for r in [*results, latest] if r}


def tidy_run(run: str) -> None:
    """After a Ray Train run ``run`` ends: delete the ``checkpoint_*`` folders it wrote but
    never registered (a worker killed between its upload and Ray Train's registration, then
    restarted), so only the kept checkpoint (``num_to_keep=1``) stays."""
    snapshot = _read(run, TRAIN_SNAPSHOT)
    if snapshot.get("latest_checkpoint_result") and not snapshot.get("pending_training_results"):
        _delete_unregistered(run, _registered(snapshot))


def _read(folder: str, name: str) -> dict:
    """JSON file ``name`` in ``folder``; {} when missing or cut short."""
    try:
        value = study_files.read_json(folder, name)
    except (ValueError, OSError):
        return {}
    return value if isinstance(value, dict) else {}


def _complete(run: str, name: str) -> list[dict]:
    """The history of checkpoint folder ``name`` if its upload finished (every file that
    its history lists, at its size), else []."""
    import pyarrow.fs as pafs

    folder = study_files.join(run, name)
    history = _read(folder, HISTORY)
    fs, root = study_files.filesystem(folder)
    for file, size in (history.get("files") or {}).items():
        info = fs.get_file_info(f"{root}/{file}")
        if info.type != pafs.FileType.File or info.size != size:
            return []
    return history.get("rows") or []


def _adopt(run: str, snapshot: dict) -> dict:
    """``snapshot`` (Ray Train's, {} if none), rewritten to register the newest complete
    checkpoint folder of ``run`` when it is newer than the registered latest one."""
    latest = snapshot.get("latest_checkpoint_result") or {}
    if snapshot.get("pending_training_results"):
        return snapshot  # validations pending: leave Ray's state alone
    step = (latest.get("metrics") or {}).get("step", -1)
    newest = None
    for name in _checkpoint_folders(run):
        rows = [] if name == latest.get("checkpoint_dir_name") else _complete(run, name)
        if rows and rows[-1].get("step", -1) > step:
            newest, step = (name, rows[-1]), rows[-1]["step"]
    if newest is None:
        if not snapshot and study_files.exists(study_files.join(run, TRAIN_SNAPSHOT)):
            fs, path = study_files.filesystem(study_files.join(run, TRAIN_SNAPSHOT))
            fs.delete_file(path)  # cut short by a kill, nothing to register: start afresh
        return snapshot
    result = {"version": 0, "checkpoint_dir_name": newest[0], "metrics": newest[1]}
    index = snapshot.get("current_report_index", 0)
    empty: dict = {"pending_training_results": [], "pending_validation_specs": []}
    for key in ("validated", "timed_out_validation", "failed_validation"):
        empty[f"{key}_checkpoint_dir_names"] = []
    snapshot = {
        "ray_version": ray.__version__,
        **empty,
        **snapshot,
        "checkpoint_results": [result],
        "checkpoint_report_indices": [index],
        "latest_checkpoint_result": result,
        "current_report_index": index + 1,
    }
    fs, root = study_files.filesystem(study_files.join(run, TRAIN_SNAPSHOT))
    with fs.open_output_stream(root) as f:
        f.write(json.dumps(snapshot).encode())
    return snapshot


def _checkpoint_folders(run: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, root = study_files.filesystem(run)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return sorted(
        i.base_name
        for i in infos
        if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")
    )


def _delete_unregistered(run: str, keep: set) -> None:
    """Delete the ``checkpoint_*`` folders of Train run ``run`` not named in ``keep``."""
    fs, _ = study_files.filesystem(run)
    for name in _checkpoint_folders(run):
        if name not in keep:
            fs.delete_dir(study_files.filesystem(study_files.join(run, name))[1])


def resume_point(run: str) -> tuple[str | None, list[dict]]:
    """The ``trial`` runner's restart: (the newest complete checkpoint folder of ``run`` or
    None, its history as replayed rows, the last with its ``checkpoint_path``); every other
    ``checkpoint_*`` folder (older, or cut short by a kill) is deleted."""
    from lk_study.searchers import REPLAYED

    newest, rows = None, []
    for name in _checkpoint_folders(run):
        history = _complete(run, name)
        if history and history[-1].get("step", -1) >= (rows[-1]["step"] if rows else -1):
            newest, rows = name, history
    _delete_unregistered(run, {newest})
    fs, root = study_files.filesystem(run)
    if study_files.is_local(fs) and os.path.isdir(root):  # save_checkpoint's, cut by a kill
        for leftover in os.listdir(root):
            if leftover.startswith(".checkpoint_") and leftover.endswith(".tmp"):
                shutil.rmtree(os.path.join(root, leftover), ignore_errors=True)
    if newest is None:
        return None, []
    rows = [{**row, REPLAYED: True} for row in rows]
    rows[-1][CHECKPOINT_PATH] = study_files.filesystem(study_files.join(run, newest))[1]
    return newest, rows


def finished(rows: list[dict]) -> bool:
    """Whether replayed ``rows`` end at the run's last step (killed after its final one)."""
    return bool(rows) and rows[-1].get("step", 0) >= rows[-1].get("total_steps", math.inf)


def _load_state(folder: str) -> dict:
    import torch

    from lk_study.checkpoints import CHECKPOINT_FILE

    fs, path = study_files.filesystem(folder)
    with tempfile.TemporaryDirectory() as d:
        if study_files.is_local(fs):
            return torch.load(os.path.join(path, CHECKPOINT_FILE), weights_only=False)
        import pyarrow.fs as pafs

        pafs.copy_files(f"{path}/{CHECKPOINT_FILE}", f"{d}/{CHECKPOINT_FILE}", source_filesystem=fs)
        return torch.load(os.path.join(d, CHECKPOINT_FILE), weights_only=False)


def save_checkpoint(snapshot: dict, run: str, name: str) -> str:
    """Write ``snapshot`` as checkpoint folder ``name`` of ``run`` (path or URI), whole or
    not at all: local folders are written under a temporary name and renamed; on URIs the
    history file goes last (a reader takes a checkpoint as whole only when every file it
    lists is there). Returns the folder's filesystem path (as Tune's ``checkpoint_path``)."""
    from lk_study.train import HISTORY_FILE, write_checkpoint

    fs, target = study_files.filesystem(study_files.join(run, name))
    with tempfile.TemporaryDirectory() as d:
        write_checkpoint(snapshot, d)
        if study_files.is_local(fs):
            tmp = f"{os.path.dirname(target)}/.{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(d, tmp)
            os.replace(tmp, target)
        else:
            import pyarrow.fs as pafs

            names = sorted(os.listdir(d), key=lambda n: n == HISTORY_FILE)  # history last
            for file in names:
                pafs.copy_files(f"{d}/{file}", f"{target}/{file}", destination_filesystem=fs)
    return target


def run_in_trial(cfg: Config, run: str) -> None:
    """The ``trial`` runner: train ``cfg`` in this Tune trial's process, checkpoints in
    Train run folder ``run``; a restarted trial resumes from its newest complete checkpoint
    and replays its history first (``resume_point``)."""
    import torch

    from lk_study.train import fit, localise

    cfg = localise(cfg)
    torch.set_num_threads(max(1, int(cfg.scaling.resources_per_worker.get("CPU", 1.0))))
    newest, rows = resume_point(run)
    for row in rows:
        tune.report(row)  # Ray 3a': old rows again (REPLAYED), no checkpoint
    if finished(rows):
        return
    state = _load_state(study_files.join(run, newest)) if newest else None
    index = int(newest.rsplit("_", 1)[1]) + 1 if newest else 0

    def report(metrics: dict, snapshot: dict | None) -> None:
        nonlocal index
        if snapshot is None:
            tune.report(metrics)
            return
        name = f"checkpoint_{index:06d}"
        path = save_checkpoint(snapshot, run, name)
        _delete_unregistered(run, {name})  # the newest is kept (num_to_keep=1)
        index += 1
        tune.report({**metrics, CHECKPOINT_PATH: path})  # Ray 3b': a row, after its checkpoint

    device = torch.device("cuda" if cfg.scaling.use_gpu else "cpu")
    fit(cfg, report, device=device, state=state)  # Ray 3c': the loop; raising fails the trial
