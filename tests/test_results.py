"""The published results in docs/results/: complete (every trial its study file defines, none
lost), their table recomputed by a naive pandas groupby, the README quoting exactly those
numbers, and the committed report rebuilt by ``lk-study report`` from the committed Parquet
files. No training here: these read what the study in the README wrote."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lk_study import analysis
from lk_study.cli import main
from lk_study.kernels import KERNELS
from lk_study.study import load_study_file

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "sparsity_cpu"
STUDY_FILE = ROOT / "search_spaces" / "sparsity_cpu.yaml"
ACC = "best.val_accuracy"
KEYS = ["kernel.name", "task.num_signal", "train.seed"]


@pytest.fixture(scope="module")
def study() -> analysis.StudyResults:
    return analysis.load_study(str(RESULTS))


def test_every_kernel_level_and_seed_of_the_study_file_is_there(study):
    spec = load_study_file(STUDY_FILE)
    expected = sorted(tuple(p[k] for k in KEYS) for p in spec.points())
    trials = study.trials
    assert sorted(trials[KEYS].itertuples(index=False, name=None)) == expected
    assert len(expected) == 120 and set(trials["kernel.name"]) == set(KERNELS)
    budget = spec.config.train.max_steps
    finished = trials["status"].eq("TERMINATED") & trials["step"].eq(budget)
    failed = trials["status"].eq("ERROR")
    assert (finished | failed).all(), trials.loc[~(finished | failed), ["trial_id", "status"]]
    if failed.any():  # a failed trial stays in the table, with its reason
        assert trials.loc[failed, "error"].astype(str).str.len().gt(0).all()


def test_the_sparsity_table_equals_a_naive_groupby(study):
    table = analysis.sparsity_table(study)
    done = study.trials[study.trials["status"].eq("TERMINATED")]
    assert table.count.to_numpy().sum() == len(done)
    for (kernel, k), cell in done.groupby(["kernel.name", "task.num_signal"]):
        values = cell[ACC].to_list()
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
        column = f"k={k}/64 ({100 * k / 64:.1f}%)"
        assert table.mean.loc[kernel, column] == pytest.approx(mean, abs=1e-12)
        assert table.std.loc[kernel, column] == pytest.approx(var**0.5, abs=1e-12)
        assert table.count.loc[kernel, column] == len(values) == 3


def test_softmax_solves_the_sparsest_level(study):
    table = analysis.sparsity_table(study)
    sparsest = table.mean.columns[-1]
    assert table.levels.loc[sparsest, "density"] <= 0.05
    assert table.mean.loc["softmax", sparsest] >= 0.90


def test_the_readme_quotes_the_committed_table(study):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert analysis.format_table(study, "sparsity", "markdown").strip() in readme


def _sections(markdown: str) -> dict[str, str]:
    """## sections of a report, without the lines that name when and where it was written
    (the study's own path included: the clone's folder)."""
    markdown = re.sub(r"[^\s`(]*docs/results/sparsity_cpu", "<study>", markdown)
    parts = re.split(r"^## ", markdown, flags=re.M)[1:]
    keep = {p.split("\n", 1)[0]: p for p in parts if not p.startswith("Machine")}
    return {k: re.sub(r"^Written .*$", "", v, flags=re.M) for k, v in keep.items()}


def test_the_committed_report_is_rebuilt_from_the_parquet_files(tmp_path, capsys):
    assert main(["report", str(RESULTS), "--out", str(tmp_path)]) == 0
    rebuilt = (tmp_path / "report.md").read_text(encoding="utf-8")
    committed = (RESULTS / "report" / "report.md").read_text(encoding="utf-8")
    assert _sections(rebuilt) == _sections(committed)
    for figure in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", committed):
        assert (RESULTS / "report" / figure).is_file() and (tmp_path / figure).is_file()
    assert "sparsity" in re.findall(r"!\[([^\]]*)\]", committed)
