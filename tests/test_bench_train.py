"""Smoke tier: the training-speed benchmark (``lk-study bench train``) runs end to end on a
tiny model, its FLOP bound matches a hand count, and its ratios are the quotients of its
measured columns. Speed is never asserted."""

import csv
import math

import pytest
import torch

from lk_study import bench_train
from lk_study.bench_train import (
    COLUMNS,
    TrainBench,
    add_ratios,
    flop_ratio_bound,
    step_flops,
    trial_config,
)
from lk_study.cli import main
from lk_study.config import Config, with_overrides
from lk_study.tables import efficiency_train

TINY_SETS = ["model.d_model=16", "model.d_ff=32", "model.num_layers=1", "model.num_heads=2"]
TINY = {k: int(v) for k, v in (s.split("=") for s in TINY_SETS)}


def test_cli_tiny_run_writes_the_csv_and_the_figure(tmp_path, capsys):
    out, png = tmp_path / "train.csv", tmp_path / "train.png"
    argv = ["bench", "train", "--kernels", "prf", "rks", "--lengths", "16", "24"]
    argv += ["--repeats", "1", "--features", "8", "--device", "cpu"]
    argv += [x for s in TINY_SETS for x in ("--set", s)]
    assert main([*argv, "--out", str(out), "--plot", str(png)]) == 0
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    assert [(r["kernel"], int(r["seq_len"])) for r in rows] == [
        (k, n) for n in (16, 24) for k in ("softmax", "prf", "rks")
    ]
    ref = {r["seq_len"]: r for r in rows if r["kernel"] == "softmax"}
    for r in rows:
        steps, peak = float(r["steps_per_s"]), float(r["peak_mib"])
        assert math.isfinite(steps) and steps > 0 and peak > 0 and r["note"] == ""
        assert float(r["tokens_per_s"]) == pytest.approx(2 * int(r["seq_len"]) * steps, rel=1e-4)
        base = ref[r["seq_len"]]
        assert float(r["speedup"]) == pytest.approx(steps / float(base["steps_per_s"]), rel=1e-4)
        assert float(r["memory_ratio"]) == pytest.approx(peak / float(base["peak_mib"]), rel=1e-4)
        assert float(r["flop_ratio_bound"]) >= 1.0 or r["kernel"] != "softmax"
    assert {r["num_features"] for r in rows} == {"0", "8", "9"}  # rks: + the smoothing column
    eff = efficiency_train(out)
    assert eff["speedup"].tolist() == pytest.approx([float(r["speedup"]) for r in rows], rel=1e-4)
    assert eff["of_bound"].tolist() == pytest.approx(
        (eff["speedup"] / eff["flop_ratio_bound"]).tolist()
    )
    assert png.stat().st_size > 0
    printed = capsys.readouterr()
    assert "N=24" in printed.out and "speedup" in printed.out
    assert "repeat 1/1" in printed.err


def test_flop_count_against_a_hand_count():
    """T = 63 + 1, D = 32, H = 2 (d_h = 16), F = 64, L = 2, B = 1, M = 16.

    dense = 8·64·32² + 4·64·32·64 = 524288 + 524288 = 1048576
    softmax: 4·64²·32 = 524288
    prf (antithetic: m = 8, M' = 16): 4·64·8·32 + 4·64·16·(32 + 2) = 65536 + 139264 = 204800
    rks, s = 1 (m = 8, M' = 17): 65536 + 4·64·17·34 = 65536 + 147968 = 213504
    elu (m = 0, M' = d_h = 16): 4·64·16·34 = 139264
    a step: 3·B·L·(dense + attention) = 6·(...)
    """
    sizes = {"model.d_model": 32, "model.num_heads": 2, "model.d_ff": 64, "model.num_layers": 2}
    base = with_overrides(
        Config(), {**sizes, "task.name": "text", "kernel.num_features": 16, "kernel.smoothing": 1}
    )

    def cfg(name: str) -> Config:
        return with_overrides(base, {"kernel.name": name})

    assert step_flops(cfg("softmax"), 63, 1) == 6 * (1048576 + 524288) == 9437184
    assert step_flops(cfg("prf"), 63, 1) == 6 * (1048576 + 204800) == 7520256
    assert step_flops(cfg("rks"), 63, 1) == 6 * (1048576 + 213504)
    assert step_flops(cfg("elu"), 63, 1) == 6 * (1048576 + 139264)
    assert step_flops(cfg("prf"), 63, 4) == 4 * 7520256
    assert flop_ratio_bound(cfg("prf"), 63) == pytest.approx(1572864 / 1253376, rel=1e-12)
    assert flop_ratio_bound(cfg("softmax"), 63) == 1.0


def test_the_default_model_is_the_lra_text_trial():
    cfg = TrainBench(lengths=(1024, 8192), device="cpu")
    assert cfg.candidates[0] == "softmax" and set(cfg.candidates) == set(cfg.kernels)
    text = trial_config(cfg, "prf")
    m = text.model
    assert (m.num_layers, m.d_model, m.num_heads, m.d_ff) == (4, 256, 4, 1024)
    assert (text.task.name, text.task.max_len, text.kernel.num_features) == ("text", 8192, 256)
    assert text.train.batch_size == 2
    gmm_rks = trial_config(cfg, "gmm_rks")  # the study's conditional keys for that kernel
    assert (gmm_rks.kernel.covariance, gmm_rks.kernel.smoothing) == ("full", 0.7071)
    assert trial_config(cfg, "rks").kernel.name == "rks"  # not in the study's grid


def test_out_of_memory_and_the_cap_give_nan_rows_not_a_crash(monkeypatch):
    real_step = bench_train._step

    def step(c, batch):
        if c.name == "softmax" and batch["ids"].shape[1] > 16:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to ...")
        real_step(c, batch)

    monkeypatch.setattr(bench_train, "_step", step)
    common = dict(lengths=(16, 24, 32), repeats=1, num_features=8, device="cpu", overrides=TINY)
    rows = bench_train.bench_train(TrainBench(kernels=("prf",), **common), log=None)
    by = {(r["kernel"], r["seq_len"]): r for r in rows}
    assert math.isfinite(by["softmax", 16]["steps_per_s"]) and by["prf", 16]["speedup"] > 0
    for n in (24, 32):
        assert math.isnan(by["softmax", n]["steps_per_s"]) and math.isnan(by["prf", n]["speedup"])
        assert by["softmax", n]["note"] == "out of memory at N=24"
        assert math.isfinite(by["prf", n]["steps_per_s"]) and by["prf", n]["note"] == ""
    capped = bench_train.bench_train(
        TrainBench(kernels=("prf",), step_cap_s=1e-9, **common), log=None
    )
    assert all(math.isnan(r["steps_per_s"]) for r in capped)
    assert all(r["note"].startswith("step ") and r["note"].endswith("at N=16") for r in capped)


def test_a_step_predicted_over_the_cap_is_skipped():
    """The prediction scales the last measured step by the FLOP count (softmax: ~ T²)."""
    cfg = TrainBench(kernels=("prf",), lengths=(16, 32), step_cap_s=1.5, overrides=TINY)
    c = bench_train._candidate(cfg, "softmax", torch.device("cpu"))
    c.last = (16, 1.0)
    ratio = step_flops(c.config, 32, 1) / step_flops(c.config, 16, 1)
    assert 1.5 < ratio < 4
    assert bench_train._over_cap(c, 32, cfg) == (
        f"skipped from N=32: step predicted {ratio:.0f} s > cap 1.5 s"
    )
    assert bench_train._over_cap(c, 64, cfg) == c.stopped  # stays stopped


def test_ratios_are_nan_without_a_softmax_value():
    rows = [
        {"kernel": "softmax", "seq_len": 8, "batch": 2, "steps_per_s": math.nan, "peak_mib": 4.0},
        {"kernel": "prf", "seq_len": 8, "batch": 2, "steps_per_s": 3.0, "peak_mib": 1.0},
    ]
    add_ratios(rows)
    assert math.isnan(rows[1]["speedup"]) and rows[1]["memory_ratio"] == 0.25


def test_config_is_validated():
    with pytest.raises(ValueError, match="valid: softmax"):
        TrainBench(kernels=("nope",), device="cpu")
    with pytest.raises(ValueError, match="repeats"):
        TrainBench(repeats=0, device="cpu")
    assert main(["bench", "train", "--kernels", "prf", "--out", "x.txt"]) == 2


def test_steps_under_other_load_are_retaken_then_kept(monkeypatch):
    """A fake /proc/stat where other processes use the whole machine: each timed step is
    retaken ``repeats`` times at most, then kept, and ``others_cpu`` reports the load."""
    clock = iter(range(10**6))

    def busy_machine():
        t = 2.0 * next(clock)
        return t, t, 0.0  # (all, busy, own): all of it busy, none of it ours

    calls = []
    real_step = bench_train._step
    monkeypatch.setattr(bench_train, "_cpu_seconds", busy_machine)
    monkeypatch.setattr(bench_train, "_step", lambda c, b: calls.append(c.name) or real_step(c, b))
    cfg = TrainBench(
        kernels=("prf",),
        lengths=(16,),
        repeats=2,
        num_features=8,
        device="cpu",
        overrides=TINY,
        max_others_cpu=0.5,
    )
    rows = bench_train.bench_train(cfg, log=None)
    assert calls.count("prf") == calls.count("softmax") == 1 + 2 + 2  # warm-up, retakes, kept
    assert all(r["others_cpu"] == 1.0 and math.isfinite(r["steps_per_s"]) for r in rows)
