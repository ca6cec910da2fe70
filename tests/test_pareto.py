"""Pareto search (issue 13): a list objective, its checks before Ray starts, the front in the
results table against a naive dominance oracle, and a multi-objective study end to end."""

import itertools
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lk_study.analysis import format_table, load_study, pareto_front
from lk_study.config import ConfigError
from lk_study.study import load_study_file, study_from_dict, study_from_record, study_record

ROOT = Path(__file__).resolve().parents[1]
PARETO = ROOT / "search_spaces" / "kernel_pareto.yaml"
TWO = [{"metric": "val_accuracy", "mode": "max"}, {"metric": "seconds", "mode": "min"}]


def study(**extra):
    base = {
        "name": "p",
        "search": {"kernel.name": {"choice": ["softmax", "prf"]}},
        "objective": TWO,
        "scheduler": {"name": "none"},
    }
    return study_from_dict({**base, **extra})


def test_a_list_objective_is_a_pareto_search_and_round_trips():
    s = study()
    assert [(o.metric, o.mode) for o in s.objectives] == [
        ("val_accuracy", "max"),
        ("seconds", "min"),
    ]
    assert s.objective.metric == "val_accuracy"  # the first: the leaderboard's and Tune's
    again = study_from_record(study_record(s))
    assert again.objectives == s.objectives
    assert "also" not in study_record(study(objective={"metric": "val_accuracy"}))


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"scheduler": {"name": "asha"}}, "scheduler: {name: none}"),
        ({"searcher": "random"}, "needs searcher: optuna"),
        ({"objective": [TWO[0], {"metric": "val_f1", "mode": "max"}]}, "'val_f1' is not reported"),
        ({"objective": [TWO[0], TWO[0]]}, "list of different"),
        ({"objective": [TWO[0], {"metric": "seconds", "mode": "fastest"}]}, "mode"),
    ],
)
def test_pareto_searches_that_cannot_run_are_refused(extra, message):
    with pytest.raises(ConfigError, match=message):
        study(**extra)


def test_the_paper_file_with_asha_is_refused_naming_file_and_line():
    with pytest.raises(ConfigError, match=r"kernel_pareto.yaml:\d+: a Pareto search"):
        load_study_file(PARETO, {"scheduler.name": "asha"})


def naive_front(points: list[tuple[float, float]], ok: list[bool]) -> list[bool]:
    """Oracle: a point is on the front if no other valid point is >= on accuracy, <= on
    seconds and different."""
    out = []
    for i, (a, s) in enumerate(points):
        dominated = any(
            ok[j] and b >= a and t <= s and (b, t) != (a, s) for j, (b, t) in enumerate(points)
        )
        out.append(ok[i] and not dominated)
    return out


def test_pareto_front_matches_a_naive_oracle():
    trials = pd.DataFrame(
        {
            "trial_id": list("abcdefg"),
            "status": ["TERMINATED"] * 5 + ["ERROR", "TERMINATED"],
            "val_accuracy": [0.9, 0.8, 0.85, 0.9, 0.95, 0.99, math.nan],
            "seconds": [10.0, 5.0, 12.0, 10.0, 30.0, 1.0, 1.0],
        }
    )
    front = pareto_front(trials, TWO)
    # a, d: the same point (neither dominates); b: fastest; e: most accurate; c: dominated
    # by a; f: ERROR; g: no accuracy
    assert front.tolist() == [True, True, False, True, True, False, False]
    ok = [
        s == "TERMINATED" and v == v
        for s, v in zip(trials.status, trials.val_accuracy, strict=True)
    ]
    pts = list(zip(trials.val_accuracy, trials.seconds, strict=True))
    assert front.tolist() == naive_front(pts, ok)
    for a, b in itertools.permutations(range(5), 2):  # no front point dominates another
        if front[a] and front[b]:
            assert not (pts[b][0] >= pts[a][0] and pts[b][1] <= pts[a][1] and pts[a] != pts[b])


@pytest.mark.integration
def test_a_pareto_study_runs_end_to_end_and_marks_its_front(tmp_path):
    cmd = [sys.executable, "-m", "lk_study.cli", "tune", str(PARETO), "--smoke"]
    out = subprocess.run(
        [*cmd, "--storage", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    res = load_study(tmp_path / "kernel_pareto-smoke")
    t = res.trials
    assert len(t) == 3 and (t["status"] == "TERMINATED").all()
    ok = [True] * len(t)
    expected = naive_front(list(zip(t["val_accuracy"], t["seconds"], strict=True)), ok)
    assert t["pareto"].tolist() == expected and any(expected)
    saved = pd.read_parquet(tmp_path / "kernel_pareto-smoke" / "trials.parquet")
    assert saved["pareto"].tolist() == expected
    table = format_table(res, "pareto")
    assert table.startswith("Pareto front: val_accuracy (max), seconds (min)")
    for tid, on in zip(t["trial_id"], expected, strict=True):
        assert (tid in table) == on
