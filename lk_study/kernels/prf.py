"""Fixed Gaussian frequencies, nothing learned: the Performer and RKS baselines.

prf — Performer / FAVOR+ positive random features (Choromanski et al. 2021):

    φ(x) = √(1/M) [exp(Wx' − ‖x'‖²/2), exp(−Wx' − ‖x'‖²/2)],  W (M/2, d) orthogonal Gaussian rows
    E[φ(x)·φ(y)] = exp(x'·y') = exp(x·y/√d)   (the softmax kernel)

The estimator is unbiased and its features are positive, so the attention normaliser stays
positive. Orthogonal rows (blocks of d exactly orthogonal, χ_d row norms) reduce variance.

rks — random kitchen sinks (Rahimi & Recht 2007):

    φ(x) = √(2/M) [cos(Wx'), sin(Wx') (, s)],  W (M/2, d) orthogonal Gaussian rows
    E[φ(x)·φ(y)] = exp(−‖x' − y'‖²/2) + s²   (the RBF kernel; features are signed)

with the authors' optional constant smoothing feature s (``smoothing``; their RKS baseline
uses s = 1 and i.i.d. rows, ``orthogonal=False``), and the normaliser floor ``den_floor``
(lk_study.attention).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lk_study.kernels.base import DEN_FLOOR, Positive, RandomFeatureMap, Trig, gaussian_noise


class GaussianFeatures(RandomFeatureMap):
    """Frequencies W ~ N(0, I) (orthogonal blocks), uniform weights, through ``component``."""

    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        num_features: int,
        component: Positive | Trig,
        orthogonal: bool = True,
    ) -> None:
        super().__init__(head_dim, num_heads, num_features, component)
        self.orthogonal = orthogonal
        self.register_buffer("omega", torch.zeros(num_heads, self.num_frequencies, head_dim))
        self.resample(torch.Generator().manual_seed(0))

    def resample(self, generator: torch.Generator) -> None:
        noise = gaussian_noise(
            generator, self.num_heads, self.num_frequencies, self.head_dim, self.orthogonal
        )
        self.omega.copy_(noise)

    def frequencies(self) -> tuple[Tensor, Tensor]:
        m = self.num_frequencies
        log_w = torch.full((self.num_heads, m), -math.log(m), device=self.omega.device)
        return self.omega, log_w

    def spectral_samples(self, noise: Tensor, generator: torch.Generator) -> Tensor:
        return noise  # ω ~ N(0, I): the noise itself


class PRF(GaussianFeatures):
    math = "φ = √(1/M)[exp(Wx'−‖x'‖²/2), exp(−Wx'−‖x'‖²/2)], W orthogonal -> exp(x'·y')"

    def __init__(
        self, head_dim: int, num_heads: int, num_features: int = 256, orthogonal: bool = True
    ) -> None:
        super().__init__(
            head_dim, num_heads, num_features, Positive(0.5, antithetic=True), orthogonal
        )

    def exact_kernel(self, x: Tensor, y: Tensor) -> Tensor:
        """exp(x'·y'): (B, H, T, d), (B, H, S, d) -> (B, H, T, S)."""
        return (self.scale(x) @ self.scale(y).transpose(-2, -1)).exp()


class RKS(GaussianFeatures):
    math = "φ = √(2/M)[cos(Wx'), sin(Wx') (, s)], W orthogonal -> exp(−‖x'−y'‖²/2) + s²"

    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        num_features: int = 256,
        orthogonal: bool = True,
        smoothing: float = 0.0,
        den_floor: float = DEN_FLOOR,
    ) -> None:
        component = Trig(smoothing, den_floor)
        super().__init__(head_dim, num_heads, num_features, component, orthogonal)

    def exact_kernel(self, x: Tensor, y: Tensor) -> Tensor:
        """exp(−‖x' − y'‖²/2) + s²: (B, H, T, d), (B, H, S, d) -> (B, H, T, S)."""
        rbf = torch.exp(-0.5 * torch.cdist(self.scale(x), self.scale(y)) ** 2)
        return rbf + self.component.smoothing**2
