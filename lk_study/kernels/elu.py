"""Linear Transformer (Katharopoulos et al. 2020), a baseline: a deterministic feature map.

    φ(x) = elu(x) + 1  (> 0),   k(x, y) = φ(x)·φ(y)

as in DESIGN and the authors' code, on the raw head vector x. ``scale_inputs=True`` applies it
to x' = x / d^(1/4) instead (the default of lk_study before 0.2). φ > 0, so attention takes the
log-space path with log φ(x) = x for x < 0 and log(1 + x) otherwise (lk_study.attention): an
exact convex combination of the values at every norm. Its width is the head dimension
(``num_features`` is accepted and ignored); there is nothing to draw, so ``resample`` is a
no-op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lk_study.kernels.base import FeatureMap


class ELU(FeatureMap):
    math = "φ = elu(x) + 1 (deterministic, width d) -> φ(x)·φ(y)"
    positive = True

    def __init__(
        self, head_dim: int, num_heads: int, num_features: int = 0, scale_inputs: bool = False
    ) -> None:
        super().__init__(head_dim, num_heads, head_dim)
        self.scale_inputs = scale_inputs

    def _inputs(self, x: Tensor) -> Tensor:
        return self.scale(x) if self.scale_inputs else x

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, T, d) -> (B, H, T, d)."""
        return F.elu(self._inputs(x)) + 1

    def log_features(self, x: Tensor) -> Tensor:
        """log φ(x) (B, H, T, d), exact in the tails: x for x < 0, log(1 + x) for x ≥ 0."""
        x = self._inputs(x)
        return torch.where(x < 0, x, torch.log1p(x.clamp_min(0)))

    def exact_kernel(self, x: Tensor, y: Tensor) -> Tensor:
        return self(x) @ self(y).transpose(-2, -1)
