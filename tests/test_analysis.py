"""Analysis tier: the paper's tables, curves and figures from known inputs, and the notebooks
run headless against a real --smoke study (integration)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from lk_study import analysis, plots
from lk_study.analysis import NoResults, StudyResults
from lk_study.cli import main

ROOT = Path(__file__).resolve().parents[1]
ACC = "best.val_accuracy"


def frame(rows: list[tuple], columns: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=columns)
    df.insert(0, "trial_id", [f"t{i:03d}" for i in range(len(df))])
    if "status" not in df:
        df["status"] = "TERMINATED"
    return df


# ---------------------------------------------------------------------------- LRA table

LRA_COLUMNS = ["task.name", "kernel.name", "train.seed", "train.lr", ACC]
LRA_ROWS = [
    # softmax: one grid point, three seeds on each task
    ("listops", "softmax", 0, 1e-3, 0.36),
    ("listops", "softmax", 1, 1e-3, 0.38),
    ("listops", "softmax", 2, 1e-3, 0.37),
    ("text", "softmax", 0, 1e-3, 0.64),
    ("text", "softmax", 1, 1e-3, 0.66),
    ("text", "softmax", 2, 1e-3, 0.65),
    ("image", "softmax", 0, 1e-3, 0.40),
    ("image", "softmax", 1, 1e-3, 0.44),
    ("image", "softmax", 2, 1e-3, 0.42),
    # gmm_prf: on listops two learning rates (1e-3 has the better mean), text two seeds only
    ("listops", "gmm_prf", 0, 1e-3, 0.38),
    ("listops", "gmm_prf", 1, 1e-3, 0.40),
    ("listops", "gmm_prf", 2, 1e-3, 0.39),
    ("listops", "gmm_prf", 0, 1e-4, 0.30),
    ("listops", "gmm_prf", 1, 1e-4, 0.31),
    ("listops", "gmm_prf", 2, 1e-4, 0.45),
    ("text", "gmm_prf", 0, 1e-3, 0.66),
    ("text", "gmm_prf", 1, 1e-3, 0.68),
    ("image", "gmm_prf", 0, 1e-3, 0.45),
    ("image", "gmm_prf", 1, 1e-3, 0.47),
    ("image", "gmm_prf", 2, 1e-3, 0.49),
    # not in the table: another task, a run without the metric yet
    ("sparsity", "gmm_prf", 0, 1e-3, 0.99),
    ("image", "gmm_prf", 3, 1e-3, math.nan),
]


def lra_trials() -> pd.DataFrame:
    df = frame(LRA_ROWS, LRA_COLUMNS)
    failed = frame([("listops", "gmm_prf", 3, 1e-3, 0.99)], LRA_COLUMNS)  # NaN loss: ERROR
    failed["status"], failed["trial_id"] = "ERROR", "failed"
    return pd.concat([df, failed], ignore_index=True)


def test_lra_table_gives_the_known_means_stds_and_averages():
    table = analysis.lra_table(lra_trials())
    assert list(table.mean.columns) == ["ListOps", "Text", "Image", "Avg"]  # the paper's order
    assert list(table.mean.index) == ["softmax", "gmm_prf"]  # registry order
    expected_mean = {
        "softmax": [0.37, 0.65, 0.42, 0.48],
        "gmm_prf": [0.39, 0.67, 0.47, 0.51],
    }
    expected_std = {
        # Avg std: over the seeds every task has, of the per-seed task average
        "softmax": [0.01, 0.01, 0.02, np.std([0.4666667, 0.4933333, 0.48], ddof=1)],
        "gmm_prf": [0.01, math.sqrt(2) * 0.01, 0.02, 0.02 / math.sqrt(2)],
    }
    for kernel in expected_mean:
        np.testing.assert_allclose(table.mean.loc[kernel], expected_mean[kernel], atol=1e-9)
        np.testing.assert_allclose(table.std.loc[kernel], expected_std[kernel], atol=1e-6)
    assert table.count.loc["gmm_prf"].tolist() == [3, 2, 3, 2]
    assert table.count.loc["softmax"].tolist() == [3, 3, 3, 3]
    shown = table.formatted()
    assert shown.loc["softmax", "ListOps"] == "37.00 ± 1.00"
    assert shown.loc["gmm_prf", "Avg"] == "51.00 ± 1.41"
    tidy = table.tidy()
    assert len(tidy) == 8 and set(tidy.columns) == {"kernel.name", "column", "mean", "std", "count"}


def test_lra_table_one_seed_shows_the_mean_alone_and_missing_tasks_blank():
    df = frame(
        [
            ("listops", "prf", 0, 1e-3, 0.35),
            ("pathfinder32", "prf", 0, 1e-3, 0.7),
            ("listops", "softmax", 0, 1e-3, 0.375),
        ],
        LRA_COLUMNS,
    )
    table = analysis.lra_table(df)
    assert list(table.mean.columns) == ["ListOps", "Pathfinder", "Avg"]
    shown = table.formatted()
    assert shown.loc["prf", "ListOps"] == "35.00"
    assert shown.loc["softmax", "Pathfinder"] == ""
    assert math.isnan(table.mean.loc["softmax", "Avg"])  # a missing task: no average
    assert table.mean.loc["prf", "Avg"] == pytest.approx(0.525)


def test_lra_table_without_lra_tasks_says_why():
    df = frame([("sparsity", "prf", 0, 1e-3, 0.5)], LRA_COLUMNS)
    with pytest.raises(NoResults, match="no LRA task in this study.*sparsity"):
        analysis.lra_table(df)


def test_seed_table_picks_the_best_point_per_cell_for_loss_metrics_too():
    df = frame(
        [
            ("sparsity", "prf", 0, 1e-3, 0.5),
            ("sparsity", "prf", 0, 1e-2, 0.3),
        ],
        ["task.name", "kernel.name", "train.seed", "train.lr", "best.val_loss"],
    )
    table = analysis.seed_table(df, metric="best.val_loss")
    assert table.mean.loc["prf", "sparsity"] == 0.3  # lower is better for losses


# ---------------------------------------------------------------------------- GLUE table

GLUE_COLUMNS = [
    "task.name",
    "kernel.name",
    "train.seed",
    "train.lr",
    "val_accuracy",
    "val_f1",
    "val_mcc",
    "val_pearson",
    "val_spearman",
    "val_matched_accuracy",
    "val_mismatched_accuracy",
]
NA = math.nan


def glue_trials() -> pd.DataFrame:
    rows = [
        # MRPC: accuracy alone would pick 1e-3, F1 alone 1e-4; their mean picks 3e-4
        ("glue/mrpc", "prf", 0, 1e-4, 0.80, 0.87, NA, NA, NA, NA, NA),
        ("glue/mrpc", "prf", 0, 3e-4, 0.84, 0.86, NA, NA, NA, NA, NA),
        ("glue/mrpc", "prf", 0, 1e-3, 0.86, 0.80, NA, NA, NA, NA, NA),
        # CoLA: MCC, two seeds per point: 1e-4 has the better mean
        ("glue/cola", "prf", 0, 1e-4, NA, NA, 0.30, NA, NA, NA, NA),
        ("glue/cola", "prf", 1, 1e-4, NA, NA, 0.20, NA, NA, NA, NA),
        ("glue/cola", "prf", 0, 3e-4, NA, NA, 0.34, NA, NA, NA, NA),
        ("glue/cola", "prf", 1, 3e-4, NA, NA, 0.10, NA, NA, NA, NA),
        # STS-B and MNLI
        ("glue/stsb", "prf", 0, 1e-4, NA, NA, NA, 0.70, 0.68, NA, NA),
        ("glue/stsb", "prf", 0, 3e-4, NA, NA, NA, 0.60, 0.90, NA, NA),
        ("glue/mnli", "prf", 0, 1e-4, NA, NA, NA, NA, NA, 0.60, 0.62),
        ("glue/mnli", "prf", 0, 3e-4, NA, NA, NA, NA, NA, 0.59, 0.60),
        # a second kernel on MRPC only
        ("glue/mrpc", "softmax", 0, 1e-4, 0.70, 0.75, NA, NA, NA, NA, NA),
        ("glue/mrpc", "softmax", 0, 3e-4, 0.90, 0.91, NA, NA, NA, NA, NA),
    ]
    return frame(rows, GLUE_COLUMNS)


def test_glue_table_picks_the_grid_point_with_the_best_dev_score():
    table = analysis.glue_table(glue_trials())
    s = table.scores
    assert list(s.columns) == [
        "CoLA",
        "MRPC acc",
        "MRPC F1",
        "STS-B Pearson",
        "STS-B Spearman",
        "MNLI m",
        "MNLI mm",
        "GLUE",
    ]
    assert list(s.index) == ["softmax", "prf"]
    assert (s.loc["prf", "MRPC acc"], s.loc["prf", "MRPC F1"]) == (0.84, 0.86)
    assert s.loc["prf", "CoLA"] == pytest.approx(0.25)  # mean of the two seeds at 1e-4
    assert (s.loc["prf", "STS-B Pearson"], s.loc["prf", "STS-B Spearman"]) == (0.60, 0.90)
    assert (s.loc["prf", "MNLI m"], s.loc["prf", "MNLI mm"]) == (0.60, 0.62)
    # GLUE average: the mean of the task scores (mean of each task's metrics)
    assert s.loc["prf", "GLUE"] == pytest.approx((0.25 + 0.85 + 0.75 + 0.61) / 4)
    assert math.isnan(s.loc["softmax", "GLUE"])  # softmax ran MRPC only
    assert s.loc["softmax", "MRPC acc"] == 0.90
    chosen = table.chosen.set_index(["kernel.name", "task.name"])
    assert chosen.loc[("prf", "glue/mrpc"), "trial_ids"] == ["t001"]
    assert chosen.loc[("prf", "glue/mrpc"), "points"] == 3
    assert chosen.loc[("prf", "glue/cola"), "seeds"] == 2
    assert json.loads(chosen.loc[("prf", "glue/cola"), "point"])["train.lr"] == 1e-4
    assert table.formatted().loc["prf", "MRPC F1"] == "86.0"


def test_glue_table_uses_each_runs_best_evaluation_from_the_curves():
    trials = glue_trials()
    trials = trials[trials["task.name"] == "glue/mrpc"].reset_index(drop=True)
    # t002 (1e-3) ended at 0.86/0.80, but its first evaluation scored 0.90/0.92
    curves = pd.DataFrame(
        [
            {"trial_id": "t002", "step": 10, "val_accuracy": 0.90, "val_f1": 0.92},
            {"trial_id": "t002", "step": 20, "val_accuracy": 0.86, "val_f1": 0.80},
        ]
    )
    study = StudyResults("unused", trials, curves, {"metric": "val_accuracy", "mode": "max"})
    best = analysis.glue_table(study).scores
    assert (best.loc["prf", "MRPC acc"], best.loc["prf", "MRPC F1"]) == (0.90, 0.92)
    last = analysis.glue_table(study, checkpoint="last").scores
    assert (last.loc["prf", "MRPC acc"], last.loc["prf", "MRPC F1"]) == (0.84, 0.86)


def test_glue_table_metrics_are_those_the_task_specs_declare_and_training_reports():
    from lk_study.tasks.glue import SPECS
    from lk_study.train import metric_prefix

    pred = label = np.array([0, 1, 1, 0, 1])
    assert list(analysis.GLUE_TASKS) == [f"glue/{t}" for t in SPECS]  # GLUE's order
    for task, spec in SPECS.items():
        reported = [
            f"{metric_prefix(s)}{k}" for s in spec.eval_splits for k in spec.metric(pred, label)
        ]
        assert list(spec.metrics) == reported, task
        metrics = tuple(zip(spec.metrics, spec.metric_labels, strict=True))
        assert analysis.GLUE_TASKS[f"glue/{task}"] == (spec.label, metrics)


def test_glue_table_without_glue_tasks_says_why():
    with pytest.raises(NoResults, match="no GLUE task"):
        analysis.glue_table(lra_trials())


# ---------------------------------------------------------------------------- feature curve


def test_feature_curve_means_and_stds_per_family_and_count():
    rows = [
        ("prf", 16, 0, 0.60),
        ("prf", 16, 1, 0.64),
        ("prf", 32, 0, 0.70),
        ("prf", 32, 1, 0.74),
        ("gmm_prf", 16, 0, 0.80),
        ("gmm_prf", 16, 1, 0.90),
        ("softmax", None, 0, 0.95),
        ("softmax", None, 1, 0.97),
    ]
    df = frame(rows, ["kernel.name", "kernel.num_features", "train.seed", ACC])
    curve = analysis.feature_curve(df)
    assert curve["kernel.name"].tolist() == ["softmax", "prf", "prf", "gmm_prf"]
    assert math.isnan(curve["kernel.num_features"].iloc[0])
    assert curve["kernel.num_features"].iloc[1:].tolist() == [16, 32, 16]
    np.testing.assert_allclose(curve["mean"], [0.96, 0.62, 0.72, 0.85])
    np.testing.assert_allclose(
        curve["std"], [0.02 / math.sqrt(2), 0.04 / math.sqrt(2), 0.04 / math.sqrt(2), 0.1 / 2**0.5]
    )
    assert curve["count"].tolist() == [2, 2, 2, 2]
    assert curve.attrs["metric"] == ACC
    fig = plots.plot_feature_curve(curve)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "softmax (exact)",
        "prf",
        "gmm_prf",
    ]
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [62.0, 72.0])  # prf, in %


# ---------------------------------------------------------------------------- efficiency

BENCH_CSV = """kernel,seq_len,batch,heads,head_dim,num_features,pass,ms_median,ms_min,peak_mib
sdpa,1024,1,8,64,0,fwd,10.0,9.0,40.0
sdpa,1024,1,8,64,0,fwdbwd,30.0,28.0,80.0
sdpa,2048,1,8,64,0,fwd,40.0,38.0,160.0
sdpa,2048,1,8,64,0,fwdbwd,120.0,110.0,320.0
prf,1024,1,8,64,256,fwd,5.0,4.5,20.0
prf,1024,1,8,64,256,fwdbwd,15.0,14.0,40.0
prf,2048,1,8,64,256,fwd,10.0,9.5,40.0
prf,2048,1,8,64,256,fwdbwd,30.0,29.0,80.0
floor,2048,1,8,64,256,fwdbwd,12.0,11.0,0.0
"""


def write_bench(path: Path) -> Path:
    path.write_text(BENCH_CSV)
    return path


def test_efficiency_ratios_to_sdpa(tmp_path):
    eff = analysis.efficiency(write_bench(tmp_path / "bench.csv"))
    prf = eff[eff["kernel"] == "prf"].set_index(["seq_len", "pass"])
    assert prf.loc[(1024, "fwd"), "time_ratio"] == 0.5
    assert prf.loc[(2048, "fwdbwd"), "time_ratio"] == 0.25
    assert prf.loc[(2048, "fwd"), "memory_ratio"] == 0.25
    assert (eff[eff["kernel"] == "sdpa"]["time_ratio"] == 1.0).all()
    assert eff.set_index("kernel").loc["floor", "memory_ratio"] == 0.0
    table = analysis.efficiency_table(eff, "time_ratio", "fwdbwd")
    assert table.loc["prf"].tolist() == [0.5, 0.25]
    assert math.isnan(table.loc["floor", 1024])
    fig = plots.plot_efficiency(eff, "fwdbwd")
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert len(fig.axes[0].lines) == 3  # sdpa, prf, floor
    with pytest.raises(NoResults, match="no 'sdpa' rows"):
        analysis.efficiency(eff[eff["kernel"] != "sdpa"])


# ---------------------------------------------------------------------------- a study on disk


def plain(value):
    """A numpy scalar as the Python value json can write."""
    return value.item() if hasattr(value, "item") else value


def write_study(
    root: Path,
    trials: pd.DataFrame,
    search: dict,
    metric: str = "val_accuracy",
    extra: dict | None = None,
):
    """A grid study folder as lk_study.tune leaves it (lk_study.json; per trial params.json
    with its point and result.json with two reports, each with ``extra`` too): enough for
    load_study, which needs no Ray. Each trial's best.<metric> is its second report."""
    config = [c for c in trials.columns if c.startswith(analysis.CONFIG_PREFIXES)]
    record = {
        "name": root.name,
        "config": {c: plain(trials[c].iloc[0]) for c in config},
        "search": search,
        "objective": {"metric": metric, "mode": "max"},
    }
    analysis.write_json(str(root), analysis.STUDY_FILE, record)
    for i, row in trials.reset_index(drop=True).iterrows():
        folder = root / f"trial_driver_{row['trial_id']}_{i}"
        folder.mkdir()
        point = {c: plain(row[c]) for c in config}
        (folder / "params.json").write_text(json.dumps({"point": point}))
        best = float(row[f"best.{metric}"])
        reports = [
            {"trial_id": row["trial_id"], "step": 1, metric: best - 0.05, **(extra or {})},
            {"trial_id": row["trial_id"], "step": 2, metric: best, **(extra or {})},
        ]
        (folder / "result.json").write_text("\n".join(json.dumps(r) for r in reports))
    return root


def test_load_study_reads_older_metric_names_under_the_current_ones(tmp_path):
    trials = frame([("prf", 0, 0.6), ("softmax", 0, 0.7)], ["kernel.name", "train.seed", ACC])
    search = {"kernel.name": {"kind": "grid", "values": ["prf", "softmax"], "when": []}}
    old = write_study(tmp_path / "old", trials, search, extra={"peak_mem_mib": 12.5})
    new = write_study(tmp_path / "new", trials, search, extra={"peak_mib": 12.5})
    for path in (old, new):  # a study from before the rename reads as one from after it
        study = analysis.load_study(path)
        assert study.trials["peak_mib"].tolist() == [12.5, 12.5]
        assert study.curves["peak_mib"].tolist() == [12.5] * 4
        assert study.trials[ACC].tolist() == [0.6, 0.7]
        assert not [c for c in (*study.trials, *study.curves) if "peak_mem_mib" in c]


def test_param_importance_ranks_the_parameter_that_decides_the_metric(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for kernel, base in (("prf", 0.6), ("gmm_prf", 0.8), ("softmax", 0.7)):
        for lr in np.exp(rng.uniform(np.log(1e-4), np.log(1e-2), 5)):
            rows.append((kernel, float(lr), 0, base + 0.001 * rng.standard_normal()))
    trials = frame(rows, ["kernel.name", "train.lr", "train.seed", ACC])
    search = {
        "kernel.name": {"kind": "choice", "values": ["softmax", "prf", "gmm_prf"], "when": []},
        "train.lr": {"kind": "loguniform", "values": [1e-4, 1e-2], "when": []},
    }
    study = analysis.load_study(write_study(tmp_path / "imp", trials, search))
    importance = analysis.param_importance(study)
    assert importance.index[0] == "kernel.name" and importance.iloc[0] > 0.9
    assert importance.sum() == pytest.approx(1.0)
    fig = plots.plot_importance(importance)
    assert isinstance(fig, Figure)
    assert isinstance(plots.plot_parallel(study), Figure)
    few = StudyResults(study.path, study.trials.head(2), study.curves, study.objective)
    with pytest.raises(NoResults, match=">= 3 finished trials"):
        analysis.param_importance(few)
    flat = StudyResults(
        study.path, study.trials.assign(**{ACC: 0.5}), study.curves, study.objective
    )
    with pytest.raises(NoResults, match="to vary; it is the same in all 15 trials"):
        analysis.param_importance(flat)


def test_feature_curve_needs_two_feature_counts():
    rows = [("prf", 16, 0, 0.6), ("prf", 16, 1, 0.7), ("softmax", None, 0, 0.9)]
    df = frame(rows, ["kernel.name", "kernel.num_features", "train.seed", ACC])
    with pytest.raises(NoResults, match="two kernel.num_features values or more; ran: 16"):
        analysis.feature_curve(df)


def test_cli_results_tables_formats_and_figures(tmp_path, capsys):
    trials = lra_trials()
    trials = trials[(trials["status"] == "TERMINATED") & trials[ACC].notna()]
    m = trials["kernel.name"].map({"softmax": 16, "gmm_prf": 32})  # two values: a features table
    trials = trials.assign(**{"kernel.num_features": m})
    search = {
        "kernel.name": {"kind": "grid", "values": ["softmax", "gmm_prf"], "when": []},
        "task.name": {"kind": "grid", "values": ["listops", "text", "image"], "when": []},
        "train.lr": {"kind": "grid", "values": [1e-4, 1e-3], "when": []},
    }
    root = write_study(tmp_path / "lra", trials, search)
    assert main(["results", str(root), "--table", "lra", "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "| kernel.name | ListOps | Text | Image | Avg |" in out
    assert "| softmax | 37.00 ± 1.00 | 65.00 ± 1.00 | 42.00 ± 2.00 | 48.00 ± 1.33 |" in out
    assert main(["results", str(root), "--table", "lra", "--format", "csv"]) == 0
    csv = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    row = csv[(csv["kernel.name"] == "gmm_prf") & (csv["column"] == "ListOps")].iloc[0]
    assert (row["mean"], row["count"]) == (pytest.approx(0.39), 3)
    assert main(["results", str(root), "--table", "features"]) == 0
    assert "kernel.num_features" in capsys.readouterr().out
    assert main(["results", str(root), "--table", "glue"]) == 2  # no GLUE task: an error
    assert "no GLUE task" in capsys.readouterr().err
    figures = tmp_path / "figures"
    out_csv = tmp_path / "trials.csv"
    argv = ["results", str(root), "--format", "markdown", "--plot", str(figures)]
    assert main([*argv, "--out", str(out_csv)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| trial_id | status |")
    assert "spectrum: skipped" in out and "glue: skipped" in out
    assert sorted(p.name for p in figures.iterdir()) == [
        "curves.png",
        "features.png",
        "importance.png",
        "lra.png",
        "parallel.png",
    ]
    assert len(pd.read_csv(out_csv)) == len(trials)


def test_table_plots_return_figures():
    lra = plots.plot_lra(analysis.lra_table(lra_trials()))
    assert isinstance(lra, Figure)
    assert len(lra.axes[0].patches) == 2 * 4  # 2 kernels x (3 tasks + Avg)
    glue = plots.plot_glue(analysis.glue_table(glue_trials()))
    assert isinstance(glue, Figure)
    assert glue.axes[0].images[0].get_array().shape == (2, 8)


# ---------------------------------------------------------------------------- notebooks

NOTEBOOKS = ("kernel_families", "feature_counts", "glue", "efficiency", "learned_spectra")


def test_notebooks_have_a_parameters_cell_and_no_outputs():
    import nbformat

    for name in NOTEBOOKS:
        nb = nbformat.read(ROOT / "analysis" / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), name


def run_notebook(name: str, params: dict, workdir: Path):
    """Execute analysis/NAME.ipynb with ``params`` injected after its parameters cell (as
    papermill does), in this interpreter's kernel; returns the executed notebook."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "analysis" / f"{name}.ipynb", as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(at + 1, cell)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    return nb


def outputs(nb, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if kind in str(o)]


@pytest.mark.integration
def test_notebooks_run_against_a_real_smoke_study(tmp_path, tune_smoke):
    # (1) a real --smoke study through Ray Tune + Train, in its own Ray temp dir
    storage = tmp_path / "studies"
    tune_smoke("search_spaces/feature_counts.yaml", storage)
    study = storage / "feature_counts-smoke"
    res = analysis.load_study(study)
    assert sorted(res.trials["kernel.name"]) == ["gmm_prf", "gmm_prf", "prf", "prf"]
    checkpoint = analysis.best_checkpoint(res)
    assert "/train_runs/train-" in checkpoint
    bench = write_bench(tmp_path / "bench.csv")

    # (2) every notebook, headless, against these inputs
    figures = tmp_path / "figures"
    runs = {
        "kernel_families": {"study_path": str(study), "figures_dir": str(figures / "kf")},
        "feature_counts": {"study_path": str(study), "figures_dir": str(figures / "fc")},
        "glue": {"study_path": str(study), "figures_dir": str(figures / "glue")},
        "efficiency": {"csv_path": str(bench), "figures_dir": str(figures / "eff")},
        "learned_spectra": {"checkpoint": checkpoint, "figures_dir": str(figures / "ls")},
    }
    expected = {
        "kernel_families": {"kernel_families.png", "curves.png", "parallel.png"},
        "feature_counts": {"feature_counts.png", "curves.png"},
        "glue": {"curves.png"},
        "efficiency": {"efficiency.png", "efficiency_train.png"},  # + docs/bench/train.csv
        "learned_spectra": {"learned_spectra.png"},
    }
    executed = {}
    for name, params in runs.items():
        executed[name] = run_notebook(name, params, tmp_path)
        made = {p.name for p in Path(params["figures_dir"]).iterdir()}
        assert made == expected[name], name
        assert len(outputs(executed[name], "image/png")) == len(expected[name]), name
    assert outputs(executed["kernel_families"], "No LRA table: no LRA task in this study")
    assert outputs(executed["kernel_families"], "No importance")  # 2 trials: too few
    assert outputs(executed["glue"], "No GLUE table: no GLUE task in this study")
    assert outputs(executed["learned_spectra"], "gmm_prf at step 10")

    # (3) the same study through the CLI: tables and figures
    figures_cli = tmp_path / "cli_figures"
    out = subprocess.run(
        [sys.executable, "-m", "lk_study.cli", "results", str(study), "--table", "features"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "gmm_prf" in out and "prf" in out
    assert main(["results", str(study), "--plot", str(figures_cli)]) == 0
    made = {p.name for p in figures_cli.iterdir()}
    assert made == {"curves.png", "features.png", "parallel.png", "spectrum.png"}
