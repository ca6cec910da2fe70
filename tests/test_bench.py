"""Smoke tier: the attention benchmark runs end to end (tiny sizes; speed is never asserted)."""

import csv

import pytest
import torch

from lk_study.bench import (
    COLUMNS,
    PASSES,
    AttentionBench,
    FloorAttention,
    bench_attention,
    format_ratios,
)
from lk_study.cli import main

TINY = dict(batch=1, heads=2, head_dim=8, num_features=16, repeats=2, warmup=1, device="cpu")


def test_bench_function_rows_and_ratio_table():
    cfg = AttentionBench(kernels=("prf", "gmm_rks"), lengths=(16, 24), **TINY)
    lines = []
    rows = bench_attention(cfg, log=lines.append)
    kernels = ["sdpa", "floor", "performer", "prf", "gmm_rks"]
    assert [tuple(r) for r in rows] == [COLUMNS] * len(rows)
    keys = [(r["kernel"], r["seq_len"], r["pass"]) for r in rows]
    assert sorted(keys) == sorted((k, n, p) for k in kernels for n in (16, 24) for p in PASSES)
    for r in rows:
        assert r["ms_min"] <= r["ms_median"] and r["peak_mib"] >= 0
        assert r["num_features"] == (0 if r["kernel"] == "sdpa" else 16)
    assert all(r["peak_mib"] > 0 for r in rows if r["pass"] == "fwdbwd")  # gradients allocate
    assert any("repeat 2/2" in line for line in lines)
    table = format_ratios(rows)
    for n, p in [(16, "fwd"), (16, "fwdbwd"), (24, "fwd"), (24, "fwdbwd")]:
        assert f"N={n} {p}" in table
    assert "x sdpa" in table and "x floor" in table and "gmm_rks" in table


def test_cli_writes_csv_with_exact_columns(tmp_path, capsys):
    out = tmp_path / "bench.csv"
    argv = ["bench", "attention", "--kernels", "prf", "elu", "--lengths", "16", "32"]
    argv += ["--batch", "1", "--heads", "2", "--head-dim", "8", "--num-features", "16"]
    argv += ["--repeats", "1", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    keys = [(r["kernel"], int(r["seq_len"]), r["pass"]) for r in rows]
    kernels = ["sdpa", "floor", "performer", "prf", "elu"]
    assert len(keys) == len(set(keys)) == len(kernels) * 2 * 2
    assert set(keys) == {(k, n, p) for k in kernels for n in (16, 32) for p in PASSES}
    assert {r["num_features"] for r in rows if r["kernel"] == "elu"} == {"8"}  # width d
    printed = capsys.readouterr()
    assert "N=32 fwdbwd" in printed.out and "x floor" in printed.out
    assert "repeat 1/1" in printed.err


def test_cli_rejects_unknown_kernel_and_bad_out(tmp_path, capsys):
    assert main(["bench", "attention", "--kernels", "gmm", "--lengths", "8"]) == 2
    assert "valid: sdpa, floor, performer" in capsys.readouterr().err
    assert main(["bench", "attention", "--lengths", "8", "--out", str(tmp_path / "x.txt")]) == 2


def test_floor_is_normalised_positive_feature_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8) for _ in range(3))
    floor = FloorAttention(head_dim=8, num_heads=3, num_features=32)
    phi_q, phi_k = floor.features(q), floor.features(k)
    a = phi_q @ phi_k.transpose(-2, -1)  # (B, H, T, S)
    assert torch.allclose(floor(q, k, v), a @ v / a.sum(-1, keepdim=True), atol=1e-5)


def test_bench_config_is_validated():
    with pytest.raises(ValueError, match="valid: sdpa"):
        AttentionBench(kernels=("nope",), device="cpu")
    with pytest.raises(ValueError, match="repeats"):
        AttentionBench(repeats=0, device="cpu")
