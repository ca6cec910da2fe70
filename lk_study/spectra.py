"""Learned spectra from checkpoints: what a checkpoint's attention kernels learned.

``spectrum(checkpoint)`` rebuilds the model from the checkpoint's config
(``lk_study.models.build_model``), loads its weights and, per layer, reads each feature map's
``spectral_params`` and ``spectral_samples`` (every kernel family implements them in its own
file under ``lk_study/kernels/``), and evaluates the kernel along a line. Plotted by
``lk_study.plots.plot_spectrum``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lk_study.checkpoints import checkpoint_state
from lk_study.config import config_from_dict
from lk_study.kernels import FeatureMap, build_kernel, family_params
from lk_study.kernels.base import gaussian_noise
from lk_study.models import build_model
from lk_study.tasks import get_task

SPECTRUM_SAMPLES = 1024  # noise vectors pushed through each layer's learned spectral map
DISTANCES = tuple(i * 0.05 for i in range(61))  # 0 .. 3 in the kernel's scaled space


@dataclass
class Spectrum:
    """What a checkpoint's attention kernels learned (see ``spectrum``).

    kernel: the family (``kernel.name``); step: the checkpoint's training step.
    params: per layer, the family's spectral parameters as numpy arrays, first axis the head:
        gmm_*        mu (H, C, d), cov (H, C, d, d), weights (H, C)
        fastfood_*   S (H, K, n), G (H, K, n), B (H, K, n)   (K blocks of n = 2^⌈log2 d⌉)
        generator_*  eps (H, N, d) the fixed noise sample, omega (H, N, d) = g_θ(eps)
        others       {} (nothing is learned)
    omega, omega_init: per layer (H, N, d), frequencies for the same fixed noise sample
        through the learned and the initial spectral parameters (empty for softmax, elu).
    curve: one row per (layer, head, distance): ``learned`` = exact_kernel(x, y) along a line,
        ``init`` = the same family at its initialisation, ``rbf`` = exp(−r²/2); see ``spectrum``.
    """

    kernel: str
    step: int
    params: list[dict[str, Any]]
    omega: list[Any]
    omega_init: list[Any]
    curve: pd.DataFrame
    config: Any = field(repr=False, default=None)


def _line(head_dim: int, num_heads: int, distances, seed: int):
    """x = 0 and y = r d^(1/4) u for a fixed unit vector u (B=1, H, T=1 / S=len(r), d), so the
    kernels' scaled inputs x' = x / d^(1/4) are 0 and r u: ‖x' − y'‖ = r."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(head_dim, generator=g, dtype=torch.float64)
    u = u / u.norm()
    r = torch.as_tensor(list(distances), dtype=torch.float64)
    y = (r[:, None] * head_dim**0.25 * u).expand(1, num_heads, -1, -1)
    x = torch.zeros(1, num_heads, 1, head_dim)
    return x, y.contiguous().float(), r


def _numpy(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v.double().numpy() for k, v in params.items()}


def spectrum(
    checkpoint: str | Path,
    distances=DISTANCES,
    samples: int = SPECTRUM_SAMPLES,
    seed: int = 0,
) -> Spectrum:
    """The learned spectral distributions of a checkpoint's attention kernels, per layer/head.

    Builds the model from the checkpoint's config (``lk_study.models.build_model``), loads its
    weights, and for every layer reports the family's parameters, frequencies for a fixed
    noise sample (``samples`` vectors from ``seed``) through the learned and the initial
    parameters, and the kernel along a line: x = 0, y = r·d^(1/4)·u for a fixed unit u, so
    that in the kernels' scaled space ‖x' − y'‖ = r; ``learned`` is the loaded kernel's
    ``exact_kernel(x, y)``, ``init`` the same family freshly built (the kernel training
    started from: RBF exp(−r²/2) for the RKS and GMM/generator PRF families, exp(x'·y') = 1
    on this line for prf/fastfood_prf/softmax), ``rbf`` = exp(−r²/2).
    """
    file, state = checkpoint_state(checkpoint)
    cfg = config_from_dict(state["config"], str(file))
    model = build_model(cfg, get_task(cfg.task.name))
    model.load_state_dict(state["model"])
    k, m = cfg.kernel, cfg.model
    d, h = m.d_model // m.num_heads, m.num_heads
    family = {p: getattr(k, p) for p in family_params(k.name) if hasattr(k, p)}
    init = build_kernel(k.name, d, h, k.num_features, **family)
    x, y, r = _line(d, h, distances, seed)
    eps = gaussian_noise(torch.Generator().manual_seed(seed), h, samples, d).double()
    layers = [mod for mod in model.modules() if isinstance(mod, FeatureMap)]
    with torch.no_grad():
        k_init = init.exact_kernel(x, y)[0, :, 0].numpy()  # (H, R)
        omega_init = init.spectral_samples(eps, torch.Generator().manual_seed(seed + 1))
    params, omegas, rows = [], [], []
    for i, kern in enumerate(layers):
        with torch.no_grad():
            learned = kern.exact_kernel(x, y)[0, :, 0].numpy()  # (H, R)
            params.append(_numpy(kern.spectral_params(eps)))
            omega = kern.spectral_samples(eps, torch.Generator().manual_seed(seed + 1))
        omegas.append(None if omega is None else omega.numpy())
        for head in range(h):
            rows.append(
                pd.DataFrame(
                    {
                        "layer": i,
                        "head": head,
                        "distance": r.numpy(),
                        "learned": learned[head],
                        "init": k_init[head],
                        "rbf": torch.exp(-0.5 * r**2).numpy(),
                    }
                )
            )
    init_np = None if omega_init is None else omega_init.numpy()
    return Spectrum(
        kernel=k.name,
        step=int(state.get("step", 0)),
        params=params,
        omega=omegas,
        omega_init=[init_np] * len(layers),
        curve=pd.concat(rows, ignore_index=True),
        config=cfg,
    )
