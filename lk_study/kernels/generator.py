"""Generator-network frequencies: Generator-RKS and Generator-PRF (Chowdhury et al. 2022).

Per head, a small MLP g_θ pushes Gaussian noise forward into frequencies, which makes the
spectral density implicit and learnable:

    ω_j = g_θ(ε_j) = ε_j + W₂ gelu(W₁ ε_j + b₁) + b₂,   ε (H, m, d) fixed noise (orthogonal
    Gaussian rows, redrawn only by ``resample``), W₁ (H, k, d), W₂ (H, d, k), k = hidden_dim

The residual form with a small W₂ at initialisation makes g_θ ≈ identity, so both kernels
start at ≈ the Gaussian (RBF) kernel exp(−‖δ‖²/2); W₂ is not exactly zero so that gradients
reach W₁ and b₁ from the first step.

    generator_rks: φ(x) = √(2/M) [cos(ωx'), sin(ωx')],  m = M/2           (B, H, T, M)
                   k(x, y) = E_ε[cos(g_θ(ε)·δ)]
    generator_prf: φ(x) = √(1/M) exp(ωx' − ‖x'‖²),      m = M             (B, H, T, M)
                   k(x, y) = E_ε[exp(g_θ(ε)·z)] e^(−‖x'‖² − ‖y'‖²)

``init="authors"`` and ``bound="tanh"`` give the authors' generator instead: a plain MLP
ω = tanh(W₂ σ(W₁ε + b₁) + b₂) with xavier-uniform W₁, W₂ and zero biases, so ω ∈ (−1, 1)^d
(a bounded spectral support) and E‖ω‖²/d ≈ 0.35 at init (their code measures 0.352). Their
batch normalisation is left out on purpose: it couples the noise samples and differs between
training and evaluation. Either switch can be used alone (``bound="tanh"`` on the residual
form bounds our generator). Their noise is i.i.d. (``orthogonal=False``). generator_rks also
takes the smoothing feature and the normaliser floor (lk_study.kernels.base.Trig).

Both get exactly the ``num_features`` they are asked for (the reference code gives
Generator-PRF half of them). The expectation over ε has no closed form: ``exact_kernel``
averages the finite-sample kernel over ``EXACT_SAMPLES`` = 2^16 orthogonal Gaussian noise
vectors per head from a fixed seed, exact up to the Monte-Carlo error of that sample size. It
costs O(EXACT_SAMPLES (d k + (T + S) d + T S)) per head: for tests and analysis, not
training. The initial θ comes from a fixed-seed generator (no global RNG), so every layer
starts from the same g_θ; their noise draws differ (``resample``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lk_study.kernels.base import (
    DEN_FLOOR,
    INITS,
    Positive,
    RandomFeatureMap,
    Trig,
    check_choice,
    gaussian_noise,
    sampled_kernel,
)

EXACT_SAMPLES = 1 << 16  # noise vectors per head averaged by exact_kernel
EXACT_SEED = 0
EXACT_CHUNK = 1 << 14  # noise vectors per exact_kernel step (bounds its memory)
INIT_GAIN = 0.01  # std of the residual branch's output layer at initialisation, times √k
BOUNDS = ("none", "tanh")


class GeneratorFeatures(RandomFeatureMap):
    learned = True
    """Frequencies ω = g_θ(ε) from a per-head residual MLP, through ``component``."""

    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        num_features: int,
        component: Positive | Trig,
        hidden_dim: int = 64,
        orthogonal: bool = True,
        init: str = "rbf",
        bound: str = "none",
    ) -> None:
        super().__init__(head_dim, num_heads, num_features, component)
        if hidden_dim < 1:
            raise ValueError(f"hidden_dim must be >= 1, got {hidden_dim}")
        check_choice("init", init, INITS)
        check_choice("bound", bound, BOUNDS)
        self.orthogonal, self.init, self.bound = orthogonal, init, bound
        self.residual = init == "rbf"
        h, d, k = num_heads, head_dim, hidden_dim
        g = torch.Generator().manual_seed(0)
        if init == "authors":  # xavier-uniform weights, zero biases
            xavier = math.sqrt(6.0 / (d + k))
            w1 = (torch.rand(h, k, d, generator=g) * 2 - 1) * xavier
            b1 = torch.zeros(h, k)
            w2 = (torch.rand(h, d, k, generator=g) * 2 - 1) * xavier
        else:
            first = d**-0.5  # nn.Linear's default init for the first layer
            w1 = (torch.rand(h, k, d, generator=g) * 2 - 1) * first
            b1 = (torch.rand(h, k, generator=g) * 2 - 1) * first
            w2 = torch.randn(h, d, k, generator=g) * (INIT_GAIN * k**-0.5)
        self.w1, self.b1, self.w2 = nn.Parameter(w1), nn.Parameter(b1), nn.Parameter(w2)
        self.b2 = nn.Parameter(torch.zeros(h, d))
        self.register_buffer("eps", torch.zeros(h, self.num_frequencies, d))
        self.resample(g)

    def resample(self, generator: torch.Generator) -> None:
        self.eps.copy_(
            gaussian_noise(
                generator, self.num_heads, self.num_frequencies, self.head_dim, self.orthogonal
            )
        )

    def generate(self, eps: Tensor) -> Tensor:
        """g_θ: noise (H, n, d) -> frequencies (H, n, d)."""
        hidden = F.gelu(torch.einsum("hnd,hkd->hnk", eps, self.w1) + self.b1[:, None])
        omega = torch.einsum("hnk,hdk->hnd", hidden, self.w2) + self.b2[:, None]
        if self.residual:
            omega = omega + eps
        return torch.tanh(omega) if self.bound == "tanh" else omega

    def frequencies(self) -> tuple[Tensor, Tensor]:
        m = self.num_frequencies
        log_w = torch.full((self.num_heads, m), -math.log(m), device=self.eps.device)
        return self.generate(self.eps), log_w

    def spectral_params(self, noise: Tensor | None = None) -> dict[str, Tensor]:
        """eps (H, N, d) the noise sample (default: the current draw), omega = g_θ(eps)."""
        eps = self.eps if noise is None else noise
        return {"eps": eps.double(), "omega": self.generate(eps.to(self.w1.dtype)).double()}

    def spectral_samples(self, noise: Tensor, generator: torch.Generator) -> Tensor:
        return self.generate(noise.to(self.w1.dtype)).double()

    def exact_kernel(self, x: Tensor, y: Tensor) -> Tensor:
        """(B, H, T, d), (B, H, S, d) -> (B, H, T, S) for the current θ.

        E_ε of the finite-sample kernel, estimated by the mean over EXACT_SAMPLES orthogonal
        Gaussian noise vectors per head from a fixed seed (no closed form): deterministic,
        Monte-Carlo error that of EXACT_SAMPLES frequencies. Materialises (B, H, T,
        2·EXACT_CHUNK) at most.
        """
        xs, ys = self.scale(x), self.scale(y)
        gen = torch.Generator().manual_seed(EXACT_SEED)
        shape = (self.num_heads, EXACT_CHUNK)
        log_w = torch.full(shape, -math.log(EXACT_SAMPLES), dtype=xs.dtype, device=xs.device)
        k = torch.zeros((), dtype=xs.dtype, device=xs.device)
        for _ in range(EXACT_SAMPLES // EXACT_CHUNK):
            eps = gaussian_noise(gen, self.num_heads, EXACT_CHUNK, self.head_dim)
            omega = self.generate(eps.to(self.eps)).to(xs.dtype)  # the module's device, dtype
            k = k + sampled_kernel(self.component, xs, ys, omega, log_w)
        return k + (0.0 if self.positive else self.component.smoothing**2)


class GeneratorRKS(GeneratorFeatures):
    math = (
        "φ = √(2/M)[cos(ωx'), sin(ωx') (, s)], ω = g_θ(ε) (MLP, learned) -> E_ε[cos(g_θ(ε)·δ)] + s²"
    )

    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        num_features: int = 256,
        hidden_dim: int = 64,
        orthogonal: bool = True,
        init: str = "rbf",
        bound: str = "none",
        smoothing: float = 0.0,
        den_floor: float = DEN_FLOOR,
    ) -> None:
        component = Trig(smoothing, den_floor)
        super().__init__(
            head_dim, num_heads, num_features, component, hidden_dim, orthogonal, init, bound
        )


class GeneratorPRF(GeneratorFeatures):
    math = "φ = √(1/M) exp(ωx'−‖x'‖²), ω = g_θ(ε) (MLP) -> E_ε[exp(g_θ(ε)·z)] e^(−‖x'‖²−‖y'‖²)"

    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        num_features: int = 256,
        hidden_dim: int = 64,
        orthogonal: bool = True,
        init: str = "rbf",
        bound: str = "none",
    ) -> None:
        component = Positive(1.0, antithetic=False)
        super().__init__(
            head_dim, num_heads, num_features, component, hidden_dim, orthogonal, init, bound
        )
