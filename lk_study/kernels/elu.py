"""Linear Transformer (Katharopoulos et al. 2020), a baseline: a deterministic feature map.

    φ(x) = elu(x') + 1  (> 0),   k(x, y) = φ(x)·φ(y)

Its width is the head dimension (``num_features`` is accepted and ignored); there is nothing
to draw, so ``resample`` is a no-op.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lk_study.kernels.base import FeatureMap


class ELU(FeatureMap):
    math = "φ = elu(x') + 1 (deterministic, width d) -> φ(x)·φ(y)"

    def __init__(self, head_dim: int, num_heads: int, num_features: int = 0) -> None:
        super().__init__(head_dim, num_heads, head_dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, T, d) -> (B, H, T, d)."""
        return F.elu(self.scale(x)) + 1

    def exact_kernel(self, x: Tensor, y: Tensor) -> Tensor:
        return self(x) @ self(y).transpose(-2, -1)
