"""The study folder's layout and its filesystem (a local path or an s3:// / gs:// URI, via
pyarrow); no pandas beyond ``write_trials``' frame, no Ray, no training code.

    STUDY/lk_study.json                     the study record (STUDY_FILE)
    STUDY/trials.parquet                    the trials table, written at the end (TRIALS_FILE)
    STUDY/experiment_state*.json            Tune's state: each trial's status
    STUDY/<trial folder>/params.json        the trial's searched values
    STUDY/<trial folder>/result.json        one JSON line per report
    STUDY/<trial folder>/error.txt          the traceback of a failed trial
    STUDY/train_runs/train-<trial_id>/checkpoint_*   the trial's Train checkpoints
"""

from __future__ import annotations

import json
import re
from typing import Any

import pyarrow.fs as pafs

STUDY_FILE = "lk_study.json"
TRIALS_FILE = "trials.parquet"
TUNE_META = {  # keys Tune adds to every report (not metrics)
    "timestamp",
    "checkpoint_dir_name",
    "done",
    "training_iteration",
    "trial_id",
    "date",
    "time_this_iter_s",
    "time_total_s",
    "pid",
    "hostname",
    "node_ip",
    "config",
    "time_since_restore",
    "iterations_since_restore",
    "checkpoint_path",
}
_TUNE_META = TUNE_META


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path in it) of a local path or s3:// / gs:// URI."""
    return pafs.FileSystem.from_uri(uri)


def join(uri: str, name: str) -> str:
    return f"{uri.rstrip('/')}/{name}"


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_text(uri: str, name: str) -> str | None:
    """The text of file ``name`` in folder ``uri``, or None if there is no such file."""
    fs, root = filesystem(uri)
    path = join(root, name)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def read_json(uri: str, name: str) -> Any:
    text = read_text(uri, name)
    return None if text is None else json.loads(text)


def write_json(uri: str, name: str, obj: Any) -> None:
    fs, root = filesystem(uri)
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(join(root, name)) as f:
        f.write(json.dumps(obj, indent=1, sort_keys=True).encode())


def write_trials(trials, uri: str, name: str = TRIALS_FILE) -> str:
    """Write the trials table (a DataFrame) as Parquet into the study folder; returns its
    location."""
    fs, root = filesystem(uri)
    target = join(root, name)
    trials.to_parquet(target, filesystem=fs, index=False)
    return target if "://" not in uri else join(uri, name)


def subfolders(uri: str) -> list[str]:
    """The names of the folders directly under ``uri``."""
    fs, root = filesystem(uri)
    return [
        i.base_name
        for i in fs.get_file_info(pafs.FileSelector(root))
        if i.type == pafs.FileType.Directory
    ]


def statuses(uri: str) -> dict[str, str]:
    """trial_id -> Tune status, from Tune's experiment state file (newest)."""
    fs, root = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    states = sorted(i.path for i in infos if re.search(r"experiment_state.*\.json$", i.base_name))
    if not states:
        return {}
    with fs.open_input_stream(states[-1]) as f:
        state = json.loads(f.read().decode())
    out = {}
    for entry in state.get("trial_data", []):
        meta = entry[0] if isinstance(entry, list) else entry
        meta = json.loads(meta) if isinstance(meta, str) else meta
        tid = meta.get("trial_id")
        if tid:
            out[tid] = meta.get("status", "UNKNOWN")
    return out


_statuses = statuses


def error_reason(text: str) -> str:
    """The last line of a Tune error file that names an exception (the reason a trial failed)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception)\b", line):
            return line
    return lines[-1] if lines else ""


def trial_run(study_path: str, trial_id: str) -> str:
    """The Train run folder of a trial, ``STUDY/train_runs/train-<trial_id>``."""
    return join(study_path, f"train_runs/train-{trial_id}")


def newest_checkpoint(run: str) -> str | None:
    """The newest ``checkpoint_*`` folder of a Train run folder (path or URI), or None."""
    fs, root = filesystem(run)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    names = sorted(
        i.base_name
        for i in infos
        if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")
    )
    return join(run, names[-1]) if names else None
