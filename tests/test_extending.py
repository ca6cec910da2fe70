"""Adding a kernel family or a task touches its own file and one registry line.

A toy learned kernel family and a toy task are defined here, in the test file, and added to
the registries (``monkeypatch.setitem``: the one dict line a contributor would write, undone
after the test). Nothing else in lk_study is told about them; they must still go through the
registry-wide tests, the study compiler, training and (the kernel) the learned spectra.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import test_attention
import test_kernels
import torch
from torch import Tensor, nn

from lk_study.config import Config, with_overrides
from lk_study.kernels import KERNELS
from lk_study.kernels.base import Positive, RandomFeatureMap, gaussian_noise
from lk_study.study import study_from_dict
from lk_study.tasks import TASKS
from lk_study.tasks.base import AccuracyTask, TaskConfig, check, ids_array, prepare_cached

# ------------------------------------------------------------------ a toy learned kernel family


class ScaledPRF(RandomFeatureMap):
    """Toy family: positive features with ω = e^s ε, ε ~ N(0, I), a learned log-scale s per
    head. E[exp(ω·z)] = exp(e^{2s}‖z‖²/2), so k(x, y) = exp(e^{2s}‖x'+y'‖²/2 − ‖x'‖²/2 − ‖y'‖²/2)
    (= exp(x'·y') at s = 0)."""

    learned = True
    math = "toy: φ = PRF features with ω = e^s ε"

    def __init__(
        self, head_dim: int, num_heads: int, num_features: int = 256, orthogonal: bool = True
    ) -> None:
        super().__init__(head_dim, num_heads, num_features, Positive(0.5, antithetic=True))
        self.orthogonal = orthogonal
        self.log_scale = nn.Parameter(torch.zeros(num_heads))
        self.register_buffer("eps", torch.zeros(num_heads, self.num_frequencies, head_dim))
        self.resample(torch.Generator().manual_seed(0))

    def resample(self, generator: torch.Generator) -> None:
        h, m, d = self.eps.shape
        self.eps.copy_(gaussian_noise(generator, h, m, d, self.orthogonal))

    def frequencies(self) -> tuple[Tensor, Tensor]:
        m = self.num_frequencies
        omega = self.log_scale.exp()[:, None, None] * self.eps
        return omega, torch.full((self.num_heads, m), -math.log(m), device=omega.device)

    def exact_kernel(self, x: Tensor, y: Tensor) -> Tensor:
        xs, ys = self.scale(x), self.scale(y)
        z2 = (xs.unsqueeze(-2) + ys.unsqueeze(-3)).pow(2).sum(-1)  # (B, H, T, S)
        s2 = self.log_scale.exp().pow(2).to(xs.dtype)[None, :, None, None]
        norms = xs.pow(2).sum(-1).unsqueeze(-1) + ys.pow(2).sum(-1).unsqueeze(-2)
        return torch.exp(0.5 * s2 * z2 - 0.5 * norms)

    def spectral_params(self, noise: Tensor | None = None) -> dict[str, Tensor]:
        return {"log_scale": self.log_scale.detach().double()}

    def spectral_samples(self, noise: Tensor, generator: torch.Generator) -> Tensor:
        return self.log_scale.detach().exp().double()[:, None, None] * noise


@pytest.fixture
def toy_kernel(monkeypatch):
    monkeypatch.setitem(KERNELS, "scaled_prf", ScaledPRF)
    return "scaled_prf"


REGISTRY_WIDE = [
    test_kernels.test_estimate_converges_like_one_over_sqrt_m,
    test_kernels.test_same_generator_same_draw,
    test_kernels.test_forward_is_deterministic,
    test_kernels.test_gradients_reach_learned_parameters,
    test_kernels.test_exact_kernel_in_float64,
    test_attention.test_linear_equals_materialised,
    test_attention.test_padding_keys_do_not_change_real_outputs,
]


@pytest.mark.parametrize("check_kernel", REGISTRY_WIDE, ids=lambda f: f.__name__)
def test_a_toy_kernel_passes_the_registry_wide_tests(toy_kernel, check_kernel):
    check_kernel(toy_kernel)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_a_toy_kernel_gives_a_weighted_average_at_every_norm(toy_kernel, autocast):
    test_attention.test_output_is_a_weighted_average_at_every_norm(toy_kernel, autocast)


def test_a_toy_kernel_is_searched_trained_and_read_back(toy_kernel, tmp_path):
    from lk_study.spectra import spectrum
    from lk_study.train import fit

    study = study_from_dict(
        {
            "name": "toy",
            "config": {"task": {"name": "sparsity"}},
            "searcher": "grid",
            "search": {"kernel.name": {"grid": ["prf", toy_kernel]}},
        }
    )
    assert [p["kernel.name"] for p in study.points()] == ["prf", toy_kernel]
    with pytest.raises(Exception, match="num_features"):  # the compiler builds its kernels
        study_from_dict(
            {
                "name": "toy",
                "config": {"kernel": {"name": toy_kernel, "num_features": 7}},
            }
        )

    cfg = with_overrides(
        Config(), {**TINY, "kernel.name": toy_kernel, "task.cache_dir": str(tmp_path)}
    )
    states = []
    fit(cfg, lambda metrics, state: states.append(state))
    torch.save(states[-1], tmp_path / "state.pt")
    spec = spectrum(tmp_path / "state.pt")
    assert spec.kernel == toy_kernel and len(spec.params) == cfg.model.num_layers
    trained = spec.params[0]["log_scale"]
    assert trained.shape == (cfg.model.num_heads,) and np.abs(trained).max() > 0  # it learned
    # the spectra's frequencies are the family's own: e^s ε for the spectra's noise sample
    scale = np.exp(trained)[:, None, None]
    eps = spec.omega_init[0]  # at init s = 0: ω = ε
    np.testing.assert_allclose(spec.omega[0], scale * eps, rtol=1e-6)


TINY = {
    "task.size": 64,
    "task.seq_len": 12,
    "task.num_signal": 3,
    "task.num_types": 3,
    "model.d_model": 16,
    "model.num_layers": 1,
    "model.num_heads": 2,
    "model.d_ff": 32,
    "kernel.num_features": 8,
    "train.batch_size": 16,
    "train.max_steps": 3,
    "train.eval_every": 3,
    "train.lr": 1e-2,
}


# --------------------------------------------------------------------------- a toy task


@dataclass(frozen=True)
class ParityConfig(TaskConfig):
    name: str = "toy_parity"
    size: int = 96
    seq_len: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.size >= 8, "size", "must be >= 8")


class Parity(AccuracyTask):
    """Toy task: bits as tokens 1/2, label = the first bit."""

    Config = ParityConfig

    def vocab_size(self, cfg: ParityConfig) -> int:
        return 3

    def max_len(self, cfg: ParityConfig) -> int:
        return cfg.seq_len

    def num_outputs(self, cfg: ParityConfig) -> int:
        return 2

    def prepare(self, cfg: ParityConfig) -> dict[str, Path]:
        def build() -> dict[str, pa.Table]:
            rng = np.random.default_rng(cfg.seed)
            bits = rng.integers(0, 2, (cfg.size, cfg.seq_len))
            ids, labels = bits + 1, bits[:, 0].astype(np.int64)
            half = cfg.size * 3 // 4
            return {
                "train": pa.table({"ids": ids_array(ids[:half]), "label": labels[:half]}),
                "validation": pa.table({"ids": ids_array(ids[half:]), "label": labels[half:]}),
            }

        return prepare_cached(cfg, self.splits, build)


@pytest.fixture
def toy_task(monkeypatch):
    monkeypatch.setitem(TASKS, "toy_parity", Parity())
    return "toy_parity"


def test_a_toy_task_passes_the_registry_wide_tests(toy_task):
    import test_tasks

    test_tasks.test_every_task_has_the_interface(toy_task)


def test_a_toy_task_is_configured_searched_and_trained(toy_task, tmp_path):
    from lk_study.train import fit

    study = study_from_dict(
        {
            "name": "toy",
            "config": {"task": {"name": toy_task, "size": 64, "cache_dir": str(tmp_path)}},
            "searcher": "grid",
            "search": {"task.seq_len": {"grid": [6, 8]}},
        }
    )
    assert study.num_trials() == 2 and study.config.task.size == 64
    with pytest.raises(Exception, match=r"task\.sizee"):  # its keys are checked like any task's
        study_from_dict({"name": "toy", "config": {"task": {"name": toy_task, "sizee": 3}}})
    cfg = with_overrides(
        study.config,
        {k: v for k, v in TINY.items() if not k.startswith("task.")} | {"train.max_steps": 4},
    )
    reports = []
    fit(cfg, lambda metrics, state: reports.append(metrics))
    assert reports[-1]["step"] == 4 and 0.0 <= reports[-1]["val_accuracy"] <= 1.0
    assert reports[-1]["num_params"] > 0
