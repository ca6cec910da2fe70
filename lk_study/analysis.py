"""Study results as pandas: one row per trial and one row per report (no Ray needed).

``load_study(path)`` reads a study folder (local path or s3:// / gs:// URI via pyarrow) while it
runs or after it ends:

    .trials  trial_id, status, the full config under dotted names (kernel.name, ...),
             the final metrics (step, val_accuracy, ...), best.<metric> for val_* metrics
    .curves  trial_id plus every reported metric, one row per evaluation

From those, the papers' artefacts (figures for each in ``lk_study.plots``):

    lra_table(study)        kernels × LRA tasks + Avg, mean ± std over seeds (SeedTable)
    glue_table(study)       kernels × GLUE official metrics + GLUE average (GlueTable)
    feature_curve(study)    metric vs kernel.num_features per family, over seeds
    efficiency(csv)         ``lk-study bench attention`` CSV + time/memory ratios to sdpa
    spectrum(checkpoint)    learned spectral parameters per layer/head, kernel vs distance
                            (lk_study.spectra; resolved lazily here, torch only then)
    param_importance(study) Optuna fANOVA importance of the searched parameters
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lk_study import storage

STUDY_FILE = storage.STUDY_FILE
TRIALS_FILE = storage.TRIALS_FILE
_TUNE_META = storage.TUNE_META
_fs = storage.filesystem  # the names tune.py and older notebooks used
exists = storage.exists
read_text = storage.read_text
read_json = storage.read_json
write_json = storage.write_json
write_trials = storage.write_trials
newest_checkpoint = storage.newest_checkpoint
error_reason = storage.error_reason
_statuses = storage.statuses


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


def load_study(path: str | Path) -> StudyResults:
    """Read a study folder (see module docstring)."""
    from lk_study.config import siblings

    path = str(path)
    uri = path if "://" in path else str(Path(path).resolve())
    meta = read_json(uri, STUDY_FILE)
    if meta is None:
        raise FileNotFoundError(f"{path}: not an lk_study study folder (no {STUDY_FILE})")
    statuses = storage.statuses(uri)
    base = meta["config"]
    rows, curves = [], []
    for name in storage.subfolders(uri):
        folder = storage.join(uri, name)
        params_text = read_text(folder, "params.json")
        if params_text is None:
            continue
        params = json.loads(params_text)
        params = params.get("point", params)  # grid/random studies: one dict per trial
        result_text = read_text(folder, "result.json") or ""
        reports = [json.loads(line) for line in result_text.splitlines() if line.strip()]
        tid = reports[-1]["trial_id"] if reports else name.split("_")[2]
        row: dict[str, Any] = {"trial_id": tid, "status": statuses.get(tid, "PENDING")}
        task = params.get("task.name", base.get("task.name"))
        if task == base.get("task.name") or siblings(task, base.get("task.name")):
            row.update(base)
        else:  # a variant switched the task: the base task's own fields do not apply
            row.update({k: v for k, v in base.items() if not k.startswith("task.")})
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
        error = read_text(folder, "error.txt")
        row["error"] = error_reason(error) if error else None
        row["checkpoint_path"] = last.get("checkpoint_path")
        row["trial_dir"] = name
        rows.append(row)
    trials = pd.DataFrame(rows)
    if not trials.empty:
        trials = trials.sort_values("trial_id").reset_index(drop=True)
    return StudyResults(uri, trials, pd.DataFrame(curves), meta["objective"])


def format_leaderboard(results: StudyResults, top: int = 20, fmt: str = "text") -> str:
    """The leaderboard as a table: searched parameters, step, objective; ``fmt`` text (with a
    title line), markdown or csv."""
    board = results.leaderboard()
    if board.empty:
        return "(no trials yet)" if fmt != "csv" else ""
    obj = results.objective["metric"]
    searched = [k for k in (results_searched(results)) if k in board]
    cols = ["trial_id", "status", *searched, "step", obj, f"best.{obj}", "seconds"]
    cols = [c for c in dict.fromkeys(cols) if c in board]
    shown = board[cols].head(top).copy()
    if fmt == "csv":
        return shown.to_csv(index=False)
    for c in shown.select_dtypes("float").columns:
        shown[c] = shown[c].map(
            lambda v: "" if isinstance(v, float) and math.isnan(v) else f"{v:.4g}"
        )
    if fmt == "markdown":
        return to_markdown(shown, index=False)
    return f"Leaderboard ({obj}, {results.objective['mode']}):\n" + shown.to_string(index=False)


def results_searched(results: StudyResults) -> list[str]:
    """The keys that vary between trials: variant keys, then searched keys."""
    meta = read_json(results.path, STUDY_FILE) or {}
    variant_keys = [k for v in meta.get("variants", []) for k in v if k.startswith("task.name")]
    return list(dict.fromkeys([*variant_keys, *meta.get("search", {})]))


# ---------------------------------------------------------------------------- the paper's tables
#
# Every table below aggregates one metric over seeds (``train.seed``). When trials also differ
# in other config keys (a learning-rate grid, say), the *grid point* (every config key but the
# seed and the table's own keys) with the best mean over seeds is chosen per cell, and the cell
# reports that point's mean and sample standard deviation (ddof = 1; NaN for one seed). Trials
# that ended in ERROR (a NaN loss) and trials without the metric yet are left out, so a running
# study gives the table of what has finished so far.

SEED = "train.seed"
CONFIG_PREFIXES = ("task.", "model.", "kernel.", "train.", "scaling.")
LRA_TASKS = {  # task.name prefix -> the LRA paper's column, in its order
    "listops": "ListOps",
    "text": "Text",
    "retrieval": "Retrieval",
    "image": "Image",
    "pathfinder": "Pathfinder",
}
GLUE_TASKS = {  # task -> (column label, its official dev metrics as (column, label))
    "glue/cola": ("CoLA", (("val_mcc", "MCC"),)),
    "glue/sst2": ("SST-2", (("val_accuracy", "acc"),)),
    "glue/mrpc": ("MRPC", (("val_accuracy", "acc"), ("val_f1", "F1"))),
    "glue/qqp": ("QQP", (("val_accuracy", "acc"), ("val_f1", "F1"))),
    "glue/stsb": ("STS-B", (("val_pearson", "Pearson"), ("val_spearman", "Spearman"))),
    "glue/mnli": ("MNLI", (("val_matched_accuracy", "m"), ("val_mismatched_accuracy", "mm"))),
    "glue/qnli": ("QNLI", (("val_accuracy", "acc"),)),
    "glue/rte": ("RTE", (("val_accuracy", "acc"),)),
    "glue/wnli": ("WNLI", (("val_accuracy", "acc"),)),
}
AVG = "Avg"
PERCENT_METRICS = ("accuracy", "mcc", "f1", "pearson", "spearman")


class NoResults(ValueError):
    """The study holds nothing the requested table or figure is built from; says what it has."""


def trials_of(study: StudyResults | pd.DataFrame) -> pd.DataFrame:
    """The trials table of a ``StudyResults``, or the frame itself."""
    return study.trials if isinstance(study, StudyResults) else study


def default_metric(study: StudyResults | pd.DataFrame) -> str:
    """``best.<objective metric>`` for a study, ``best.val_accuracy`` for a bare frame."""
    if isinstance(study, StudyResults):
        return f"best.{study.objective['metric']}"
    return "best.val_accuracy"


def metric_mode(metric: str) -> str:
    """'min' for losses (``val_loss``, ``best.val_loss``), else 'max'."""
    return "min" if lower_is_better(metric) else "max"


def percent_scale(metric: str) -> float:
    """100 for accuracy-like metrics (shown in %, as the papers do), else 1."""
    return 100.0 if metric.endswith(PERCENT_METRICS) else 1.0


def _usable(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Trials with a finite ``metric`` that did not end in ERROR."""
    if trials.empty or metric not in trials:
        have = [c for c in trials.columns if c.startswith(("best.", "val_"))]
        raise NoResults(
            f"no trial reports {metric!r} yet; metrics present: {', '.join(have) or 'none'}"
        )
    out = trials[pd.to_numeric(trials[metric], errors="coerce").notna()]
    if "status" in out:
        out = out[out["status"] != "ERROR"]
    out = out.copy()
    out[metric] = out[metric].astype(float)
    return out


def _point_keys(trials: pd.DataFrame, keys: list[str]) -> pd.Series:
    """One string per trial naming its grid point: every config column but ``keys`` and the
    seed (constant columns do not matter; inactive conditionals read as None)."""
    cols = [
        c for c in trials.columns if c.startswith(CONFIG_PREFIXES) and c not in keys and c != SEED
    ]

    def name(row: pd.Series) -> str:
        point = {c: None if _missing(row[c]) else row[c] for c in cols}
        return json.dumps(point, sort_keys=True, default=str)

    return trials.apply(name, axis=1) if len(trials) else pd.Series([], dtype=str)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def best_points(
    study: StudyResults | pd.DataFrame, keys: list[str], metric: str, mode: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per value of ``keys``: the grid point with the best mean ``metric`` over seeds.

    Returns (cells, runs): ``cells`` one row per key combination with ``mean``, ``std``
    (ddof = 1), ``count`` (seeds), ``point`` (the chosen config, JSON) and ``trial_ids``;
    ``runs`` the chosen point's trials (keys, seed, metric), one row per seed.
    """
    mode = mode or metric_mode(metric)
    df = _usable(trials_of(study), metric)
    if df.empty:
        raise NoResults(f"no finished trial has {metric!r}")
    df["point"] = _point_keys(df, keys)
    grouped = df.groupby([*keys, "point"], dropna=False, sort=False)
    stats = grouped[metric].agg(["mean", "std", "count"]).reset_index()
    stats["trial_ids"] = grouped["trial_id"].agg(list).values if "trial_id" in df else None
    order = stats.sort_values("mean", ascending=mode == "min", kind="stable")
    cells = order.drop_duplicates(keys, keep="first").reset_index(drop=True)
    runs = df.merge(cells[[*keys, "point"]], on=[*keys, "point"], how="inner")
    seed = runs[SEED] if SEED in runs else pd.Series(0, index=runs.index)
    runs = runs.assign(**{SEED: seed})[[*keys, SEED, metric]]
    return cells, runs


@dataclass
class SeedTable:
    """A rows × columns table of a metric aggregated over seeds (see ``seed_table``).

    mean, std, count: DataFrames of the same shape (count = seeds per cell). The ``Avg``
    column (when present) is the mean of the row's cells; its std is over the seeds that every
    cell of the row has, of the per-seed average (NaN with fewer than two such seeds).
    """

    mean: pd.DataFrame
    std: pd.DataFrame
    count: pd.DataFrame
    metric: str

    def formatted(self, scale: float | None = None, digits: int = 2) -> pd.DataFrame:
        """'mean ± std' strings (× ``scale``, default 100 for accuracy-like metrics); a cell
        with one seed shows the mean alone, an empty cell ''."""
        scale = percent_scale(self.metric) if scale is None else scale
        return format_mean_std(self.mean * scale, self.std * scale, digits)

    def tidy(self) -> pd.DataFrame:
        """One row per cell: row key, column, mean, std, count."""
        stacked = {"mean": self.mean.stack(), "std": self.std.stack(), "count": self.count.stack()}
        out = pd.DataFrame(stacked).reset_index()
        return out.rename(columns={out.columns[1]: "column"})


def format_mean_std(mean: pd.DataFrame, std: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """Element-wise 'mean ± std' strings ('' where mean is NaN, the mean alone where std is)."""

    def cell(m: float, s: float) -> str:
        if _missing(m):
            return ""
        return f"{m:.{digits}f}" if _missing(s) else f"{m:.{digits}f} ± {s:.{digits}f}"

    out = pd.DataFrame(index=mean.index, columns=mean.columns, dtype=object)
    for c in mean.columns:
        out[c] = [cell(m, s) for m, s in zip(mean[c], std[c], strict=True)]
    return out


def _row_order(values: list[Any], key: str) -> list[Any]:
    """Kernels in registry order (the paper's rows), anything else sorted."""
    if key == "kernel.name":
        from lk_study.kernels import KERNELS

        known = [k for k in KERNELS if k in values]
        return known + sorted(v for v in values if v not in KERNELS)
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def seed_table(
    study: StudyResults | pd.DataFrame,
    rows: str = "kernel.name",
    columns: str = "task.name",
    metric: str | None = None,
    labels: dict[Any, str] | None = None,
    average: bool = True,
) -> SeedTable:
    """``rows`` × ``columns`` (two config keys) of ``metric`` (default: the study's
    ``best.<objective>``), mean and std over seeds, plus an ``Avg`` column.

    ``labels`` renames (and orders) the columns; columns it does not name are dropped.
    """
    metric = metric or default_metric(study)
    trials = trials_of(study)
    for key in (rows, columns):
        if key not in trials:
            raise NoResults(f"the trials table has no column {key!r}")
    cells, runs = best_points(trials, [rows, columns], metric)
    if labels is not None:
        cells = cells[cells[columns].isin(labels)]
        runs = runs[runs[columns].isin(labels)]
    row_keys = _row_order(list(cells[rows].unique()), rows)
    col_keys = list(labels) if labels is not None else _row_order(list(cells[columns].unique()), "")
    col_keys = [c for c in col_keys if c in set(cells[columns])]

    def pivot(values: str) -> pd.DataFrame:
        p = cells.pivot(index=rows, columns=columns, values=values)
        return p.reindex(index=row_keys, columns=col_keys)

    mean, std, count = pivot("mean"), pivot("std"), pivot("count")
    if average and col_keys:
        mean[AVG] = mean[col_keys].mean(axis=1, skipna=False)
        per_seed = runs.pivot_table(index=[rows, SEED], columns=columns, values=metric)
        complete = per_seed.reindex(columns=col_keys).dropna().mean(axis=1)
        by_row = complete.groupby(level=0)
        std[AVG] = by_row.std().reindex(row_keys)
        count[AVG] = by_row.size().reindex(row_keys)
    if labels is not None:
        rename = {k: labels[k] for k in col_keys}
        mean, std, count = (f.rename(columns=rename) for f in (mean, std, count))
    for f in (mean, std, count):
        f.columns.name = None
    return SeedTable(mean, std, count.fillna(0).astype(int), metric)


def lra_table(study: StudyResults | pd.DataFrame, metric: str | None = None) -> SeedTable:
    """The LRA paper's table: kernels (rows) × ListOps, Text, Retrieval, Image, Pathfinder
    (columns, those the study ran) and Avg; cells mean ± std over seeds of ``metric``
    (default ``best.val_accuracy``: each run's best evaluation). Raises NoResults when the
    study has no LRA task."""
    trials = trials_of(study)
    names = sorted(trials["task.name"].dropna().unique()) if "task.name" in trials else []
    labels = {n: LRA_TASKS[p] for p in LRA_TASKS for n in names if n.startswith(p)}
    if not labels:
        raise NoResults(
            f"no LRA task in this study (its tasks: {', '.join(map(str, names)) or 'none'}); "
            f"the LRA table needs task.name in {', '.join(LRA_TASKS)}"
        )
    return seed_table(trials, "kernel.name", "task.name", metric or "best.val_accuracy", labels)


# ---------------------------------------------------------------------------- GLUE


@dataclass
class GlueTable:
    """Kernels × GLUE columns (per task its official dev metrics) and the GLUE average.

    scores: the chosen grid point's metrics (mean over its seeds), one column per (task,
        metric), e.g. 'CoLA', 'MRPC acc', 'MRPC F1', 'STS-B Pearson', 'MNLI m', plus 'GLUE'.
    chosen: one row per (kernel, task): the chosen point's task score, seeds, trial ids and
        config (JSON), and how many grid points competed.
    """

    scores: pd.DataFrame
    chosen: pd.DataFrame

    def formatted(self, scale: float = 100.0, digits: int = 1) -> pd.DataFrame:
        """Scores × ``scale`` as strings, '' where a task was not run."""
        return self.scores.map(lambda v: "" if _missing(v) else f"{v * scale:.{digits}f}")

    def tidy(self) -> pd.DataFrame:
        """One row per (kernel, column): the score."""
        out = self.scores.stack().rename("score").reset_index()
        return out.rename(columns={out.columns[1]: "column"})


def _task_score(frame: pd.DataFrame, task: str) -> pd.Series:
    """GLUE's task score: the mean of the task's official metrics."""
    cols = [c for c, _ in GLUE_TASKS[task][1]]
    return frame[cols].astype(float).mean(axis=1, skipna=False)


def _best_evaluation(study: StudyResults, trials: pd.DataFrame) -> pd.DataFrame:
    """Each GLUE trial's metrics replaced by those of its evaluation with the best task score
    (the dev-set checkpoint choice), so all of a task's metrics come from one step."""
    curves = study.curves
    if curves.empty or "trial_id" not in curves:
        return trials
    out = trials.copy()
    for i, row in trials.iterrows():
        task = row.get("task.name")
        if task not in GLUE_TASKS:
            continue
        cols = [c for c, _ in GLUE_TASKS[task][1]]
        mine = curves[curves["trial_id"] == row["trial_id"]]
        if mine.empty or not set(cols) <= set(mine.columns):
            continue
        score = _task_score(mine, task)
        if score.notna().any():
            best = mine.loc[score.idxmax()]
            for c in cols:
                out.at[i, c] = best[c]
    return out


def glue_table(study: StudyResults | pd.DataFrame, checkpoint: str = "best") -> GlueTable:
    """The GLUE table: for each kernel and GLUE task, the grid point (e.g. learning rate) with
    the best dev score (mean over seeds), reported with the task's official metrics.

    Task score = mean of its official metrics (CoLA MCC; SST-2, QNLI, RTE, WNLI accuracy;
    MRPC, QQP accuracy and F1; STS-B Pearson and Spearman; MNLI matched and mismatched
    accuracy); GLUE = the mean of the task scores over the tasks the study ran. With a
    ``StudyResults`` and ``checkpoint='best'``, each run contributes its evaluation with the
    best task score (from the curves); ``'last'`` (and a bare trials frame) use the final
    metrics. Raises NoResults when the study has no GLUE task.
    """
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    trials = trials_of(study)
    names = set(trials["task.name"].dropna()) if "task.name" in trials else set()
    tasks = [t for t in GLUE_TASKS if t in names]
    if not tasks:
        raise NoResults(
            f"no GLUE task in this study (its tasks: {', '.join(sorted(names)) or 'none'}); "
            f"the GLUE table needs task.name in {', '.join(GLUE_TASKS)}"
        )
    if isinstance(study, StudyResults) and checkpoint == "best":
        trials = _best_evaluation(study, trials)
    rows, chosen = {}, []
    for task in tasks:
        label, metrics = GLUE_TASKS[task]
        frame = trials[trials["task.name"] == task].copy()
        missing = [c for c, _ in metrics if c not in frame]
        if missing:
            raise NoResults(f"{task}: the trials report no {', '.join(missing)}")
        frame["task_score"] = _task_score(frame, task)
        cells, _ = best_points(frame, ["kernel.name"], "task_score", "max")
        df = _usable(frame, "task_score")
        df["point"] = _point_keys(df, ["kernel.name"])
        means = df.groupby(["kernel.name", "point"])[[c for c, _ in metrics]].mean()
        for _, cell in cells.iterrows():
            kernel = cell["kernel.name"]
            values = means.loc[(kernel, cell["point"])]
            row = rows.setdefault(kernel, {})
            for col, name in metrics:
                row[label if len(metrics) == 1 else f"{label} {name}"] = values[col]
            row[f"_{task}"] = cell["mean"]
            chosen.append(
                {
                    "kernel.name": kernel,
                    "task.name": task,
                    "task_score": cell["mean"],
                    "seeds": int(cell["count"]),
                    "points": df.loc[df["kernel.name"] == kernel, "point"].nunique(),
                    "trial_ids": cell["trial_ids"],
                    "point": cell["point"],
                }
            )
    columns = [
        label if len(metrics) == 1 else f"{label} {name}"
        for label, metrics in (GLUE_TASKS[t] for t in tasks)
        for _, name in metrics
    ]
    score_cols = [f"_{t}" for t in tasks]
    scores = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=columns + score_cols)
    scores["GLUE"] = scores[score_cols].mean(axis=1, skipna=False)
    scores = scores.drop(columns=score_cols)
    scores = scores.reindex(_row_order(list(scores.index), "kernel.name"))
    scores.index.name = "kernel.name"
    return GlueTable(scores, pd.DataFrame(chosen))


# ---------------------------------------------------------------------------- feature counts


def feature_curve(
    study: StudyResults | pd.DataFrame,
    metric: str | None = None,
    family: str = "kernel.name",
    x: str = "kernel.num_features",
) -> pd.DataFrame:
    """``metric`` against the number of random features per kernel family, over seeds.

    Returns one row per (family, num_features): mean, std (ddof = 1), count (seeds), sorted.
    Families without random features (softmax when num_features is not searched for it) have
    NaN num_features: plot them as a horizontal reference.
    """
    metric = metric or default_metric(study)
    trials = trials_of(study)
    for key in (family, x):
        if key not in trials:
            raise NoResults(f"the trials table has no column {key!r}")
    cells, _ = best_points(trials, [family, x], metric)
    out = cells[[family, x, "mean", "std", "count"]].copy()
    order = {k: i for i, k in enumerate(_row_order(list(out[family].unique()), family))}
    out = out.assign(_o=out[family].map(order)).sort_values(["_o", x], na_position="first")
    out.attrs["metric"] = metric
    return out.drop(columns="_o").reset_index(drop=True)


# ---------------------------------------------------------------------------- efficiency

BENCH_KEYS = ("seq_len", "pass", "batch", "heads", "head_dim")


def efficiency(csv: str | Path | pd.DataFrame, reference: str = "sdpa") -> pd.DataFrame:
    """The ``lk-study bench attention`` CSV with time and memory ratios to ``reference``.

    Adds ``time_ratio`` = ms_median / reference's ms_median and ``memory_ratio`` =
    peak_mib / reference's peak_mib at the same (seq_len, pass, batch, heads, head_dim);
    below 1 is faster / smaller than exact softmax attention. NaN where the reference has no
    row (or zero memory).
    """
    df = pd.read_csv(csv) if not isinstance(csv, pd.DataFrame) else csv.copy()
    need = {"kernel", "ms_median", "peak_mib", *BENCH_KEYS}
    missing = sorted(need - set(df.columns))
    if missing:
        raise ValueError(f"{csv}: not a benchmark CSV (missing columns {', '.join(missing)})")
    kernels = list(df["kernel"].unique())
    if reference not in kernels:
        raise NoResults(
            f"{csv}: no {reference!r} rows to take ratios to; kernels: {', '.join(kernels)}"
        )
    ref = df[df["kernel"] == reference][[*BENCH_KEYS, "ms_median", "peak_mib"]]
    ref = ref.rename(columns={"ms_median": "_ref_ms", "peak_mib": "_ref_mib"})
    out = df.merge(ref, on=list(BENCH_KEYS), how="left")
    out["time_ratio"] = out["ms_median"] / out["_ref_ms"]
    out["memory_ratio"] = out["peak_mib"] / out["_ref_mib"].where(out["_ref_mib"] > 0)
    out.attrs["reference"] = reference
    return out.drop(columns=["_ref_ms", "_ref_mib"])


def efficiency_table(
    eff: pd.DataFrame, value: str = "time_ratio", pass_: str = "fwdbwd"
) -> pd.DataFrame:
    """Kernels × sequence lengths of one column of ``efficiency`` (e.g. time_ratio, ms_median,
    peak_mib, memory_ratio) for one pass."""
    part = eff[eff["pass"] == pass_]
    if part.empty:
        raise NoResults(f"no {pass_!r} rows; passes: {', '.join(map(str, eff['pass'].unique()))}")
    table = part.pivot_table(index="kernel", columns="seq_len", values=value, sort=False)
    table.columns.name = f"{value} at seq_len"
    return table


# ---------------------------------------------------------------------------- checkpoints
#
# The learned spectra themselves (``spectrum``, ``Spectrum``) live in lk_study.spectra (torch);
# ``analysis.spectrum`` etc. still resolve, lazily (``__getattr__`` below).

_LAZY = {  # old names of this module -> the torch module that now holds them
    "Spectrum": "lk_study.spectra",
    "spectrum": "lk_study.spectra",
    "SPECTRUM_SAMPLES": "lk_study.spectra",
    "DISTANCES": "lk_study.spectra",
    "checkpoint_state": "lk_study.checkpoints",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def trial_checkpoint(study: StudyResults, trial_id: str) -> str:
    """The Train run folder of a trial (``STUDY/train_runs/train-<trial_id>``), which
    ``spectrum`` and ``checkpoint_state`` accept."""
    return storage.trial_run(study.path, trial_id)


def best_checkpoint(study: StudyResults, learned: bool = True) -> str:
    """The checkpoint of the best trial on the study objective; with ``learned``, the best
    among kernels with learned spectral parameters (a registry class with ``learned``:
    gmm_*, fastfood_*, generator_*)."""
    board = study.leaderboard()
    if learned and "kernel.name" in board:
        board = board[board["kernel.name"].astype(str).map(is_learned).astype(bool)]
    if board.empty:
        what = "with a learned kernel " if learned else ""
        raise NoResults(f"{study.path}: no trial {what}to read a checkpoint from")
    return trial_checkpoint(study, board.iloc[0]["trial_id"])


def is_learned(kernel: str) -> bool:
    """Whether registry family ``kernel`` learns its spectral distribution (``learned``)."""
    from lk_study.kernels import KERNELS

    cls = KERNELS.get(kernel)
    return bool(cls is not None and cls.learned)


ENCODER_SHAPE_KEYS = ("model.d_model", "model.num_layers", "model.num_heads", "model.d_ff")


def encoder_keys(kernel: str) -> list[str]:
    """The config keys that fix the encoder's weight shapes for kernel family ``kernel``: the
    model sizes, ``kernel.name``, ``kernel.num_features`` (random-feature families) and the
    family's own parameters (``lk-study kernels`` lists them)."""
    from lk_study.config import KernelConfig
    from lk_study.kernels import family_params, kernel_class
    from lk_study.kernels.base import RandomFeatureMap

    kernel_fields = {f.name for f in dataclasses.fields(KernelConfig)}
    keys = [*ENCODER_SHAPE_KEYS, "kernel.name"]
    if issubclass(kernel_class(kernel), RandomFeatureMap):
        keys.append("kernel.num_features")
    keys += [f"kernel.{p}" for p in family_params(kernel) if p in kernel_fields]
    return keys


def pretrained_trial(study: StudyResults, config: Mapping[str, Any]) -> str:
    """The trial of ``study`` (e.g. a WikiText-103 pre-training study) whose encoder can start
    a model of ``config`` (flat dotted keys): same ``encoder_keys``; the best finished one on
    the study's objective when several match (e.g. seeds). Raises NoResults naming the keys
    and the candidates when none matches."""
    from lk_study.config import KernelConfig

    keys = encoder_keys(config["kernel.name"])
    defaults = {f"kernel.{f.name}": f.default for f in dataclasses.fields(KernelConfig)}
    config = {k: config.get(k, defaults.get(k)) for k in keys}  # keys newer than the config
    trials = study.leaderboard()
    done = trials[trials["status"] == "TERMINATED"] if "status" in trials else trials
    try:  # the study's base config: the value of a conditional key where it was inactive
        base = (read_json(study.path, STUDY_FILE) or {}).get("config", {})
    except (OSError, ValueError):
        base = {}
    match = done
    for key in keys:
        if key not in match:  # a kernel key newer than the study: its trials had the default
            if key not in defaults or config[key] != defaults[key]:
                match = match.iloc[0:0]
                break
            continue
        column = match[key].astype(object)
        column = column.where(column.notna(), base.get(key, defaults.get(key)))
        match = match[column == config[key]]
    if match.empty:
        want = ", ".join(f"{k}={config[k]}" for k in keys)
        have = sorted({", ".join(f"{k}={row.get(k)}" for k in keys) for _, row in done.iterrows()})
        raise NoResults(
            f"{study.path}: no finished trial with {want}; its finished trials have: "
            + ("; ".join(have) if have else "none")
        )
    return str(match.iloc[0]["trial_id"])


# ---------------------------------------------------------------------------- importance


def param_importance(study: StudyResults, metric: str | None = None, seed: int = 0) -> pd.Series:
    """Optuna's fANOVA importance of the searched parameters for ``metric`` (default
    ``best.<objective>``), fitted on the finished trials of any searcher (grid, random,
    Optuna). Parameters inactive in some trials (conditionals) are left out, as Optuna does.
    Returns importances summing to 1, largest first; raises NoResults with fewer than three
    finished trials or nothing varied."""
    import optuna

    metric = metric or default_metric(study)
    search = (read_json(study.path, STUDY_FILE) or {}).get("search", {})
    trials = _usable(study.trials, metric) if not study.trials.empty else study.trials
    varied = [k for k in search if k in trials and trials[k].nunique(dropna=True) > 1]
    if len(trials) < 3 or not varied:
        raise NoResults(
            f"{study.path}: importance needs >= 3 finished trials and a varied searched "
            f"parameter (has {len(trials)} trials, varied: {', '.join(varied) or 'none'})"
        )
    dists = {k: _distribution(search[k], trials[k]) for k in varied}
    direction = "minimize" if metric_mode(metric) == "min" else "maximize"
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" lines
    try:
        opt = optuna.create_study(direction=direction)
        for _, row in trials.iterrows():
            params = {}
            for k, dist in dists.items():
                v = row[k]
                if _missing(v):
                    continue
                v = v.item() if hasattr(v, "item") else v
                if isinstance(dist, optuna.distributions.CategoricalDistribution):
                    v = next(c for c in dist.choices if c == v)
                params[k] = v
            opt.add_trial(
                optuna.trial.create_trial(
                    params=params,
                    distributions={k: dists[k] for k in params},
                    value=float(row[metric]),
                )
            )
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        found = optuna.importance.get_param_importances(opt, evaluator=evaluator)
    finally:
        optuna.logging.set_verbosity(verbosity)
    if not found:
        raise NoResults(f"{study.path}: no searched parameter is set in every finished trial")
    out = pd.Series(found, name=metric, dtype=float).sort_values(ascending=False)
    out.attrs["method"] = "Optuna fANOVA"
    return out


def _distribution(param: dict, seen: pd.Series):
    """An Optuna distribution from a study record's searched parameter (categories: the
    declared ones plus any other value ``seen`` in the trials; ranges widened to them)."""
    import optuna.distributions as od

    kind, values = param["kind"], list(param["values"])
    seen = [v.item() if hasattr(v, "item") else v for v in seen.dropna().unique()]
    if kind in ("choice", "grid"):
        return od.CategoricalDistribution(values + [v for v in seen if v not in values])
    values = [min([values[0], *seen]), max([values[1], *seen])]
    if kind == "int":
        return od.IntDistribution(int(values[0]), int(values[1]))
    return od.FloatDistribution(float(values[0]), float(values[1]), log=kind == "loguniform")


# ---------------------------------------------------------------------------- rendering

FORMATS = ("text", "markdown", "csv")
TABLES = ("lra", "glue", "features")


def to_markdown(frame: pd.DataFrame, index: bool = True) -> str:
    """A GitHub-flavoured Markdown table (floats to 4 significant digits, NaN empty)."""
    df = frame.reset_index() if index else frame

    def cell(v: Any) -> str:
        if _missing(v):
            return ""
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|")

    head = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def render(frame: pd.DataFrame, fmt: str = "text", index: bool = True) -> str:
    """``frame`` as text (``to_string``), markdown (``to_markdown``) or csv."""
    if fmt == "csv":
        return frame.to_csv(index=index)
    if fmt == "markdown":
        return to_markdown(frame, index=index)
    if fmt == "text":
        return frame.to_string(index=index)
    raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")


def format_table(study: StudyResults, table: str, fmt: str = "text") -> str:
    """One of the paper's tables for ``study`` (``lra``, ``glue``, ``features``) in ``fmt``.

    text and markdown show 'mean ± std' cells (accuracies in %) under a title; csv gives the
    numbers, one row per cell (lra, features) or per kernel (glue).
    """
    if table == "lra":
        t = lra_table(study)
        if fmt == "csv":
            return render(t.tidy(), fmt, index=False)
        title = f"LRA: {t.metric} (%), mean ± std over seeds"
        return _titled(title, render(t.formatted(), fmt), fmt)
    if table == "glue":
        g = glue_table(study)
        if fmt == "csv":
            return render(g.scores, fmt)
        return _titled(
            "GLUE dev (%): best grid point per kernel and task", render(g.formatted(), fmt), fmt
        )
    if table == "features":
        c = feature_curve(study)
        if fmt == "csv":
            return render(c, fmt, index=False)
        scale = percent_scale(c.attrs["metric"])
        cells = format_mean_std(c[["mean"]] * scale, c[["std"]].set_axis(["mean"], axis=1) * scale)
        shown = c[["kernel.name", "kernel.num_features"]].assign(
            **{c.attrs["metric"]: cells["mean"], "seeds": c["count"]}
        )
        if shown["kernel.num_features"].dropna().mod(1).eq(0).all():  # 8, not 8.0; NaN: <NA>
            shown["kernel.num_features"] = shown["kernel.num_features"].astype("Int64")
        title = f"{c.attrs['metric']} vs kernel.num_features, mean ± std over seeds"
        return _titled(title, render(shown, fmt, index=False), fmt)
    raise ValueError(f"unknown table {table!r}; valid: {', '.join(TABLES)}")


def _titled(title: str, body: str, fmt: str) -> str:
    return f"**{title}**\n\n{body}" if fmt == "markdown" else f"{title}:\n{body}"
