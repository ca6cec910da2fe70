"""Figures for ``lk_study.analysis`` results, one function per table or curve.

Every function returns a ``matplotlib.figure.Figure`` built without pyplot (no global figure
state, no interactive backend): ``fig.savefig("x.png")`` renders with Agg; in a notebook run
``%matplotlib inline`` once and a figure shows as a cell's value. ``save_figures`` writes
the figures a study supports to a folder (``lk-study results PATH --plot DIR``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from lk_study import analysis
from lk_study.analysis import GlueTable, NoResults, SeedTable, StudyResults

if TYPE_CHECKING:
    from lk_study.spectra import Spectrum

WIDTH = 6.4  # inches per panel


def _label(metric: str) -> str:
    scale = analysis.percent_scale(metric)
    return f"{metric} (%)" if scale == 100 else metric


def plot_seed_table(table: SeedTable, title: str | None = None) -> Figure:
    """Grouped bars: one group per column (task, and Avg), one bar per row (kernel), error
    bars ± std over seeds."""
    scale = analysis.percent_scale(table.metric)
    mean, std = table.mean * scale, table.std.fillna(0.0) * scale
    rows, cols = list(mean.index), list(mean.columns)
    fig = Figure(figsize=(max(WIDTH, 1.1 * len(cols) * max(len(rows), 2) * 0.35 + 2), 4.2))
    ax = fig.add_subplot()
    width = 0.8 / max(len(rows), 1)
    x = np.arange(len(cols))
    for i, row in enumerate(rows):
        ax.bar(
            x + (i - (len(rows) - 1) / 2) * width,
            mean.loc[row].to_numpy(dtype=float),
            width,
            yerr=std.loc[row].to_numpy(dtype=float),
            capsize=2,
            label=str(row),
        )
    ax.set_xticks(x, [str(c) for c in cols])
    ax.set_ylabel(_label(table.metric))
    ax.set_title(title or f"{table.metric}: mean ± std over seeds")
    ax.legend(fontsize="small", ncols=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_lra(table: SeedTable) -> Figure:
    """The LRA table (``analysis.lra_table``) as grouped bars per task."""
    return plot_seed_table(table, "Long Range Arena: accuracy (mean ± std over seeds)")


def plot_glue(table: GlueTable, scale: float = 100.0) -> Figure:
    """The GLUE table as an annotated heat map (kernels × task metrics, GLUE last)."""
    scores = table.scores
    fig = Figure(figsize=(max(WIDTH, 0.9 * scores.shape[1] + 2), 0.5 * len(scores) + 1.8))
    ax = fig.add_subplot()
    values = scores.to_numpy(dtype=float) * scale
    im = ax.imshow(values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(scores.shape[1]), scores.columns, rotation=45, ha="right")
    ax.set_yticks(range(len(scores)), [str(i) for i in scores.index])
    for (i, j), v in np.ndenumerate(values):
        if not math.isnan(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="w", fontsize="small")
    fig.colorbar(im, ax=ax, label="dev score (%)")
    ax.set_title("GLUE dev: best grid point per kernel and task")
    fig.tight_layout()
    return fig


def plot_feature_curve(curve: pd.DataFrame, family: str = "kernel.name") -> Figure:
    """Metric against the number of random features (log2 axis), one line per family with a
    ± std band; families without features (NaN) as dashed horizontal lines."""
    x = "kernel.num_features"
    metric = curve.attrs.get("metric", "metric")
    scale = analysis.percent_scale(metric)
    fig = Figure(figsize=(WIDTH, 4.2))
    ax = fig.add_subplot()
    for name, part in curve.groupby(family, sort=False):
        mean, std = part["mean"] * scale, part["std"].fillna(0.0) * scale
        if part[x].isna().all():
            ax.axhline(mean.iloc[0], ls="--", color="k", lw=1, label=f"{name} (exact)")
            continue
        line = ax.plot(part[x], mean, marker="o", label=str(name))[0]
        ax.fill_between(part[x], mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("random features per head (kernel.num_features)")
    ax.set_ylabel(_label(metric))
    ax.set_title("Accuracy vs number of random features (mean ± std over seeds)")
    ax.legend(fontsize="small", ncols=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_sparsity(table: analysis.SparsityTable) -> Figure:
    """The sparsity table (``analysis.sparsity_table``): the metric against the ideal
    attention density k/L (log axis), one line per kernel, error bars ± std over seeds.
    Kernels are dodged sideways (a few % of k/L) so their error bars do not hide each other;
    learned-spectrum kernels solid, fixed ones dashed."""
    scale = analysis.percent_scale(table.metric)
    density = table.levels.loc[list(table.mean.columns), "density"].to_numpy(dtype=float)
    fig = Figure(figsize=(WIDTH * 1.35, 4.6))
    ax = fig.add_subplot()
    n = len(table.mean.index)
    for i, kernel in enumerate(table.mean.index):
        mean = table.mean.loc[kernel].to_numpy(dtype=float) * scale
        std = table.std.loc[kernel].fillna(0.0).to_numpy(dtype=float) * scale
        dodge = 10 ** (0.012 * (i - (n - 1) / 2))
        style = "-" if analysis.is_learned(str(kernel)) else "--"
        ax.errorbar(
            100 * density * dodge,
            mean,
            yerr=std,
            marker="o",
            ms=4,
            capsize=2,
            ls=style,
            label=str(kernel),
        )
    ax.set_xscale("log")
    ax.minorticks_off()  # one tick per level, labelled k/L in %
    ax.set_xticks(100 * density, [f"{100 * d:.3g}" for d in density])
    ax.set_xlabel("ideal attention density k/L (%), log scale")
    ax.set_ylabel(_label(table.metric))
    ax.set_title("Accuracy vs attention sparsity (mean ± std over seeds)")
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_efficiency(eff: pd.DataFrame, pass_: str = "fwdbwd") -> Figure:
    """Time, peak memory and time ratio to the reference against sequence length, one line
    per kernel (log axes), for one pass (fwd or fwdbwd) of ``analysis.efficiency``."""
    part = eff[eff["pass"] == pass_]
    if part.empty:
        raise NoResults(f"no {pass_!r} rows; passes: {', '.join(map(str, eff['pass'].unique()))}")
    ref = eff.attrs.get("reference", "sdpa")
    fig = Figure(figsize=(3 * WIDTH * 0.7, 4.0))
    panels = (
        ("ms_median", "time (ms, median)"),
        ("peak_mib", "peak memory (MiB)"),
        ("time_ratio", f"time / {ref}"),
    )
    axes = fig.subplots(1, 3)
    for ax, (col, ylabel) in zip(axes, panels, strict=True):
        for name, k in part.groupby("kernel", sort=False):
            k = k.sort_values("seq_len")
            style = {"ls": "--", "color": "k"} if name == ref else {}
            ax.plot(k["seq_len"], k[col], marker="o", label=str(name), **style)
        ax.set_xscale("log", base=2)
        if col != "time_ratio":
            ax.set_yscale("log")
        else:
            ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xlabel("sequence length")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="x-small", ncols=2)
    fig.suptitle(f"Attention efficiency ({pass_})")
    fig.tight_layout()
    return fig


def plot_spectrum(spec: Spectrum) -> Figure:
    """Per layer: the kernel along a line (each head learned, the initial kernel dashed, the
    RBF dotted) and, for random-feature kernels, the distribution of ‖ω‖ for a fixed noise
    sample through the learned vs the initial spectral parameters."""
    layers = sorted(spec.curve["layer"].unique())
    has_omega = any(o is not None for o in spec.omega)
    nrows = 2 if has_omega else 1
    fig = Figure(figsize=(max(WIDTH, 3.6 * len(layers)), 3.4 * nrows))
    axes = np.atleast_2d(fig.subplots(nrows, len(layers), squeeze=False))
    for j, layer in enumerate(layers):
        ax = axes[0, j]
        part = spec.curve[spec.curve["layer"] == layer]
        for head, h in part.groupby("head"):
            ax.plot(h["distance"], h["learned"], lw=1.2, label=f"head {head}")
        first = part[part["head"] == part["head"].min()]
        ax.plot(first["distance"], first["init"], "k--", lw=1, label="at init")
        ax.plot(first["distance"], first["rbf"], "k:", lw=1, label="RBF exp(−r²/2)")
        ax.set_xlabel("r = ‖x' − y'‖ (x' = 0)")
        ax.set_ylabel("k(x, y)")
        ax.set_title(f"{spec.kernel}, layer {layer}, step {spec.step}")
        ax.grid(alpha=0.3)
        if j == 0:
            ax.legend(fontsize="x-small")
        if has_omega and spec.omega[j] is not None:
            ax = axes[1, j]
            norms = np.linalg.norm(spec.omega[j], axis=-1).ravel()
            init = np.linalg.norm(spec.omega_init[j], axis=-1).ravel()
            bins = np.linspace(0, max(norms.max(), init.max()) * 1.05, 40)
            ax.hist(init, bins=bins, histtype="step", color="k", ls="--", label="at init")
            ax.hist(norms, bins=bins, alpha=0.6, label="learned (all heads)")
            ax.set_xlabel("‖ω‖ of spectral samples")
            ax.set_ylabel("count")
            ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def plot_curves(study: StudyResults, metric: str | None = None) -> Figure:
    """Every trial's ``metric`` (default: the objective) against the training step, coloured
    by kernel."""
    metric = metric or study.objective["metric"]
    curves = study.curves
    if curves.empty or metric not in curves:
        raise NoResults(f"{study.path}: no reports of {metric!r} yet")
    kernels = study.trials.set_index("trial_id").get("kernel.name", pd.Series(dtype=str))
    names = list(dict.fromkeys(kernels.reindex(curves["trial_id"].unique()).fillna("?")))
    colours = {k: f"C{i % 10}" for i, k in enumerate(names)}
    scale = analysis.percent_scale(metric)
    fig = Figure(figsize=(WIDTH, 4.2))
    ax = fig.add_subplot()
    seen = set()
    for tid, part in curves.groupby("trial_id", sort=False):
        kernel = kernels.get(tid, "?")
        ax.plot(
            part["step"],
            part[metric] * scale,
            color=colours.get(kernel, "C0"),
            marker=".",
            alpha=0.8,
            label=None if kernel in seen else str(kernel),
        )
        seen.add(kernel)
    ax.set_xlabel("training step")
    ax.set_ylabel(_label(metric))
    ax.set_title(f"{Path(study.path).name}: {metric} per trial")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_pareto(study: StudyResults) -> Figure:
    """A Pareto search's trials on its first two objectives (last reported values), coloured
    by kernel; the Pareto-optimal ones ringed and joined in order."""
    if "pareto" not in study.trials:
        raise NoResults(f"{study.path}: not a Pareto search (one objective)")
    (x, mx), (y, my) = [(o["metric"], o["mode"]) for o in study.objectives[1::-1]]
    t = study.trials.dropna(subset=[x, y])
    fig = Figure(figsize=(WIDTH, 4.2))
    ax = fig.add_subplot()
    for i, (kernel, part) in enumerate(t.groupby(t.get("kernel.name", "?"), sort=True)):
        ax.scatter(part[x], part[y], color=f"C{i % 10}", label=str(kernel), alpha=0.8)
    front = t[t["pareto"]].sort_values(x)
    ax.scatter(front[x], front[y], s=160, facecolors="none", edgecolors="k", label="Pareto front")
    ax.plot(front[x], front[y], "k--", alpha=0.5)
    ax.set_xlabel(f"{_label(x)} ({mx})")
    ax.set_ylabel(f"{_label(y)} ({my})")
    ax.set_title(f"{Path(study.path).name}: Pareto front")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_importance(importance: pd.Series) -> Figure:
    """Horizontal bars of ``analysis.param_importance``."""
    fig = Figure(figsize=(WIDTH, 0.45 * len(importance) + 1.5))
    ax = fig.add_subplot()
    ordered = importance.sort_values()
    ax.barh([str(i) for i in ordered.index], ordered.to_numpy())
    ax.set_xlabel(f"importance ({importance.attrs.get('method', 'fANOVA')})")
    ax.set_title(f"Hyperparameter importance for {importance.name}")
    fig.tight_layout()
    return fig


def plot_parallel(
    study: StudyResults, params: list[str] | None = None, metric: str | None = None
) -> Figure:
    """Parallel coordinates: one line per trial through its searched parameters (each axis
    scaled to [0, 1]; categories evenly spaced, log-uniform ones on a log scale), coloured
    by ``metric`` (default ``best.<objective>``)."""
    metric = metric or analysis.default_metric(study)
    params = params or [p for p in analysis.results_searched(study) if p in study.trials]
    trials = analysis._usable(study.trials, metric)
    if not params or trials.empty:
        raise NoResults(f"{study.path}: no searched parameters or no finished trials to plot")
    axes_values, ticks = [], []
    search = (analysis.read_json(study.path, analysis.STUDY_FILE) or {}).get("search", {})
    for p in params:
        col = trials[p]
        numeric = pd.to_numeric(col, errors="coerce")
        if numeric.notna().sum() == col.notna().sum() and col.nunique(dropna=True) > 2:
            v = numeric.to_numpy(dtype=float)
            if search.get(p, {}).get("kind") == "loguniform" and np.nanmin(v) > 0:
                v = np.log10(v)
            lo, hi = np.nanmin(v), np.nanmax(v)
            axes_values.append((v - lo) / (hi - lo) if hi > lo else v * 0 + 0.5)
            ticks.append([])
        else:
            cats = list(dict.fromkeys(col.astype(str)))
            pos = {c: i / (len(cats) - 1) if len(cats) > 1 else 0.5 for i, c in enumerate(cats)}
            axes_values.append(col.astype(str).map(pos).to_numpy(dtype=float))
            ticks.append(list(pos.items()))
    values = trials[metric].to_numpy(dtype=float)
    fig = Figure(figsize=(max(WIDTH, 1.8 * len(params) + 1.5), 4.2))
    ax = fig.add_subplot()
    norm = (values - values.min()) / (np.ptp(values) or 1.0)
    cm = colormaps["viridis"]
    ys = np.stack(axes_values, axis=1)  # (trials, params)
    for y, c in zip(ys, norm, strict=True):
        ax.plot(range(len(params)), y, color=cm(c), alpha=0.8)
    for i, tick in enumerate(ticks):
        ax.axvline(i, color="k", lw=0.8)
        for name, pos in tick:
            ax.text(i + 0.03, pos, name, fontsize="x-small", va="center")
    ax.set_xticks(range(len(params)), params, rotation=20)
    ax.set_yticks([0, 1], ["low", "high"])
    sm = ScalarMappable(norm=Normalize(values.min(), values.max()), cmap=cm)
    fig.colorbar(sm, ax=ax, label=metric)
    ax.set_title("Searched parameters per trial")
    fig.tight_layout()
    return fig


def save(fig: Figure, out_dir: str | Path | None, name: str) -> Figure:
    """Write ``fig`` as OUT_DIR/NAME.png when ``out_dir`` is set (a notebook's figures
    parameter); returns ``fig`` so that a notebook cell can end with this call."""
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(out_dir) / f"{name}.png", dpi=120)
    return fig


def save_figures(study: StudyResults, out_dir: str | Path, log: Any = print) -> dict[str, Path]:
    """Write every figure ``study`` supports as PNG into ``out_dir``; returns name -> path.

    curves (always), features (when kernel.num_features is in the table), sparsity (trials
    at two task.num_signal / task.seq_len levels or more), lra / glue (when the study ran
    those tasks), pareto (multi-objective studies), importance and parallel
    (searched parameters, ≥ 3 finished trials), spectrum (the best learned-kernel trial's
    checkpoint, local studies). A figure
    the study cannot give is skipped with the reason passed to ``log``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    makers = {
        "curves": lambda: plot_curves(study),
        "features": lambda: plot_feature_curve(analysis.feature_curve(study)),
        "sparsity": lambda: plot_sparsity(analysis.sparsity_table(study)),
        "lra": lambda: plot_lra(analysis.lra_table(study)),
        "glue": lambda: plot_glue(analysis.glue_table(study)),
        "importance": lambda: plot_importance(analysis.param_importance(study)),
        "parallel": lambda: plot_parallel(study),
        "pareto": lambda: plot_pareto(study),
        "spectrum": lambda: plot_spectrum(_spectrum(analysis.best_checkpoint(study))),
    }
    written = {}
    for name, make in makers.items():
        try:
            fig = make()
        except (NoResults, FileNotFoundError) as e:
            log(f"  {name}: skipped ({e})")
            continue
        save(fig, out, name)
        written[name] = path = out / f"{name}.png"
        log(f"  {name}: {path}")
    return written


def _spectrum(checkpoint: str) -> Spectrum:
    from lk_study.spectra import spectrum

    return spectrum(checkpoint)
