"""Study results as pandas: one row per trial and one row per report (no Ray needed).

``load_study(path)`` reads a study folder (local path or s3:// / gs:// URI via pyarrow) while it
runs or after it ends:

    .trials  trial_id, status, the full config under dotted names (kernel.name, ...),
             the final metrics (step, val_accuracy, ...), best.<metric> for val_* metrics
    .curves  trial_id plus every reported metric, one row per evaluation
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow.fs as pafs

STUDY_FILE = "lk_study.json"
TRIALS_FILE = "trials.parquet"
METRICS = (
    "step",
    "epoch",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "tokens_per_s",
    "seconds",
    "lr",
    "peak_mem_mib",
    "num_params",
)
_TUNE_META = {
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


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri)


def read_text(uri: str, name: str) -> str | None:
    fs, root = _fs(uri)
    path = f"{root.rstrip('/')}/{name}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def read_json(uri: str, name: str) -> Any:
    text = read_text(uri, name)
    return None if text is None else json.loads(text)


def write_json(uri: str, name: str, obj: Any) -> None:
    fs, root = _fs(uri)
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root.rstrip('/')}/{name}") as f:
        f.write(json.dumps(obj, indent=1, sort_keys=True).encode())


def lower_is_better(metric: str) -> bool:
    return metric.endswith("loss")


@dataclass
class StudyResults:
    path: str
    trials: pd.DataFrame
    curves: pd.DataFrame
    objective: dict

    def leaderboard(self) -> pd.DataFrame:
        """Trials sorted best first on the study objective."""
        col = f"best.{self.objective['metric']}"
        if self.trials.empty or col not in self.trials:
            return self.trials
        keys = [col] + (["seconds"] if "seconds" in self.trials else [])
        ascending = [self.objective["mode"] == "min", True][: len(keys)]
        return self.trials.sort_values(keys, ascending=ascending, na_position="last").reset_index(
            drop=True
        )


def _statuses(uri: str) -> dict[str, str]:
    """trial_id -> Tune status, from Tune's experiment state file (newest)."""
    fs, root = _fs(uri)
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


def error_reason(text: str) -> str:
    """The last line of a Tune error file that names an exception (the reason a trial failed)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception)\b", line):
            return line
    return lines[-1] if lines else ""


def load_study(path: str) -> StudyResults:
    """Read a study folder (see module docstring)."""
    uri = path if "://" in path else str(__import__("pathlib").Path(path).resolve())
    meta = read_json(uri, STUDY_FILE)
    if meta is None:
        raise FileNotFoundError(f"{path}: not an lk_study study folder (no {STUDY_FILE})")
    fs, root = _fs(uri)
    statuses = _statuses(uri)
    base = meta["config"]
    rows, curves = [], []
    for info in fs.get_file_info(pafs.FileSelector(root)):
        if info.type != pafs.FileType.Directory:
            continue
        params_text = read_text(f"{uri.rstrip('/')}/{info.base_name}", "params.json")
        if params_text is None:
            continue
        params = json.loads(params_text)
        params = params.get("point", params)  # grid/random studies: one dict per trial
        result_text = read_text(f"{uri.rstrip('/')}/{info.base_name}", "result.json") or ""
        reports = [json.loads(line) for line in result_text.splitlines() if line.strip()]
        tid = reports[-1]["trial_id"] if reports else info.base_name.split("_")[2]
        row: dict[str, Any] = {"trial_id": tid, "status": statuses.get(tid, "PENDING")}
        row.update(base)
        row.update({k: None for k in meta.get("search", {})})  # inactive conditionals: NaN
        row.update(params)
        last = reports[-1] if reports else {}
        for key, value in last.items():
            if key not in _TUNE_META:
                row[key] = value
        for r in reports:
            curves.append({"trial_id": tid, **{k: v for k, v in r.items() if k not in _TUNE_META}})
        for key in {k for r in reports for k in r if k.startswith("val_")}:
            values = [r[key] for r in reports if isinstance(r.get(key), (int, float))]
            if values:
                row[f"best.{key}"] = min(values) if lower_is_better(key) else max(values)
        error = read_text(f"{uri.rstrip('/')}/{info.base_name}", "error.txt")
        row["error"] = error_reason(error) if error else None
        row["checkpoint_path"] = last.get("checkpoint_path")
        row["trial_dir"] = info.base_name
        rows.append(row)
    trials = pd.DataFrame(rows)
    if not trials.empty:
        trials = trials.sort_values("trial_id").reset_index(drop=True)
    return StudyResults(uri, trials, pd.DataFrame(curves), meta["objective"])


def write_trials(trials: pd.DataFrame, uri: str, name: str = TRIALS_FILE) -> str:
    """Write the trials table as Parquet into the study folder; returns its location."""
    fs, root = _fs(uri)
    target = f"{root.rstrip('/')}/{name}"
    trials.to_parquet(target, filesystem=fs, index=False)
    return target if "://" not in uri else f"{uri.rstrip('/')}/{name}"


def format_leaderboard(results: StudyResults, top: int = 20) -> str:
    """The leaderboard as a plain-text table: searched parameters, step, objective."""
    board = results.leaderboard()
    if board.empty:
        return "(no trials yet)"
    obj = results.objective["metric"]
    searched = [k for k in (results_searched(results)) if k in board]
    cols = ["trial_id", "status", *searched, "step", obj, f"best.{obj}", "seconds"]
    cols = [c for c in dict.fromkeys(cols) if c in board]
    shown = board[cols].head(top).copy()
    for c in shown.select_dtypes("float").columns:
        shown[c] = shown[c].map(
            lambda v: "" if isinstance(v, float) and math.isnan(v) else f"{v:.4g}"
        )
    return f"Leaderboard ({obj}, {results.objective['mode']}):\n" + shown.to_string(index=False)


def results_searched(results: StudyResults) -> list[str]:
    meta = read_json(results.path, STUDY_FILE) or {}
    return list(meta.get("search", {}))
