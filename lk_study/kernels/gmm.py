"""Learned Gaussian-mixture spectral distributions: GMM-RKS and GMM-PRF (Chowdhury et al. 2022).

Per head, the frequencies follow a learned mixture ω ~ Σ_c π_c N(μ_c, Σ_c) (C components,
Σ_c diagonal or full). They are reparameterised, ω_j = μ_c(j) + L_c(j) ε_j with Σ_c = L_c L_cᵀ
and fixed noise ε_j (orthogonal Gaussian, redrawn only by ``resample``), so gradients reach
μ, L and the mixture logits. The M/C features are split evenly over the components and
weighted by √(π_c/m_c) (m_c features in component c).

    gmm_rks: φ(x) = [√w cos(ωx'), √w sin(ωx')]
             k(x, y) = Σ_c π_c cos(μ_c·δ) exp(−½ δᵀΣ_c δ),                  δ = x' − y'
    gmm_prf: φ(x) = √w exp(ωx' − ‖x'‖²)
             k(x, y) = Σ_c π_c exp(μ_c·z + ½ zᵀΣ_c z − ‖x'‖² − ‖y'‖²),        z = x' + y'

Initialised at C equal components with μ = 0, Σ = I, where both are the RBF kernel
exp(−‖δ‖²/2).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lk_study.kernels.base import Positive, RandomFeatureMap, Trig, gaussian_noise

COVARIANCES = ("diag", "full")


class GaussianMixtureFeatures(RandomFeatureMap):
    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        num_features: int,
        component: Positive | Trig,
        num_components: int = 1,
        covariance: str = "diag",
    ) -> None:
        super().__init__(head_dim, num_heads, num_features, component)
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
        if not 1 <= num_components <= self.num_frequencies:
            raise ValueError(
                f"num_components must be in [1, {self.num_frequencies}] for "
                f"num_features={num_features}, got {num_components}"
            )
        h, c, d, m = num_heads, num_components, head_dim, self.num_frequencies
        self.covariance = covariance
        self.mu = nn.Parameter(torch.zeros(h, c, d))
        self.logits = nn.Parameter(torch.zeros(h, c))
        self.log_scale = nn.Parameter(torch.zeros(h, c, d))  # log of diag(L)
        self.lower = nn.Parameter(torch.zeros(h, c, d, d)) if covariance == "full" else None
        self.register_buffer("component_of", torch.arange(m) * c // m, persistent=False)
        self.register_buffer("eps", torch.zeros(h, m, d))
        self.resample(torch.Generator().manual_seed(0))

    def resample(self, generator: torch.Generator) -> None:
        self.eps.copy_(
            gaussian_noise(generator, self.num_heads, self.num_frequencies, self.head_dim)
        )

    def cholesky(self) -> Tensor:
        """L (H, C, d, d), lower triangular with positive diagonal; Σ = L Lᵀ."""
        L = torch.diag_embed(self.log_scale.exp())
        if self.lower is not None:
            L = L + torch.tril(self.lower, diagonal=-1)
        return L

    def frequencies(self) -> tuple[Tensor, Tensor]:
        comp = self.component_of  # (m,) component of each frequency
        if self.lower is None:
            omega = self.mu[:, comp] + self.log_scale.exp()[:, comp] * self.eps
        else:
            omega = self.mu[:, comp] + torch.einsum(
                "hmde,hme->hmd", self.cholesky()[:, comp], self.eps
            )
        counts = torch.bincount(comp, minlength=self.mu.shape[1]).to(self.mu.dtype)
        log_w = (torch.log_softmax(self.logits, -1) - counts.log())[:, comp]  # (H, m)
        return omega, log_w

    def exact_kernel(self, x: Tensor, y: Tensor) -> Tensor:
        """(B, H, T, d), (B, H, S, d) -> (B, H, T, S) for the current μ, Σ, π."""
        L = self.cholesky()
        cov = L @ L.transpose(-2, -1)
        return self.component.exact(
            torch.log_softmax(self.logits, -1), self.mu, cov, self.scale(x), self.scale(y)
        )


class GMMRKS(GaussianMixtureFeatures):
    math = "φ = √w[cos(ωx'), sin(ωx')], ω ~ Σπ_c N(μ_c, Σ_c) -> Σ π_c cos(μ_c·δ) e^(−½δᵀΣ_cδ)"

    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        num_features: int = 256,
        num_components: int = 1,
        covariance: str = "diag",
    ) -> None:
        super().__init__(head_dim, num_heads, num_features, Trig(), num_components, covariance)


class GMMPRF(GaussianMixtureFeatures):
    math = "φ = √w exp(ωx'−‖x'‖²), ω ~ Σπ_c N(μ_c, Σ_c) -> Σ π_c e^(μ_c·z+½zᵀΣ_cz−‖x'‖²−‖y'‖²)"

    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        num_features: int = 256,
        num_components: int = 1,
        covariance: str = "diag",
    ) -> None:
        super().__init__(
            head_dim,
            num_heads,
            num_features,
            Positive(1.0, antithetic=False),
            num_components,
            covariance,
        )
