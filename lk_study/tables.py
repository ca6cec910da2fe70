"""The papers' tables from a study's results (``lk_study.analysis.StudyResults``, or its
trials frame): pandas only; every name here is re-exported as ``lk_study.analysis.<name>``.

    lra_table(study)        kernels × LRA tasks + Avg, mean ± std over seeds (SeedTable)
    glue_table(study)       kernels × GLUE official metrics + GLUE average (GlueTable); each
                            task's metrics and column label come from lk_study.tasks.glue.SPECS
    sparsity_table(study)   kernels × sparsity levels k/L, mean ± std over seeds
    feature_curve(study)    metric vs kernel.num_features per family, over seeds
    efficiency(csv)         ``lk-study bench attention`` CSV + time/memory ratios to sdpa
    efficiency_train(csv)   ``lk-study bench train`` CSV + speed-up / memory ratios to softmax
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd


class Results(Protocol):
    """What the tables read of a study: ``lk_study.analysis.StudyResults`` (which imports this
    module, so it is named here by its shape)."""

    trials: pd.DataFrame
    curves: pd.DataFrame
    objective: dict


def lower_is_better(metric: str) -> bool:
    return metric.endswith("loss")


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
AVG = "Avg"
PERCENT_METRICS = ("accuracy", "mcc", "f1", "pearson", "spearman")


class NoResults(ValueError):
    """The study holds nothing the requested table or figure is built from; says what it has."""


def trials_of(study: Results | pd.DataFrame) -> pd.DataFrame:
    """The trials table of a ``StudyResults``, or the frame itself."""
    return study if isinstance(study, pd.DataFrame) else study.trials


def default_metric(study: Results | pd.DataFrame) -> str:
    """``best.<objective metric>`` for a study, ``best.val_accuracy`` for a bare frame."""
    if not isinstance(study, pd.DataFrame):  # a StudyResults
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
    study: Results | pd.DataFrame, keys: list[str], metric: str, mode: str | None = None
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
    study: Results | pd.DataFrame,
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


def lra_table(study: Results | pd.DataFrame, metric: str | None = None) -> SeedTable:
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


# ---------------------------------------------------------------------------- sparsity

SPARSITY_KEYS = ("task.num_signal", "task.seq_len")  # k signal tokens among L
LEVEL = "sparsity level"  # the column key sparsity_table gives each trial: its k/L label


@dataclass
class SparsityTable(SeedTable):
    """A SeedTable whose columns are sparsity levels, dense to sparse; ``levels`` (indexed by
    the column labels): task.num_signal (k), task.seq_len (L) and the ideal density k/L."""

    levels: pd.DataFrame | None = None

    def tidy(self) -> pd.DataFrame:
        """One row per cell: kernel, column, mean, std, count, k, L and density."""
        return super().tidy().merge(self.levels, left_on="column", right_index=True, how="left")


def sparsity_table(study: Results | pd.DataFrame, metric: str | None = None) -> SparsityTable:
    """The synthetic sparsity study's table: kernels (rows) × sparsity levels (columns, dense
    to sparse), each labelled by its ideal attention density k/L (task.num_signal /
    task.seq_len), e.g. 'k=3/64 (4.7%)'; cells mean ± std over seeds of ``metric`` (default
    ``best.<objective>``: each run's best evaluation), ``count`` the seeds per cell. Raises
    NoResults unless the trials ran at two levels or more."""
    metric = metric or default_metric(study)
    trials = trials_of(study)
    missing = [k for k in SPARSITY_KEYS if k not in trials]
    if missing:
        raise NoResults(f"no sparsity levels: the trials table has no {', '.join(missing)}")
    k, n = (pd.to_numeric(trials[c], errors="coerce") for c in SPARSITY_KEYS)
    trials = trials[k.notna() & n.notna() & (n > 0)]
    levels = pd.DataFrame({SPARSITY_KEYS[0]: k, SPARSITY_KEYS[1]: n}).loc[trials.index]
    levels["density"] = levels[SPARSITY_KEYS[0]] / levels[SPARSITY_KEYS[1]]
    label = [f"k={a:g}/{b:g} ({100 * d:.1f}%)" for a, b, d in levels.itertuples(index=False)]
    levels.index = label
    levels = levels[~levels.index.duplicated()].sort_values("density", ascending=False)
    if len(levels) < 2:
        raise NoResults(
            "the sparsity table needs trials at two (task.num_signal, task.seq_len) levels or "
            f"more; this study has {', '.join(levels.index) or 'none'}"
        )
    trials = trials.assign(**{LEVEL: label})
    t = seed_table(trials, "kernel.name", LEVEL, metric, {x: x for x in levels.index}, False)
    return SparsityTable(t.mean, t.std, t.count, t.metric, levels.loc[list(t.mean.columns)])


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


def glue_tasks() -> dict[str, tuple[str, tuple[tuple[str, str], ...]]]:
    """task.name -> (its GLUE table label, its official dev metrics as (result column, short
    label)), in GLUE's order, from ``lk_study.tasks.glue.SPECS``; e.g. 'glue/mrpc' -> ('MRPC',
    (('val_accuracy', 'acc'), ('val_f1', 'F1'))). (``GLUE_TASKS`` resolves to this, lazily:
    the task module's metrics import scipy and scikit-learn, which tables do not need.)"""
    from lk_study.tasks.glue import SPECS

    return {
        f"glue/{task}": (spec.label, tuple(zip(spec.metrics, spec.metric_labels, strict=True)))
        for task, spec in SPECS.items()
    }


def __getattr__(name: str) -> Any:
    if name == "GLUE_TASKS":
        return glue_tasks()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _glue_columns(label: str, metrics: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """(result column, GLUE table column) per metric: 'MRPC acc', 'MRPC F1'; 'CoLA' alone."""
    return [(col, label if len(metrics) == 1 else f"{label} {name}") for col, name in metrics]


def _task_score(frame: pd.DataFrame, metrics: tuple[tuple[str, str], ...]) -> pd.Series:
    """GLUE's task score: the mean of the task's official metrics."""
    cols = [c for c, _ in metrics]
    return frame[cols].astype(float).mean(axis=1, skipna=False)


def _best_evaluation(study: Results, trials: pd.DataFrame) -> pd.DataFrame:
    """Each GLUE trial's metrics replaced by those of its evaluation with the best task score
    (the dev-set checkpoint choice), so all of a task's metrics come from one step."""
    curves = study.curves
    if curves.empty or "trial_id" not in curves:
        return trials
    glue = glue_tasks()
    out = trials.copy()
    for i, row in trials.iterrows():
        task = row.get("task.name")
        if task not in glue:
            continue
        metrics = glue[task][1]
        cols = [c for c, _ in metrics]
        mine = curves[curves["trial_id"] == row["trial_id"]]
        if mine.empty or not set(cols) <= set(mine.columns):
            continue
        score = _task_score(mine, metrics)
        if score.notna().any():
            best = mine.loc[score.idxmax()]
            for c in cols:
                out.at[i, c] = best[c]
    return out


def glue_table(study: Results | pd.DataFrame, checkpoint: str = "best") -> GlueTable:
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
    glue = glue_tasks()
    names = set(trials["task.name"].dropna()) if "task.name" in trials else set()
    tasks = [t for t in glue if t in names]
    if not tasks:
        raise NoResults(
            f"no GLUE task in this study (its tasks: {', '.join(sorted(names)) or 'none'}); "
            f"the GLUE table needs task.name in {', '.join(glue)}"
        )
    if not isinstance(study, pd.DataFrame) and checkpoint == "best":
        trials = _best_evaluation(study, trials)
    rows, chosen = {}, []
    for task in tasks:
        metrics = glue[task][1]
        frame = trials[trials["task.name"] == task].copy()
        missing = [c for c, _ in metrics if c not in frame]
        if missing:
            raise NoResults(f"{task}: the trials report no {', '.join(missing)}")
        frame["task_score"] = _task_score(frame, metrics)
        cells, _ = best_points(frame, ["kernel.name"], "task_score", "max")
        df = _usable(frame, "task_score")
        df["point"] = _point_keys(df, ["kernel.name"])
        means = df.groupby(["kernel.name", "point"])[[c for c, _ in metrics]].mean()
        for _, cell in cells.iterrows():
            kernel = cell["kernel.name"]
            values = means.loc[(kernel, cell["point"])]
            row = rows.setdefault(kernel, {})
            for col, column in _glue_columns(*glue[task]):
                row[column] = values[col]
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
    columns = [column for t in tasks for _, column in _glue_columns(*glue[t])]
    score_cols = [f"_{t}" for t in tasks]
    scores = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=columns + score_cols)
    scores["GLUE"] = scores[score_cols].mean(axis=1, skipna=False)
    scores = scores.drop(columns=score_cols)
    scores = scores.reindex(_row_order(list(scores.index), "kernel.name"))
    scores.index.name = "kernel.name"
    return GlueTable(scores, pd.DataFrame(chosen))


# ---------------------------------------------------------------------------- feature counts


def feature_curve(
    study: Results | pd.DataFrame,
    metric: str | None = None,
    family: str = "kernel.name",
    x: str = "kernel.num_features",
) -> pd.DataFrame:
    """``metric`` against the number of random features per kernel family, over seeds.

    Returns one row per (family, num_features): mean, std (ddof = 1), count (seeds), sorted.
    Families without random features (softmax when num_features is not searched for it) have
    NaN num_features: plot them as a horizontal reference. Raises NoResults unless the trials
    ran at two num_features values or more (with one, the best point per family would pass
    for a curve over M).
    """
    metric = metric or default_metric(study)
    trials = trials_of(study)
    for key in (family, x):
        if key not in trials:
            raise NoResults(f"the trials table has no column {key!r}")
    values = sorted(pd.to_numeric(trials[x], errors="coerce").dropna().unique())
    if len(values) < 2:
        ran = ", ".join(f"{v:g}" for v in values) or "none"
        raise NoResults(f"the features table needs trials at two {x} values or more; ran: {ran}")
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


TRAIN_KEYS = ("seq_len", "batch")


def efficiency_train(csv: str | Path | pd.DataFrame, reference: str = "softmax") -> pd.DataFrame:
    """The ``lk-study bench train`` CSV, its ratios recomputed from the measured columns.

    ``speedup`` = steps_per_s / reference's steps_per_s and ``memory_ratio`` = peak_mib /
    reference's peak_mib at the same (seq_len, batch); ``of_bound`` = speedup /
    flop_ratio_bound, the fraction of the FLOP-count speed-up reached (1 = time follows the
    matmul FLOPs; ``lk_study.bench_train``). NaN where the reference has no finite value.
    """
    df = (
        pd.read_csv(csv, keep_default_na=False, na_values=["nan", "NaN"])
        if not isinstance(csv, pd.DataFrame)
        else csv.copy()
    )
    need = {"kernel", "steps_per_s", "peak_mib", "flop_ratio_bound", *TRAIN_KEYS}
    missing = sorted(need - set(df.columns))
    if missing:
        raise ValueError(f"{csv}: not a bench train CSV (missing columns {', '.join(missing)})")
    kernels = list(df["kernel"].unique())
    if reference not in kernels:
        raise NoResults(
            f"{csv}: no {reference!r} rows to take ratios to; kernels: {', '.join(kernels)}"
        )
    ref = df[df["kernel"] == reference][[*TRAIN_KEYS, "steps_per_s", "peak_mib"]]
    ref = ref.rename(columns={"steps_per_s": "_ref_steps", "peak_mib": "_ref_mib"})
    out = df.drop(columns=["speedup", "memory_ratio"], errors="ignore")
    out = out.merge(ref, on=list(TRAIN_KEYS), how="left")
    out["speedup"] = out["steps_per_s"] / out["_ref_steps"]
    out["memory_ratio"] = out["peak_mib"] / out["_ref_mib"].where(out["_ref_mib"] > 0)
    out["of_bound"] = out["speedup"] / out["flop_ratio_bound"]
    out.attrs["reference"] = reference
    return out.drop(columns=["_ref_steps", "_ref_mib"])
