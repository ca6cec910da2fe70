"""Study results as pandas: one row per trial and one row per report (no Ray needed).

``load_study(path)`` reads a study folder (local path or s3:// / gs:// URI via pyarrow) while it
runs or after it ends:

    .trials  trial_id, status, the full config under dotted names (kernel.name, ...),
             the final metrics (step, val_accuracy, ...), best.<metric> for val_* metrics
    .curves  trial_id plus every reported metric, one row per evaluation

Results written under an older metric name read under the current one (``RENAMED``:
``peak_mem_mib`` -> ``peak_mib``, and so ``best.`` and the curves too).

From those, the papers' artefacts (figures for each in ``lk_study.plots``); the tables live in
``lk_study.tables`` and every name of it resolves here too (``analysis.lra_table``, ...):

    lra_table(study)        kernels × LRA tasks + Avg, mean ± std over seeds (SeedTable)
    glue_table(study)       kernels × GLUE official metrics + GLUE average (GlueTable)
    sparsity_table(study)   kernels × sparsity levels k/L (dense to sparse), over seeds
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
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lk_study import storage
from lk_study.tables import (  # noqa: F401  re-exported: lk_study.analysis.<name> as before
    AVG,
    BENCH_KEYS,
    CONFIG_PREFIXES,
    LRA_TASKS,
    PERCENT_METRICS,
    SEED,
    GlueTable,
    NoResults,
    SeedTable,
    SparsityTable,
    _missing,
    _point_keys,
    _row_order,
    _usable,
    best_points,
    default_metric,
    efficiency,
    efficiency_table,
    efficiency_train,
    feature_curve,
    format_mean_std,
    glue_table,
    glue_tasks,
    lower_is_better,
    lra_table,
    metric_mode,
    percent_scale,
    seed_table,
    sparsity_table,
    trials_of,
)

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
RENAMED = {"peak_mem_mib": "peak_mib"}  # metric names of older studies -> the current names


@dataclass
class StudyResults:
    path: str
    trials: pd.DataFrame
    curves: pd.DataFrame
    objective: dict
    also: list = dataclasses.field(default_factory=list)  # a Pareto search's other objectives

    @property
    def objectives(self) -> list[dict]:
        return [self.objective, *self.also]

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
    if storage.statuses(uri) == {} and exists(storage.join(uri, TRIALS_FILE)):
        return load_exported(uri)  # trials.parquet and no Tune state: an exported study
    try:
        meta = read_json(uri, STUDY_FILE)
    except ValueError as e:
        raise ValueError(f"{uri}/{STUDY_FILE} is damaged ({e}); the study cannot be read") from None
    if meta is None:
        raise FileNotFoundError(f"{path}: not an lk_study study folder (no {STUDY_FILE})")
    statuses = storage.statuses(uri)
    unknown = "PENDING" if statuses is not None else "UNKNOWN"  # UNKNOWN: no readable state
    base = meta["config"]
    rows, curves = [], []
    for name in storage.subfolders(uri):
        folder = storage.join(uri, name)
        params, reports = _read_trial(folder)
        if params is None:
            continue
        params = params.get("point", params)  # grid/random studies: one dict per trial
        tid = reports[-1].get("trial_id", "") if reports else ""
        tid = tid or (name.split("_")[2] if name.count("_") >= 2 else name)
        row: dict[str, Any] = {"trial_id": tid, "status": (statuses or {}).get(tid, unknown)}
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
    curves = pd.DataFrame(curves)
    if "step" in curves:  # a row reported twice (a trial resumed): one per step, the last
        curves = curves.drop_duplicates(["trial_id", "step"], keep="last").reset_index(drop=True)
    also = list(meta.get("also", []))
    if also and not trials.empty:
        trials["pareto"] = pareto_front(trials, [meta["objective"], *also])
    return StudyResults(uri, trials, curves, meta["objective"], also)


CURVES_FILE = "curves.parquet"  # an exported study's curves, beside its trials.parquet


def load_exported(path: str | Path) -> StudyResults:
    """An exported study (``lk-study report --export DIR``): DIR/trials.parquet, and when
    present DIR/curves.parquet and DIR/lk_study.json; no Tune files. Without the study record
    the objective is ``val_accuracy`` (or the first ``best.*`` column's metric) and no key
    counts as searched. ``load_study`` reads such a folder through this."""
    path = str(path)
    uri = path if "://" in path else str(Path(path).resolve())
    trials = _read_parquet(uri, TRIALS_FILE)
    if trials is None:
        raise FileNotFoundError(f"{path}: not an exported study (no {TRIALS_FILE})")
    curves = _read_parquet(uri, CURVES_FILE)
    meta = read_json(uri, STUDY_FILE) or {}
    metrics = [c[len("best.") :] for c in trials.columns if c.startswith("best.")]
    metric = "val_accuracy" if "val_accuracy" in metrics or not metrics else metrics[0]
    objective = meta.get("objective") or {"metric": metric, "mode": metric_mode(metric)}
    curves = pd.DataFrame() if curves is None else curves
    return StudyResults(uri, trials, curves, objective, list(meta.get("also", [])))


def _read_parquet(uri: str, name: str) -> pd.DataFrame | None:
    fs, root = storage.filesystem(uri)
    if not exists(storage.join(uri, name)):
        return None
    with fs.open_input_file(storage.join(root, name)) as f:
        return pd.read_parquet(f)


def pareto_front(trials: pd.DataFrame, objectives: list[dict]) -> pd.Series:
    """Whether each trial is Pareto-optimal on ``objectives`` ([{metric, mode}]): finished
    (TERMINATED), every objective's last reported value finite (the values Optuna was told),
    and no other such trial at least as good on every objective and better on one."""
    cols = [o["metric"] for o in objectives]
    ok = trials.get("status", pd.Series("TERMINATED", index=trials.index)).eq("TERMINATED")
    values = trials.reindex(columns=cols).apply(pd.to_numeric, errors="coerce")
    ok &= values.notna().all(axis=1)
    signs = [1.0 if o["mode"] == "max" else -1.0 for o in objectives]
    points = {
        i: [s * v for s, v in zip(signs, row, strict=True)] for i, row in values[ok].iterrows()
    }
    front = pd.Series(False, index=trials.index)
    for i, p in points.items():
        front[i] = not any(
            all(a >= b for a, b in zip(q, p, strict=True)) and q != p for q in points.values()
        )
    return front


def _read_trial(folder: str) -> tuple[dict | None, list[dict[str, Any]]]:
    """A trial folder's params.json and result.json rows. A damaged file (empty, truncated,
    not JSON: a full disk, a kill) is skipped with a warning naming it: params None (the
    trial is left out) or the rows that parse."""
    params_text = read_text(folder, "params.json")
    if params_text is None:
        return None, []
    try:
        params = json.loads(params_text)
        if not isinstance(params, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        params = None
        warnings.warn(f"{folder}/params.json is damaged ({e})", stacklevel=3)
    reports, bad = [], 0
    for line in (read_text(folder, "result.json") or "").splitlines():
        if line.strip():
            try:
                reports.append(_current_names(json.loads(line)))
            except (ValueError, AttributeError):
                bad += 1
    if bad:
        warnings.warn(
            f"{folder}/result.json is damaged: {bad} line(s) skipped, {len(reports)} read",
            stacklevel=3,
        )
    if params is None:  # Tune repeats the parameters in every row; else leave the trial out
        params = reports[-1].get("config") if reports else None
    return params, reports


def _current_names(report: dict[str, Any]) -> dict[str, Any]:
    """A report with older metric names (``RENAMED``) under their current names."""
    return {RENAMED.get(k, k): v for k, v in report.items()}


def format_leaderboard(results: StudyResults, top: int = 20, fmt: str = "text") -> str:
    """The leaderboard as a table: searched parameters, step, objective; ``fmt`` text (with a
    title line), markdown or csv."""
    board = results.leaderboard()
    if board.empty:
        return "(no trials yet)" if fmt != "csv" else ""
    obj = results.objective["metric"]
    searched = [k for k in (results_searched(results)) if k in board]
    also = [o["metric"] for o in results.also]
    cols = ["trial_id", "status", *searched, "step", obj, f"best.{obj}", *also, "seconds"]
    cols += ["pareto"] if also else []
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


TIMELINE_FILE = "timeline.json"  # lk_study.progress writes it when a study ends


def wall_time(study: StudyResults) -> dict[str, Any]:
    """When the trials ran, on the driver's clock: ``start`` (the first trial's start) and
    ``end`` (the last one's end) in seconds since the epoch, ``seconds`` = end − start,
    ``trial_seconds`` = Σ (end − start) over the trials, ``trials`` (how many are timed) and
    ``source``. From STUDY/timeline.json (written when a study ends); a trial it lacks (a
    study still running) from its result.json timestamps, first to last report (its start-up
    left out). ``{}`` when neither is there (an exported study without timeline.json)."""
    timeline = read_json(study.path, TIMELINE_FILE) or {}
    rows = []
    for tid, name in study.trials.reindex(columns=["trial_id", "trial_dir"]).itertuples(False):
        span, source = [timeline.get(tid, {}).get(k) for k in ("start", "end")], TIMELINE_FILE
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in span):
            reports = _read_trial(storage.join(study.path, str(name)))[1]  # none: exported
            stamps = [r["timestamp"] for r in reports if isinstance(r.get("timestamp"), int)]
            span, source = [min(stamps), max(stamps)] if stamps else [], "result.json timestamps"
        if span:
            rows.append((*span, source))
    if not rows:
        return {}
    frame = pd.DataFrame(rows, columns=["start", "end", "source"])
    start, end = float(frame["start"].min()), float(frame["end"].max())
    return {
        "start": start,
        "end": end,
        "seconds": end - start,
        "trial_seconds": float((frame["end"] - frame["start"]).sum()),
        "trials": len(frame),
        "source": " and ".join(sorted(set(frame["source"]))),
    }


# ---------------------------------------------------------------------------- checkpoints
#
# The learned spectra themselves (``spectrum``, ``Spectrum``) live in lk_study.spectra (torch);
# ``analysis.spectrum`` etc. still resolve, lazily (``__getattr__`` below).

_LAZY = {  # names of this module resolved on first use -> the module that holds them
    "GLUE_TASKS": "lk_study.tables",  # from lk_study.tasks.glue.SPECS (scipy, scikit-learn)
    "Spectrum": "lk_study.spectra",  # torch
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
    finished trials, nothing varied or the same metric everywhere."""
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
    if trials[metric].nunique() < 2:  # fANOVA has no variance to split
        raise NoResults(
            f"{study.path}: importance needs {metric} to vary; it is the same in "
            f"all {len(trials)} trials"
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
TABLES = ("lra", "glue", "features", "sparsity", "pareto")


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
    """One of the paper's tables for ``study`` (``TABLES``) in ``fmt``.

    text and markdown show 'mean ± std' cells (accuracies in %) under a title; csv gives the
    numbers, one row per cell (lra, features, sparsity) or per kernel (glue).
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
    if table == "sparsity":
        s = sparsity_table(study)
        if fmt == "csv":
            return render(s.tidy(), fmt, index=False)
        lo, hi = int(s.count.min().min()), int(s.count.max().max())
        seeds_text = str(hi) if lo == hi else f"{lo}–{hi}"
        unit = " (%)" if percent_scale(s.metric) == 100 else ""
        title = (
            f"Sparsity: {s.metric}{unit} per ideal attention density k/L, dense to sparse, "
            f"mean ± std over seeds ({seeds_text} per cell)"
        )
        return _titled(title, render(s.formatted(), fmt), fmt)
    if table == "pareto":
        if "pareto" not in study.trials:
            raise NoResults("not a Pareto search: the study has one objective")
        metrics = [o["metric"] for o in study.objectives]
        front = study.trials[study.trials["pareto"]].sort_values(
            metrics[0], ascending=study.objective["mode"] == "min"
        )
        cols = ["trial_id", *[k for k in results_searched(study) if k in front], *metrics]
        shown = front[list(dict.fromkeys(cols))]
        title = "Pareto front: " + ", ".join(
            f"{o['metric']} ({o['mode']})" for o in study.objectives
        )
        return _titled(title, render(shown, fmt, index=False), fmt)
    raise ValueError(f"unknown table {table!r}; valid: {', '.join(TABLES)}")


def _titled(title: str, body: str, fmt: str) -> str:
    return f"**{title}**\n\n{body}" if fmt == "markdown" else f"{title}:\n{body}"
