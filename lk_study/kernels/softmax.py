"""Softmax Transformer (Vaswani et al. 2017): exact attention, no random features.

k(q, k) = exp(q·k/√d), normalised over the keys. ``kernel_attention`` routes this entry to
``torch.nn.functional.scaled_dot_product_attention``; there is no finite feature map, so
``num_features`` is 0 and ``fm(x)`` raises.
"""

from __future__ import annotations

from torch import Tensor

from lk_study.kernels.base import FeatureMap


class Softmax(FeatureMap):
    exact_attention = True
    math = "exact: softmax_s(q·k_s/√d) via scaled_dot_product_attention"

    def __init__(self, head_dim: int, num_heads: int, num_features: int = 0) -> None:
        super().__init__(head_dim, num_heads, 0)  # num_features accepted and ignored

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError("softmax has no finite feature map; use kernel_attention")

    def exact_kernel(self, x: Tensor, y: Tensor) -> Tensor:
        """exp(x·y/√d): (B, H, T, d), (B, H, S, d) -> (B, H, T, S)."""
        return (self.scale(x) @ self.scale(y).transpose(-2, -1)).exp()
