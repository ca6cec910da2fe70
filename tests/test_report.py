"""The sparsity table against hand-computed means and stds, exported studies, and (integration)
``lk-study report`` on real --smoke studies: finished, exported and read back, still running,
and the sparsity study's table and figure."""

from __future__ import annotations

import glob
import io
import json
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from lk_study import analysis, plots, report
from lk_study.analysis import NoResults, StudyResults
from lk_study.checkpoints import checkpoint_state
from lk_study.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
ACC = "best.val_accuracy"
COLUMNS = ["kernel.name", "task.num_signal", "task.seq_len", "train.seed", ACC]
DENSE, MID, SPARSE = "k=101/200 (50.5%)", "k=25/200 (12.5%)", "k=5/200 (2.5%)"
ROWS = [
    # softmax: three seeds at each level
    ("softmax", 5, 200, 0, 0.60),
    ("softmax", 5, 200, 1, 0.70),
    ("softmax", 5, 200, 2, 0.80),
    ("softmax", 25, 200, 0, 0.80),
    ("softmax", 25, 200, 1, 0.83),
    ("softmax", 25, 200, 2, 0.86),
    ("softmax", 101, 200, 0, 0.90),
    ("softmax", 101, 200, 1, 0.92),
    ("softmax", 101, 200, 2, 0.94),
    # gmm_prf: the sparse level listed first, two seeds only at the middle one, none dense
    ("gmm_prf", 5, 200, 0, 0.75),
    ("gmm_prf", 5, 200, 1, 0.76),
    ("gmm_prf", 5, 200, 2, 0.80),
    ("gmm_prf", 25, 200, 0, 0.85),
    ("gmm_prf", 25, 200, 1, 0.95),
    # not in the table: no metric yet
    ("gmm_prf", 101, 200, 0, math.nan),
]


def sparsity_trials() -> pd.DataFrame:
    df = pd.DataFrame(ROWS, columns=COLUMNS)
    df.insert(0, "trial_id", [f"t{i:03d}" for i in range(len(df))])
    df["status"] = "TERMINATED"
    failed = df.iloc[[0]].assign(trial_id="failed", status="ERROR", **{ACC: 0.99})
    return pd.concat([df, failed], ignore_index=True)  # an ERROR trial: left out


def test_sparsity_table_gives_the_hand_computed_means_stds_and_seed_counts():
    table = analysis.sparsity_table(sparsity_trials())
    assert list(table.mean.columns) == [DENSE, MID, SPARSE]  # dense -> sparse
    assert list(table.mean.index) == ["softmax", "gmm_prf"]  # registry order
    # softmax at k=5: (0.6 + 0.7 + 0.8) / 3 = 0.7; sample std sqrt((0.01 + 0 + 0.01) / 2) = 0.1
    expected_mean = {"softmax": [0.92, 0.83, 0.70], "gmm_prf": [math.nan, 0.90, 0.77]}
    # gmm_prf at k=25: mean 0.9, std sqrt((0.05² + 0.05²) / 1) = 0.0707107; at k=5: mean
    # 0.77, deviations -0.02, -0.01, 0.03: sqrt((4 + 1 + 9)e-4 / 2) = 0.0264575
    expected_std = {"softmax": [0.02, 0.03, 0.10], "gmm_prf": [math.nan, 0.0707107, 0.0264575]}
    for kernel in expected_mean:
        got = table.mean.loc[kernel].tolist()
        assert got == pytest.approx(expected_mean[kernel], abs=1e-9, nan_ok=True)
        got = table.std.loc[kernel].tolist()
        assert got == pytest.approx(expected_std[kernel], abs=1e-6, nan_ok=True)
    assert table.count.loc["softmax"].tolist() == [3, 3, 3]
    assert table.count.loc["gmm_prf"].tolist() == [0, 2, 3]
    assert table.levels["density"].tolist() == pytest.approx([101 / 200, 25 / 200, 5 / 200])
    assert table.formatted().loc["softmax", SPARSE] == "70.00 ± 10.00"
    assert table.formatted().loc["gmm_prf", DENSE] == ""


def test_sparsity_table_formats_and_figure():
    study = StudyResults("mem://", sparsity_trials(), pd.DataFrame(), {"metric": "val_accuracy"})
    text = analysis.format_table(study, "sparsity", "markdown")
    assert f"| kernel.name | {DENSE} | {MID} | {SPARSE} |" in text
    assert "| softmax | 92.00 ± 2.00 | 83.00 ± 3.00 | 70.00 ± 10.00 |" in text
    assert "(0–3 per cell)" in text
    csv = pd.read_csv(io.StringIO(analysis.format_table(study, "sparsity", "csv")))
    row = csv[(csv["kernel.name"] == "gmm_prf") & (csv["column"] == MID)].iloc[0]
    assert (row["mean"], row["count"], row["task.num_signal"]) == (pytest.approx(0.9), 2, 25)
    assert row["density"] == pytest.approx(0.125)
    args = build_parser().parse_args(["results", "x", "--table", "sparsity"])
    assert args.table == "sparsity"
    fig = plots.plot_sparsity(analysis.sparsity_table(study))
    assert isinstance(fig, Figure)
    assert len(fig.axes[0].containers) == 2  # one error-bar line per kernel
    assert fig.axes[0].get_xscale() == "log"


def test_sparsity_table_needs_two_levels():
    one = sparsity_trials()
    one = one[one["task.num_signal"] == 5]
    with pytest.raises(NoResults, match="two .* levels or more; this study has k=5/200"):
        analysis.sparsity_table(one)
    with pytest.raises(NoResults, match="task.num_signal"):
        analysis.sparsity_table(one.drop(columns="task.num_signal"))


def test_an_exported_folder_reads_back_without_tune_files(tmp_path):
    trials = sparsity_trials().assign(trial_dir=None, error=None)
    trials.loc[trials["status"] == "ERROR", "error"] = "FloatingPointError: loss became nan"
    curves = pd.DataFrame(
        {"trial_id": ["t000", "t000"], "step": [5, 10], "val_accuracy": [0.5, 0.6]}
    )
    trials.to_parquet(tmp_path / "trials.parquet", index=False)
    curves.to_parquet(tmp_path / "curves.parquet", index=False)
    study = analysis.load_study(tmp_path)  # no lk_study.json, no experiment state
    assert study.objective == {"metric": "val_accuracy", "mode": "max"}
    assert list(study.trials.columns) == list(trials.columns)
    assert study.trials["trial_id"].tolist() == trials["trial_id"].tolist()
    assert study.trials[ACC].tolist() == pytest.approx(trials[ACC].tolist(), nan_ok=True)
    assert study.curves.equals(curves)
    assert analysis.wall_time(study) == {}
    timeline = {"t000": {"start": 100.0, "end": 130.0}, "t001": {"start": 110.0, "end": 170.0}}
    (tmp_path / "timeline.json").write_text(json.dumps(timeline))
    timing = analysis.wall_time(study)
    assert (timing["seconds"], timing["trial_seconds"], timing["trials"]) == (70.0, 90.0, 2)
    text = report.report_markdown(study)
    assert "an exported study" in text and "- trials: 16 (15 TERMINATED, 1 ERROR)" in text
    assert "| failed | ERROR | FloatingPointError: loss became nan |" in text  # never dropped
    assert "### sparsity" in text and "- lra: not applicable (no LRA task" in text
    html = report.to_html(text, "t")
    assert "<h2>Leaderboard</h2>" in html and "<td>failed</td>" in html


# ---------------------------------------------------------------------------- integration


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory, tune_smoke) -> Path:
    storage = tmp_path_factory.mktemp("studies")
    tune_smoke("search_spaces/quickstart.yaml", storage)
    return storage / "quickstart-smoke"


def images(report_file: Path) -> list[Path]:
    text = report_file.read_text()
    found = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text) + re.findall(r'src="([^"]+)"', text)
    return [report_file.parent / name for name in found]


def section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.integration
def test_report_on_a_finished_study(quickstart):
    assert main(["report", str(quickstart)]) == 0
    path = quickstart / "report" / "report.md"
    text = path.read_text()
    study = analysis.load_study(quickstart)
    assert text.startswith("# Study report: quickstart-smoke\n")
    assert "(a finished study)" in text and "- trials: 2 (2 TERMINATED)" in text
    assert "from timeline.json" in text and "search_spaces/quickstart.yaml" in text
    for tid in study.leaderboard()["trial_id"]:
        assert f"| {tid} |" in section(text, "Leaderboard")
    assert "### features" in text and "- lra: not applicable" in text
    shown = images(path)
    assert {p.name for p in shown} >= {"curves.png", "features.png"}
    assert all(p.is_file() for p in shown)


@pytest.mark.integration
def test_report_export_round_trip_and_html(quickstart, tmp_path):
    exported, html_dir = tmp_path / "exported", tmp_path / "html"
    argv = ["report", str(quickstart), "--export", str(exported), "--out", str(html_dir)]
    assert main([*argv, "--format", "html"]) == 0
    assert sorted(p.name for p in exported.iterdir()) == [
        "curves.parquet",
        "lk_study.json",
        "timeline.json",
        "train_runs",  # the best learned-kernel trial's weights, for its spectrum
        "trials.parquet",
    ]
    shown = images(html_dir / "report.html")
    assert shown and all(p.is_file() for p in shown)
    assert main(["report", str(exported)]) == 0
    again = (exported / "report" / "report.md").read_text()
    assert "(an exported study" in again and "- trials: 2 (2 TERMINATED)" in again
    original = report.report_markdown(analysis.load_study(quickstart))
    assert section(again, "Leaderboard") == section(original, "Leaderboard")
    assert section(again, "Tables") == section(original, "Tables")
    assert all(p.is_file() for p in images(exported / "report" / "report.md"))
    # the spectrum is drawn from the exported weights: the original model's, optimiser dropped
    assert "![spectrum](spectrum.png)" in again
    best = analysis.best_checkpoint(analysis.load_study(quickstart))
    _, kept = checkpoint_state(analysis.best_checkpoint(analysis.load_study(exported)))
    _, full = checkpoint_state(best)
    assert set(kept) == set(full) - {"optim", "sched", "rng"}
    assert kept["config"] == full["config"] and kept["step"] == full["step"]
    assert kept["model"].keys() == full["model"].keys()
    assert all(torch.equal(kept["model"][k], v) for k, v in full["model"].items())


@pytest.mark.integration
def test_report_on_a_study_still_running(quickstart, tmp_path):
    running = tmp_path / "running"
    shutil.copytree(quickstart, running, ignore=shutil.ignore_patterns("report"))
    (running / "trials.parquet").unlink()  # written when a study ends
    (running / "timeline.json").unlink()
    state_file = sorted(glob.glob(str(running / "experiment_state-*.json")))[-1]
    state = json.loads(Path(state_file).read_text())
    meta = json.loads(state["trial_data"][0][0])
    meta["status"] = "RUNNING"
    state["trial_data"][0][0] = json.dumps(meta)
    Path(state_file).write_text(json.dumps(state))
    assert main(["report", str(running)]) == 0
    text = (running / "report" / "report.md").read_text()
    assert "- trials: 2 (1 RUNNING, 1 TERMINATED)" in text
    assert "a study still running" in text and "from result.json timestamps" in text
    assert f"| {meta['trial_id']} | RUNNING |" in section(text, "Leaderboard")
    assert all(p.is_file() for p in images(running / "report" / "report.md"))


@pytest.mark.integration
def test_report_of_the_sparsity_smoke_study_has_the_sparsity_table(tmp_path, tune_smoke):
    tune_smoke("search_spaces/sparsity.yaml", tmp_path)
    study = analysis.load_study(tmp_path / "sparsity-smoke")
    assert len(study.trials) == 4
    table = analysis.sparsity_table(study)
    assert list(table.mean.columns) == ["k=15/32 (46.9%)", "k=5/32 (15.6%)"]
    assert main(["report", study.path, "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "### sparsity" in text and "| kernel.name | k=15/32 (46.9%) | k=5/32 (15.6%) |" in text
    assert (tmp_path / "out" / "sparsity.png").is_file() and "![sparsity](sparsity.png)" in text
