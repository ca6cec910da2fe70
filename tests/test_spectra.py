"""The learned spectra (lk_study.spectra, through ``lk_study.analysis.spectrum``) of real
checkpoints: a short ``fit`` per learned family, and models as built."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from lk_study import analysis, plots
from lk_study.config import Config, to_dict, with_overrides
from lk_study.train import build_model, fit

TINY = {
    "task.size": 200,
    "task.seq_len": 16,
    "task.num_signal": 3,
    "task.num_types": 3,
    "model.d_model": 16,
    "model.num_heads": 2,
    "model.num_layers": 2,
    "model.d_ff": 32,
    "model.dropout": 0.0,
    "kernel.num_features": 8,
    "train.max_steps": 4,
    "train.eval_every": 4,
    "train.batch_size": 16,
    "train.lr": 3e-2,
    "train.warmup": 1,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Checkpoints of a real short ``fit`` per learned family: kernel -> state.pt path."""
    root = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for kernel in ("gmm_prf", "generator_rks", "fastfood_rks"):
        cfg = with_overrides(Config(), {**TINY, "kernel.name": kernel})
        snaps: list[dict] = []
        fit(cfg, lambda metrics, snapshot, snaps=snaps: snaps.append(snapshot))
        assert snaps[-1]["step"] == 4
        out[kernel] = root / f"{kernel}.pt"
        torch.save(snaps[-1], out[kernel])
    return out


def init_checkpoint(tmp_path: Path, kernel: str) -> Path:
    """A checkpoint of the model as built, before any step."""
    cfg = with_overrides(Config(), {**TINY, "kernel.name": kernel})
    torch.manual_seed(0)
    path = tmp_path / f"{kernel}-init.pt"
    torch.save({"model": build_model(cfg).state_dict(), "config": to_dict(cfg), "step": 0}, path)
    return path


SHAPES = {  # H = 2 heads, d = 8, C = 1 component, N = 64 samples, K = 1 block of n = 8
    "gmm_prf": {"mu": (2, 1, 8), "cov": (2, 1, 8, 8), "weights": (2, 1)},
    "generator_rks": {"eps": (2, 64, 8), "omega": (2, 64, 8)},
    "fastfood_rks": {"S": (2, 1, 8), "G": (2, 1, 8), "B": (2, 1, 8)},
}
STATE_NAMES = {"mu": "mu", "S": "row_scale", "G": "gauss", "B": "signs"}


@pytest.mark.parametrize("kernel", list(SHAPES))
def test_spectrum_of_a_trained_checkpoint(trained, kernel):
    spec = analysis.spectrum(trained[kernel], samples=64)
    assert spec.kernel == kernel and spec.step == 4 and len(spec.params) == 2
    state = torch.load(trained[kernel], weights_only=True)["model"]
    for layer, params in enumerate(spec.params):
        assert {k: v.shape for k, v in params.items()} == SHAPES[kernel]
        for name, key in STATE_NAMES.items():
            if name in params:  # the loaded, trained values
                stored = state[f"encoder.layers.{layer}.attn.kernel.{key}"].double().numpy()
                np.testing.assert_allclose(params[name], stored, rtol=1e-6)
        assert spec.omega[layer].shape == (2, 64, 8)
    if kernel == "gmm_prf":
        w = spec.params[0]["weights"]
        np.testing.assert_allclose(w.sum(-1), 1.0)
        sigma = np.exp(state["encoder.layers.0.attn.kernel.log_scale"].double().numpy())
        np.testing.assert_allclose(np.diagonal(spec.params[0]["cov"], axis1=-2, axis2=-1), sigma**2)
    curve = spec.curve
    assert list(curve.columns) == ["layer", "head", "distance", "learned", "init", "rbf"]
    assert len(curve) == 2 * 2 * len(analysis.DISTANCES)
    np.testing.assert_allclose(curve["rbf"], np.exp(-0.5 * curve["distance"] ** 2))
    assert np.allclose(curve["learned"].iloc[0], 1.0, atol=0.02)  # k(x, x) at r = 0
    # training moved the kernel away from where it started
    assert (curve["learned"] - curve["init"]).abs().max() > 1e-4
    fig = plots.plot_spectrum(spec)
    assert isinstance(fig, Figure) and len(fig.axes) == 4  # 2 layers x (kernel, ‖ω‖)


@pytest.mark.parametrize("kernel,tol", [("gmm_prf", 1e-5), ("generator_rks", 0.02)])
def test_spectrum_at_init_is_the_rbf(tmp_path, kernel, tol):
    spec = analysis.spectrum(init_checkpoint(tmp_path, kernel))
    curve = spec.curve
    np.testing.assert_allclose(curve["learned"], curve["rbf"], atol=tol)
    np.testing.assert_allclose(curve["init"], curve["rbf"], atol=tol)
    np.testing.assert_allclose(curve["learned"], curve["init"], atol=1e-6)


def test_spectrum_reads_a_train_run_folder_and_rejects_other_files(tmp_path, trained):
    run = tmp_path / "train_runs" / "train-abc"
    (run / "checkpoint_000001").mkdir(parents=True)
    shutil.copy(trained["gmm_prf"], run / "checkpoint_000001" / "state.pt")
    assert analysis.spectrum(run).kernel == "gmm_prf"
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an lk_study training checkpoint"):
        analysis.spectrum(tmp_path / "other.pt")
