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

``init="rbf"`` (default) starts at C equal components with μ = 0, Σ = I, where both are the
RBF kernel exp(−‖δ‖²/2). ``init="authors"`` starts where the authors' code does (from a
fixed-seed generator, so every layer alike):

    gmm_rks: Σ_c = A_cᵀA_c, A_c (d, d) ~ U(±√(6/(d² + H d))) (xavier on (H, d, d)), so
             E‖ω‖²/d = 2/(d + H) (0.028 at d = 64, H = 8: a ≈ 6× wider kernel); μ ~ U(±1/d)
    gmm_prf: Σ_c = diag(e^s), s ~ U(±√(6/(H + d))) (xavier on (H, d)); μ ~ U(±1/√d)

A diagonal covariance keeps the diagonal of Σ_c. The authors' GMM-RKS is full, their GMM-PRF
diagonal (``covariance``). Their GMM-RKS also adds the smoothing feature (``smoothing``; their
kernel is 2k + s², i.e. our s = theirs / √2), and draws i.i.d. noise (``orthogonal=False``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lk_study.kernels.base import (
    DEN_FLOOR,
    INITS,
    Positive,
    RandomFeatureMap,
    Trig,
    check_choice,
    gaussian_noise,
)

COVARIANCES = ("diag", "full")


class GaussianMixtureFeatures(RandomFeatureMap):
    learned = True

    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        num_features: int,
        component: Positive | Trig,
        num_components: int = 1,
        covariance: str = "diag",
        orthogonal: bool = True,
        init: str = "rbf",
    ) -> None:
        super().__init__(head_dim, num_heads, num_features, component)
        check_choice("covariance", covariance, COVARIANCES)
        check_choice("init", init, INITS)
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
        self.orthogonal = orthogonal
        self.init = init
        g = torch.Generator().manual_seed(0)
        if init == "authors":
            with torch.no_grad():
                self._authors_init(g)
        self.resample(g)

    def _authors_init(self, g: torch.Generator) -> None:
        """The authors' initial spectra (module docstring)."""
        h, c, d = self.mu.shape
        if self.component.positive:  # gmm_prf: diag(e^s), s xavier on (H, d); μ ~ U(±1/√d)
            bound = math.sqrt(6.0 / (h + d))
            self.log_scale.copy_(0.5 * (torch.rand(h, c, d, generator=g) * 2 - 1) * bound)
            self.mu.copy_((torch.rand(h, c, d, generator=g) * 2 - 1) * d**-0.5)
            return
        bound = math.sqrt(6.0 / (d * d + h * d))  # gmm_rks: A xavier on (H, d, d)
        a = (torch.rand(h, c, d, d, generator=g, dtype=torch.float64) * 2 - 1) * bound
        cov = a.transpose(-2, -1) @ a  # ω = Aᵀε
        if self.lower is None:
            self.log_scale.copy_(0.5 * torch.diagonal(cov, dim1=-2, dim2=-1).log())
        else:
            chol = torch.linalg.cholesky(cov)
            self.log_scale.copy_(torch.diagonal(chol, dim1=-2, dim2=-1).log())
            self.lower.copy_(torch.tril(chol, diagonal=-1))
        self.mu.copy_((torch.rand(h, c, d, generator=g) * 2 - 1) / d)

    def resample(self, generator: torch.Generator) -> None:
        self.eps.copy_(
            gaussian_noise(
                generator, self.num_heads, self.num_frequencies, self.head_dim, self.orthogonal
            )
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

    def spectral_params(self, noise: Tensor | None = None) -> dict[str, Tensor]:
        """mu (H, C, d), cov Σ = L Lᵀ (H, C, d, d), weights π (H, C)."""
        L = self.cholesky().double()
        return {
            "mu": self.mu.double(),
            "cov": L @ L.transpose(-2, -1),
            "weights": torch.softmax(self.logits.double(), -1),
        }

    def spectral_samples(self, noise: Tensor, generator: torch.Generator) -> Tensor:
        """ω = μ_c + L_c ε with components c ~ π drawn from ``generator``."""
        pi = torch.softmax(self.logits.double(), -1)  # (H, C)
        comp = torch.multinomial(pi, noise.shape[1], replacement=True, generator=generator)
        heads = torch.arange(self.num_heads)[:, None]
        L = self.cholesky().double()[heads, comp]  # (H, N, d, d)
        return self.mu.double()[heads, comp] + torch.einsum("hnde,hne->hnd", L, noise)


class GMMRKS(GaussianMixtureFeatures):
    math = (
        "φ = √w[cos(ωx'), sin(ωx') (, s)], ω ~ Σπ_c N(μ_c, Σ_c) "
        "-> Σ π_c cos(μ_c·δ) e^(−½δᵀΣ_cδ) + s²"
    )

    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        num_features: int = 256,
        num_components: int = 1,
        covariance: str = "diag",
        orthogonal: bool = True,
        init: str = "rbf",
        smoothing: float = 0.0,
        den_floor: float = DEN_FLOOR,
    ) -> None:
        component = Trig(smoothing, den_floor)
        super().__init__(
            head_dim,
            num_heads,
            num_features,
            component,
            num_components,
            covariance,
            orthogonal,
            init,
        )


class GMMPRF(GaussianMixtureFeatures):
    math = "φ = √w exp(ωx'−‖x'‖²), ω ~ Σπ_c N(μ_c, Σ_c) -> Σ π_c e^(μ_c·z+½zᵀΣ_cz−‖x'‖²−‖y'‖²)"

    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        num_features: int = 256,
        num_components: int = 1,
        covariance: str = "diag",
        orthogonal: bool = True,
        init: str = "rbf",
    ) -> None:
        super().__init__(
            head_dim,
            num_heads,
            num_features,
            Positive(1.0, antithetic=False),
            num_components,
            covariance,
            orthogonal,
            init,
        )
