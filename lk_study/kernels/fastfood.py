"""FastFood frequencies with learned diagonals: FastFood-RKS and FastFood-PRF.

FastFood (Le, Sarlós & Smola 2013) replaces a dense Gaussian frequency matrix by products of
diagonal, Walsh–Hadamard and permutation matrices; the KL-Transformer (Chowdhury et al. 2022)
learns its diagonals. With n = d rounded up to a power of two (x' zero-padded to n), block b of
head h is

    V_b = n^-½ S_b H G_b Π_b H B_b                                   (n, n)

    H    Walsh–Hadamard matrix (Sylvester order, entries ±1), applied by an O(n log n) butterfly
    B_b  diagonal, initialised Rademacher ±1                                (learned)
    Π_b  a uniformly random permutation, redrawn only by ``resample``       (random)
    G_b  diagonal, initialised N(0, 1)                                      (learned)
    S_b  diagonal row scales, initialised r_i / ‖G_b‖ with r_i ~ χ_n         (learned)

Every row of n^-½ H G Π H B has norm ‖G‖, so S gives each row the length of an N(0, I_n)
vector, and its direction is close to uniform: at initialisation the blocks behave like Gaussian
frequencies, fastfood_rks starts at ≈ exp(−‖δ‖²/2) (RBF) and fastfood_prf at ≈ exp(x'·y').
The initial S, G, B come from a fixed-seed generator (no global RNG), so every layer starts
from the same values; their permutation draws differ (``resample``). ``init="authors"``
starts as the authors' code does instead: S, G, B ~ N(0, 1/n), so rows have norm ≈ n^-½·…
(E‖w‖²/d ≈ 6e-6 at d = 64) and the kernel is almost constant (uniform attention) at first.
The m frequencies W (H, m, d) are the first m rows of ceil(m / n) stacked blocks, restricted to
the first d columns (the padding columns only ever meet zeros). With m = M/2:

    fastfood_rks: φ(x) = √(1/m) [cos(Wx'), sin(Wx')]                       (B, H, T, M)
                  k(x, y) = E_Π[(1/m) Σ_j cos(w_j·δ)]
    fastfood_prf: φ(x) = √(1/M) [exp(Wx' − ‖x'‖²/2), exp(−Wx' − ‖x'‖²/2)]    (B, H, T, M)
                  k(x, y) = E_Π[(1/m) Σ_j cosh(w_j·z)] e^(−‖x'‖²/2 − ‖y'‖²/2)
                  (``form="softmax"``, Performer's form: exp(x'·y') at init), or with m = M
                  φ(x) = √(1/M) exp(Wx' − ‖x'‖²)                            (B, H, T, M)
                  k(x, y) = E_Π[(1/m) Σ_j exp(w_j·z)] e^(−‖x'‖² − ‖y'‖²)
                  (``form="rbf"``, the authors' one-sided form: exp(−‖δ‖²/2) at init)

fastfood_rks also takes the authors' smoothing feature s (``smoothing``, k + s²) and the
normaliser floor ``den_floor`` (lk_study.attention).

Once S, G, B are learned, E_Π has no closed form: ``exact_kernel`` is the mean of the
finite-draw kernel over P = max(EXACT_MIN_DRAWS, ⌈EXACT_FREQUENCIES / m⌉) permutation draws
from a fixed seed (so at least 2^15 sampled frequencies), exact up to a Monte-Carlo error
1/√P times that of a single draw. It costs O(P m (T + S) d + P m T S): for tests and
analysis, not training.

Cost of the features: each forward applies the butterfly to the d padded basis vectors, which
materialises W in O(m d log n), then projects queries and keys with one matmul.
``fastfood_transform`` applied to the padded tokens gives the same projections in O(T m log n)
arithmetic, but as 2 log n memory-bound elementwise passes over (T, m) tensors; measured on
CPU (T = 8192, H = 8, d = 64, M = 128-512, fwd+bwd) it is 13-27x slower than the matmul.
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
    sampled_kernel,
)

EXACT_FREQUENCIES = 1 << 15  # exact_kernel averages over at least this many frequencies...
EXACT_MIN_DRAWS = 16  # ...and at least this many permutation draws
EXACT_SEED = 0
EXACT_CHUNK = 1 << 14  # frequencies per exact_kernel step (bounds its memory)


def hadamard_transform(x: Tensor) -> Tensor:
    """H x along the last dim, (..., n) -> (..., n), n a power of two.

    H is the unnormalised Sylvester Walsh–Hadamard matrix, H_2n = [[H_n, H_n], [H_n, −H_n]]
    (symmetric, H H = n I), applied in log2 n butterfly passes: O(n log n) per vector.
    """
    n = x.shape[-1]
    if n < 1 or n & (n - 1):
        raise ValueError(f"hadamard_transform needs a power-of-two length, got {n}")
    lead = x.shape[:-1]
    h = 1
    while h < n:
        pairs = x.reshape(*lead, n // (2 * h), 2, h)  # entries i and i + h of each 2h-block
        a, b = pairs[..., 0, :], pairs[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2)
        h *= 2
    return x.reshape(*lead, n)


def fastfood_transform(
    v: Tensor, row_scale: Tensor, gauss: Tensor, signs: Tensor, perm: Tensor
) -> Tensor:
    """Stacked FastFood blocks n^-½ S H G Π H B applied to vectors.

    Args:
        v (..., H, N, n): N vectors per head, already padded to n (a power of two).
        row_scale S, gauss G, signs B (H, K, n): the diagonals of K blocks per head.
        perm Π (H, K, n) long: (Π u)_i = u_{perm_i}.
    Returns (..., H, N, K·n): block b's outputs at [..., b·n:(b + 1)·n].
    """
    n = v.shape[-1]
    u = hadamard_transform(v.unsqueeze(-2) * signs.unsqueeze(-3))  # (..., H, N, K, n): H B v
    u = u.gather(-1, perm.unsqueeze(-3).expand(u.shape))  # Π H B v
    u = hadamard_transform(u * gauss.unsqueeze(-3))  # H G Π H B v
    return (u * (row_scale.unsqueeze(-3) * n**-0.5)).flatten(-2)


class FastFoodFeatures(RandomFeatureMap):
    """Frequencies from stacked FastFood blocks with learned S, G, B, through ``component``."""

    learned = True

    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        num_features: int,
        component: Positive | Trig,
        init: str = "rbf",
    ) -> None:
        super().__init__(head_dim, num_heads, num_features, component)
        check_choice("init", init, INITS)
        self.init = init
        n = 1 << (head_dim - 1).bit_length()  # next power of two >= d
        self.padded_dim = n
        self.num_blocks = math.ceil(self.num_frequencies / n)
        shape = (num_heads, self.num_blocks, n)
        g = torch.Generator().manual_seed(0)
        if init == "authors":  # S, G, B ~ N(0, 1/n)
            signs, gauss, row_scale = (torch.randn(shape, generator=g) * n**-0.5 for _ in "SGB")
        else:
            gauss = torch.randn(shape, generator=g)
            chi = torch.randn(*shape, n, generator=g).norm(dim=-1)  # χ_n row lengths
            signs = torch.randint(0, 2, shape, generator=g) * 2.0 - 1.0
            row_scale = chi / gauss.norm(dim=-1, keepdim=True)
        self.signs = nn.Parameter(signs)
        self.gauss = nn.Parameter(gauss)
        self.row_scale = nn.Parameter(row_scale)
        self.register_buffer("perm", torch.zeros(shape, dtype=torch.long))
        self.resample(g)

    def draw_permutations(self, generator: torch.Generator, draws: int = 1) -> Tensor:
        """(H, draws·K, n) independent uniform permutations (draw-major)."""
        shape = (self.num_heads, draws * self.num_blocks, self.padded_dim)
        return torch.rand(shape, generator=generator).argsort(-1)

    def resample(self, generator: torch.Generator) -> None:
        self.perm.copy_(self.draw_permutations(generator))

    def frequencies_for(self, perm: Tensor) -> Tensor:
        """The frequencies for permutations perm (H, draws·K, n) -> (H, draws·m, d)."""
        h, d, m = self.num_heads, self.head_dim, self.num_frequencies
        draws = perm.shape[1] // self.num_blocks
        dev = self.row_scale.device
        basis = torch.eye(d, self.padded_dim, device=dev)  # (d, n): the padded unit vectors e_j
        cols = fastfood_transform(
            basis,
            self.row_scale.repeat(1, draws, 1),
            self.gauss.repeat(1, draws, 1),
            self.signs.repeat(1, draws, 1),
            perm.to(dev),
        )  # (H, d, draws·K·n): column j of every block's W
        rows = cols.transpose(-2, -1).reshape(h, draws, -1, d)[:, :, :m]  # first m rows per draw
        return rows.reshape(h, draws * m, d)

    def frequencies(self) -> tuple[Tensor, Tensor]:
        m = self.num_frequencies
        log_w = torch.full((self.num_heads, m), -math.log(m), device=self.perm.device)
        return self.frequencies_for(self.perm), log_w

    def spectral_params(self, noise: Tensor | None = None) -> dict[str, Tensor]:
        """S, G, B (H, K, n): the learned diagonals."""
        return {
            "S": self.row_scale.double(),
            "G": self.gauss.double(),
            "B": self.signs.double(),
        }

    def spectral_samples(self, noise: Tensor, generator: torch.Generator) -> Tensor:
        """N = noise.shape[1] frequencies from fresh permutations drawn from ``generator`` (the
        family's randomness is Π, not Gaussian noise)."""
        draws = math.ceil(noise.shape[1] / self.num_frequencies)
        omega = self.frequencies_for(self.draw_permutations(generator, draws)).double()
        return omega[:, : noise.shape[1]]

    def exact_kernel(self, x: Tensor, y: Tensor) -> Tensor:
        """(B, H, T, d), (B, H, S, d) -> (B, H, T, S) for the current S, G, B.

        E_Π of the finite-draw kernel (no closed form), estimated by its mean over
        P = max(EXACT_MIN_DRAWS, ⌈EXACT_FREQUENCIES / m⌉) permutation draws from a fixed seed:
        deterministic, Monte-Carlo error 1/√P of one draw's. Materialises (B, H, T,
        2·EXACT_CHUNK) at most.
        """
        xs, ys = self.scale(x), self.scale(y)
        gen = torch.Generator().manual_seed(EXACT_SEED)
        m = self.num_frequencies
        total = max(EXACT_MIN_DRAWS, math.ceil(EXACT_FREQUENCIES / m))
        per_step = max(1, EXACT_CHUNK // m)
        k = torch.zeros((), dtype=xs.dtype, device=xs.device)
        for start in range(0, total, per_step):
            draws = min(per_step, total - start)
            omega = self.frequencies_for(self.draw_permutations(gen, draws)).to(xs.dtype)
            log_w = torch.full(omega.shape[:2], -math.log(m * total), device=xs.device)
            k = k + sampled_kernel(self.component, xs, ys, omega, log_w.to(xs.dtype))
        return k + (0.0 if self.positive else self.component.smoothing**2)


class FastFoodRKS(FastFoodFeatures):
    math = (
        "φ = √(2/M)[cos(Wx'), sin(Wx') (, s)], W = FastFood n^-½SHGΠHB, S,G,B learned "
        "-> E_Π[cos(w·δ)] + s²"
    )

    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        num_features: int = 256,
        init: str = "rbf",
        smoothing: float = 0.0,
        den_floor: float = DEN_FLOOR,
    ) -> None:
        super().__init__(head_dim, num_heads, num_features, Trig(smoothing, den_floor), init)


FASTFOOD_PRF_FORMS = {  # form -> the positive component
    "softmax": Positive(0.5, antithetic=True),  # Performer's: exp(x'·y') at init
    "rbf": Positive(1.0, antithetic=False),  # the authors': exp(−‖δ‖²/2) at init
}


class FastFoodPRF(FastFoodFeatures):
    math = (
        "φ = √(1/M)[exp(±Wx'−‖x'‖²/2)] (form rbf: exp(Wx'−‖x'‖²)), W = FastFood n^-½SHGΠHB, "
        "S,G,B learned -> E_Π[cosh(w·z)] e^(−‖x'‖²/2−‖y'‖²/2)"
    )

    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        num_features: int = 256,
        init: str = "rbf",
        form: str = "softmax",
    ) -> None:
        check_choice("form", form, tuple(FASTFOOD_PRF_FORMS))
        super().__init__(head_dim, num_heads, num_features, FASTFOOD_PRF_FORMS[form], init)
        self.form = form
