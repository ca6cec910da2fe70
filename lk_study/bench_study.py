"""``lk-study bench study``: where a study's time goes, per trial runner.

Runs a study file (default the quickstart), at ``--smoke`` size and at full size, once per
trial runner (``scaling.runner``: ``train`` = a Ray Train TorchTrainer per trial, the
reference; ``trial`` = the loop inside the Tune trial), each in a fresh storage, and reads each
study's ``timeline.json`` (``lk_study.progress.Timeline``, driver clock) and rows:

    start-up_i   = (first report_i - start_i) - seconds_i(first report)
    Ray's share  = 1 - Σ_i seconds_i(last report) / Σ_i (end_i - start_i)

``seconds`` is the training and evaluation time a trial reports (from the moment its data and
model are ready), so start-up counts everything before: the trial's process, imports, Ray
Train's controller and worker group, the data cache. Wall = the whole ``run_study`` call
(Ray's start included). One CSV row per trial; ``summary`` gives medians and the ratio of each
runner to the reference measured in the same run.
"""

from __future__ import annotations

import csv
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from lk_study.progress import TIMELINE_FILE
from lk_study.storage import read_json
from lk_study.study import load_study_file

COLUMNS = ("study", "runner", "trial_id", "startup_s", "training_s", "trial_wall_s", "study_wall_s")
REFERENCE = "train"


def bench_study(
    path: str | Path = "search_spaces/quickstart.yaml",
    runners: Sequence[str] = ("train", "trial"),
    sizes: Sequence[str] = ("smoke", "full"),
    storage: str | None = None,
) -> list[dict]:
    """Run the study file at each size with each runner; one row (``COLUMNS``) per trial."""
    from lk_study.tune import run_study

    rows = []
    root = storage or tempfile.mkdtemp(prefix="lk_bench_study_")
    for size in sizes:
        for runner in runners:
            study = load_study_file(path, {"scaling.runner": runner}, smoke=size == "smoke")
            where = f"{root}/{size}-{runner}"
            print(f"bench study: {study.name} ({size}) on the {runner} runner -> {where}")
            t0 = time.perf_counter()
            exp = run_study(study, where)
            wall = time.perf_counter() - t0
            timeline = read_json(exp, TIMELINE_FILE) or {}
            for tid, t in sorted(timeline.items()):
                startup = t.get("first", math.nan) - t["start"] - t.get("first_seconds", math.nan)
                rows.append(
                    {
                        "study": size,
                        "runner": runner,
                        "trial_id": tid,
                        "startup_s": startup,
                        "training_s": t.get("seconds", math.nan),
                        "trial_wall_s": t.get("end", math.nan) - t["start"],
                        "study_wall_s": wall,
                    }
                )
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per (study, runner): trials, median start-up, Ray's share of trial wall time, the
    study's wall time, and start-up / wall ratios to the ``train`` runner of the same size."""
    out = []
    for size in dict.fromkeys(r["study"] for r in rows):
        by_runner = {}
        for runner in dict.fromkeys(r["runner"] for r in rows if r["study"] == size):
            rs = [r for r in rows if r["study"] == size and r["runner"] == runner]
            ok = [r for r in rs if not math.isnan(r["training_s"] + r["trial_wall_s"])]
            wall = sum(r["trial_wall_s"] for r in ok)
            by_runner[runner] = {
                "study": size,
                "runner": runner,
                "trials": len(rs),
                "median_startup_s": statistics.median(r["startup_s"] for r in rs),
                "ray_share": 1 - sum(r["training_s"] for r in ok) / wall if wall else math.nan,
                "study_wall_s": rs[0]["study_wall_s"],
            }
        ref = by_runner.get(REFERENCE)
        for s in by_runner.values():
            for key in ("median_startup_s", "study_wall_s"):
                s[f"{key}_vs_{REFERENCE}"] = s[key] / ref[key] if ref else math.nan
            out.append(s)
    return out


def write_csv(rows: list[dict], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def format_summary(summ: list[dict]) -> str:
    head = f"{'study':6} {'runner':6} {'trials':>6} {'startup s':>9} {'Ray share':>9} {'wall s':>7}"
    lines = [head + f" {'startup/' + REFERENCE:>13} {'wall/' + REFERENCE:>10}"]
    for s in summ:
        startup, wall = s[f"median_startup_s_vs_{REFERENCE}"], s[f"study_wall_s_vs_{REFERENCE}"]
        lines.append(
            f"{s['study']:6} {s['runner']:6} {s['trials']:6d} {s['median_startup_s']:9.2f} "
            f"{s['ray_share']:9.1%} {s['study_wall_s']:7.1f} {startup:13.2f} {wall:10.2f}"
        )
    return "\n".join(lines)
