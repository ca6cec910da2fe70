"""The feature-map protocol shared by every kernel, and its random-feature building blocks.

A kernel k(x, y) between a query x and a key y (both per head, dimension d) is estimated by
k(x, y) ≈ φ(x)·φ(y) with φ: R^d -> R^M. Inputs are rescaled to x' = x / d^(1/4) so that the
targets have the scale of softmax attention, exp(q·k/√d).

Following Spectraformer, a random-feature map is *how the frequencies are drawn* times *which
function is applied*:

- a family (one file each) turns fixed noise plus its learned parameters into frequencies
  ω_j (H, m, d) and quadrature weights w_j ≥ 0 with Σ_j w_j = 1 (``frequencies``);
- a component turns the projections ω_j·x' into features:
  ``Positive`` (PRF):  φ_j(x) = √w_j exp(ω_j·x' − c‖x'‖²)           (estimates E[exp(ω·z)]...)
  ``Trig``     (RKS):  φ(x) = [√w_j cos(ω_j·x'), √w_j sin(ω_j·x'), s]  (estimates E[cos(ω·δ)] + s²)

with z = x' + y' and δ = x' − y'. The noise is drawn only by ``resample(generator)``; the forward
pass never touches an RNG, so queries and keys always share one draw and evaluation is
reproducible.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

INITS = ("rbf", "authors")  # learned families: start at the RBF kernel, or as the authors' code
DEN_FLOOR = 0.05  # default c of the signed maps' normaliser floor: |out| <= max|v| / c


def check_choice(name: str, value: object, valid: tuple) -> None:
    """ValueError naming the valid choices unless ``value`` is one of them."""
    if value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(map(str, valid))}; got {value!r}")


class FeatureMap(nn.Module):
    """Base class of every registry entry.

    Attributes:
        num_features: M, the number of features per head (0 for ``softmax``, which has no φ).
            φ has M columns, plus one constant column for a signed map with ``smoothing`` > 0.
        exact_attention: True if ``kernel_attention`` must use exact softmax (SDPA).
        positive: True if φ > 0 and ``log_features`` exists (attention is then computed in log
            space and is an exact convex combination of the values, lk_study.attention).
        den_floor: c of the signed maps' normaliser floor (lk_study.attention); 0 for others.
        learned: True for families whose spectral distribution is trained (gmm_*,
            fastfood_*, generator_*): ``spectral_params`` is then non-empty.
    """

    exact_attention = False
    learned = False
    positive = False
    den_floor = 0.0
    math = ""  # one line: the feature map and the kernel it estimates

    def __init__(self, head_dim: int, num_heads: int, num_features: int) -> None:
        super().__init__()
        if head_dim < 1 or num_heads < 1:
            raise ValueError(f"head_dim and num_heads must be >= 1, got {head_dim}, {num_heads}")
        self.head_dim = head_dim
        self.num_heads = num_heads
        self.num_features = num_features

    def scale(self, x: Tensor) -> Tensor:
        """x (..., d) -> x' = x / d^(1/4)."""
        return x * self.head_dim**-0.25

    def resample(self, generator: torch.Generator) -> None:
        """Draw new random features from ``generator`` (no global RNG). Default: nothing to draw."""

    def exact_kernel(self, x: Tensor, y: Tensor) -> Tensor:
        """(B, H, T, d), (B, H, S, d) -> (B, H, T, S): the kernel that φ(x)·φ(y) estimates."""
        raise NotImplementedError

    def spectral_params(self, noise: Tensor | None = None) -> dict[str, Tensor]:
        """The learned spectral parameters, float64, first axis the head (lk_study.spectra).
        ``noise`` (H, N, d): a fixed noise sample, for families whose parameters act on
        noise (generator_*). Default: {} (nothing is learned)."""
        return {}

    def spectral_samples(self, noise: Tensor, generator: torch.Generator) -> Tensor | None:
        """Frequencies (H, N, d), float64, for the fixed noise sample ``noise`` (H, N, d) and
        any further randomness from ``generator`` (lk_study.spectra). Default: None (the
        kernel has no frequencies)."""
        return None


def gaussian_noise(
    generator: torch.Generator, num_heads: int, m: int, d: int, orthogonal: bool = True
) -> Tensor:
    """Draw ε (H, m, d) with rows ~ N(0, I_d).

    With ``orthogonal``, rows come in blocks of d that are exactly orthogonal (QR of a Gaussian
    matrix), each row rescaled by an independent χ_d norm so its marginal stays N(0, I)
    (orthogonal random features, Choromanski et al. 2021). A last partial block keeps its
    first rows.
    """
    if not orthogonal:
        return torch.randn(num_heads, m, d, generator=generator)
    blocks = math.ceil(m / d)
    g = torch.randn(num_heads, blocks, d, d, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)  # q (H, blocks, d, d): orthonormal columns
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)  # Haar-uniform
    norms = torch.randn(num_heads, blocks, d, d, generator=generator, dtype=torch.float64).norm(
        dim=-1
    )  # (H, blocks, d): χ_d lengths
    rows = q.transpose(-2, -1) * norms.unsqueeze(-1)  # (H, blocks, d, d), rows orthogonal
    return rows.reshape(num_heads, blocks * d, d)[:, :m].to(torch.float32)


def gaussian_mixture_kernel(
    log_pi: Tensor, mu: Tensor, cov: Tensor, x: Tensor, y: Tensor, positive: bool
) -> Tensor:
    """The kernel estimated by features with ω ~ Σ_c π_c N(μ_c, Σ_c), before the ‖x'‖² factors.

    Args:
        log_pi (H, C), mu (H, C, d), cov (H, C, d, d); x (B, H, T, d), y (B, H, S, d) already
        scaled to x', y'.
        positive: True -> Σ_c π_c exp(μ_c·z + ½ zᵀΣ_c z) with z = x' + y';
                  False -> Σ_c π_c cos(μ_c·δ) exp(−½ δᵀΣ_c δ) with δ = x' − y'.
    Returns (B, H, T, S). Materialises (B, H, T, S, d): for tests and analysis, not training.
    """
    v = x.unsqueeze(-2) + y.unsqueeze(-3) if positive else x.unsqueeze(-2) - y.unsqueeze(-3)
    vmu = torch.einsum("bhtsd,hcd->bhtsc", v, mu)
    quad = torch.einsum("bhtsd,hcde,bhtse->bhtsc", v, cov, v)
    log_pi = log_pi[None, :, None, None, :]
    if positive:
        return torch.logsumexp(log_pi + vmu + 0.5 * quad, dim=-1)
    return (log_pi.exp() * torch.cos(vmu) * torch.exp(-0.5 * quad)).sum(-1)


class Positive:
    """Positive component: φ_j(x) = √w_j exp(ω_j·x' − c‖x'‖²); with ``antithetic`` also −ω_j.

    φ(x)·φ(y) = Σ_j w_j exp(ω_j·z) e^(−c‖x'‖² − c‖y'‖²)  (antithetic: the mean over ±ω_j).
    """

    positive = True

    def __init__(self, norm_coef: float, antithetic: bool) -> None:
        self.norm_coef = norm_coef
        self.antithetic = antithetic
        self.per_frequency = 2 if antithetic else 1

    def log_features(self, proj: Tensor, sq_norm: Tensor, log_w: Tensor) -> Tensor:
        """proj (B, H, T, m) = ω·x', sq_norm (B, H, T, 1) = ‖x'‖², log_w (H, m)
        -> log φ (B, H, T, M)."""
        base = -self.norm_coef * sq_norm + 0.5 * log_w[:, None, :]
        if self.antithetic:
            half = base - 0.5 * math.log(2.0)
            return torch.cat([proj + half, -proj + half], dim=-1)
        return proj + base

    def features(self, proj: Tensor, sq_norm: Tensor, log_w: Tensor) -> Tensor:
        return self.log_features(proj, sq_norm, log_w).exp()

    def exact(self, log_pi: Tensor, mu: Tensor, cov: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Exact kernel for ω ~ Σ_c π_c N(μ_c, Σ_c); x, y already scaled. (B, H, T, S)."""
        log_k = gaussian_mixture_kernel(log_pi, mu, cov, x, y, positive=True)
        if self.antithetic:
            log_k_neg = gaussian_mixture_kernel(log_pi, -mu, cov, x, y, positive=True)
            log_k = torch.logaddexp(log_k, log_k_neg) - math.log(2.0)
        norms = x.pow(2).sum(-1).unsqueeze(-1) + y.pow(2).sum(-1).unsqueeze(-2)
        return torch.exp(log_k - self.norm_coef * norms)


class Trig:
    """Trigonometric component (random kitchen sinks): φ = [√w_j cos(ω_j·x'), √w_j sin(ω_j·x')],
    followed by the constant smoothing feature s when ``smoothing`` = s > 0 (the authors' code).

    φ(x)·φ(y) = Σ_j w_j cos(ω_j·δ) + s²: signed when s < 1, so attention floors its
    normaliser at c·‖φ(q)‖·Σ_s‖φ(k_s)‖ with c = ``floor`` (lk_study.attention). Since
    Σ_j w_j = 1, ‖φ(x)‖² = 1 + s² for every x.
    """

    positive = False
    per_frequency = 2

    def __init__(self, smoothing: float = 0.0, floor: float = 0.0) -> None:
        if not (math.isfinite(smoothing) and smoothing >= 0):
            raise ValueError(f"smoothing must be a finite number >= 0, got {smoothing}")
        if not (math.isfinite(floor) and 0 <= floor <= 1):
            raise ValueError(f"den_floor must be in [0, 1], got {floor}")
        self.smoothing = float(smoothing)
        self.floor = float(floor)

    def features(self, proj: Tensor, sq_norm: Tensor, log_w: Tensor) -> Tensor:
        w = (0.5 * log_w).exp()[:, None, :]  # (H, 1, m)
        parts = [w * torch.cos(proj), w * torch.sin(proj)]
        if self.smoothing:
            parts.append(proj.new_full((*proj.shape[:-1], 1), self.smoothing))
        return torch.cat(parts, dim=-1)

    def exact(self, log_pi: Tensor, mu: Tensor, cov: Tensor, x: Tensor, y: Tensor) -> Tensor:
        k = gaussian_mixture_kernel(log_pi, mu, cov, x, y, positive=False)
        return k + self.smoothing**2


class RandomFeatureMap(FeatureMap):
    """φ(x) = component(ω·x') with frequencies from the family's ``frequencies()``.

    Subclasses define ``frequencies() -> (omega (H, m, d), log_w (H, m))`` and ``exact_kernel``.
    """

    def __init__(
        self, head_dim: int, num_heads: int, num_features: int, component: Positive | Trig
    ) -> None:
        super().__init__(head_dim, num_heads, num_features)
        if num_features < 1 or num_features % component.per_frequency:
            raise ValueError(
                f"{type(self).__name__}: num_features must be a positive multiple of "
                f"{component.per_frequency}, got {num_features}"
            )
        self.component = component
        self.num_frequencies = num_features // component.per_frequency
        self.positive = component.positive
        self.den_floor = 0.0 if component.positive else component.floor

    def frequencies(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, H, T, d) -> proj (B, H, T, m), ‖x'‖² (B, H, T, 1), log_w (H, m)."""
        omega, log_w = self.frequencies()
        xs = self.scale(x)
        proj = torch.einsum("bhtd,hmd->bhtm", xs, omega.to(xs.dtype))
        return proj, xs.pow(2).sum(-1, keepdim=True), log_w.to(xs.dtype)

    def log_features(self, x: Tensor) -> Tensor:
        """log φ(x), (B, H, T, d) -> (B, H, T, M); positive components only."""
        return self.component.log_features(*self._project(x))

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, T, d) -> φ(x) (B, H, T, M), with the current draw."""
        return self.component.features(*self._project(x))


def sampled_kernel(
    component: Positive | Trig, x: Tensor, y: Tensor, omega: Tensor, log_w: Tensor
) -> Tensor:
    """Σ_j φ_j(x) φ_j(y) for given frequencies: the kernel of one finite draw.

    Args:
        x (B, H, T, d), y (B, H, S, d) already scaled to x', y'; omega (H, m, d); log_w (H, m).
    Returns (B, H, T, S), without a Trig component's smoothing term s². Positive components
    are evaluated in log space with per-row shifts, so the result is exact up to rounding
    unless the kernel itself over- or underflows. Families without a closed form average this
    over a large fixed sample of their random parts.
    """
    proj_x = torch.einsum("bhtd,hmd->bhtm", x, omega)
    proj_y = torch.einsum("bhsd,hmd->bhsm", y, omega)
    sq_x, sq_y = x.pow(2).sum(-1, keepdim=True), y.pow(2).sum(-1, keepdim=True)
    if component.positive:
        log_x = component.log_features(proj_x, sq_x, log_w)
        log_y = component.log_features(proj_y, sq_y, log_w)
        shift_x, shift_y = log_x.amax(-1, keepdim=True), log_y.amax(-1, keepdim=True)
        k = (log_x - shift_x).exp() @ (log_y - shift_y).exp().transpose(-2, -1)
        return k * (shift_x + shift_y.transpose(-2, -1)).exp()
    width = 2 * omega.shape[1]  # the random features; the smoothing term s² is the caller's
    phi_x = component.features(proj_x, sq_x, log_w)[..., :width]
    phi_y = component.features(proj_y, sq_y, log_w)[..., :width]
    return phi_x @ phi_y.transpose(-2, -1)
