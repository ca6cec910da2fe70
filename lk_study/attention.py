"""Attention over any registry kernel: linear-time kernelised attention, exact softmax oracle.

    out_t = Σ_s k̂(q_t, k_s) v_s / Σ_s k̂(q_t, k_s),   k̂(q, k) = φ(q)·φ(k)
          = φ(q_t)ᵀ (Σ_s φ(k_s) v_sᵀ) / φ(q_t)ᵀ Σ_s φ(k_s)         O((T + S)·M·d), not O(T·S)

Positive feature maps are stabilised in log space: log φ(q_t) loses its row max and log φ(k_s)
the max over all valid keys of the head. Both shifts multiply numerator and denominator alike,
so they cancel exactly. The denominator is clamped below at ``eps`` (relative to the largest
feature), so it never divides by ~0 or, for signed (trig) features, by a negative number.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lk_study.kernels.base import FeatureMap

EPS = 1e-6


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor | None = None) -> Tensor:
    """Exact softmax attention through ``scaled_dot_product_attention``; shapes as below."""
    mask = None if key_valid is None else key_valid[:, None, None, :]  # (B, 1, 1, S)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def feature_pair(
    q: Tensor, k: Tensor, fm: FeatureMap, key_valid: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """φ(q) (B, H, T, M) and φ(k) (B, H, S, M), padding keys zeroed, positive maps stabilised."""
    if fm.positive:
        log_q = fm.log_features(q)
        log_k = fm.log_features(k)
        if key_valid is not None:
            log_k = log_k.masked_fill(~key_valid[:, None, :, None], float("-inf"))
        q_shift = log_q.amax(-1, keepdim=True).detach()  # (B, H, T, 1)
        k_shift = log_k.amax((-2, -1), keepdim=True).detach().clamp_min(-1e4)  # (B, H, 1, 1)
        return (log_q - q_shift).exp(), (log_k - k_shift).exp()
    phi_q, phi_k = fm(q), fm(k)
    if key_valid is not None:
        phi_k = phi_k * key_valid[:, None, :, None].to(phi_k.dtype)
    return phi_q, phi_k


def linear_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor, eps: float = EPS) -> Tensor:
    """φ(q) (B, H, T, M), φ(k) (B, H, S, M), v (B, H, S, dv) -> (B, H, T, dv)."""
    kv = torch.einsum("bhsm,bhsd->bhmd", phi_k, v)  # (B, H, M, dv)
    num = torch.einsum("bhtm,bhmd->bhtd", phi_q, kv)  # (B, H, T, dv)
    den = torch.einsum("bhtm,bhm->bht", phi_q, phi_k.sum(-2))  # (B, H, T)
    return num / den.clamp_min(eps).unsqueeze(-1)


def kernel_attention(
    q: Tensor, k: Tensor, v: Tensor, fm: FeatureMap, key_valid: Tensor | None = None
) -> Tensor:
    """Attention with kernel ``fm``.

    Args:
        q (B, H, T, d), k (B, H, S, d), v (B, H, S, dv).
        key_valid: optional (B, S) bool, True where the key is a real token.
    Returns (B, H, T, dv): Σ_s k̂(q, k_s) v_s / Σ_s k̂(q, k_s); exact softmax for ``softmax``.
    """
    if fm.exact_attention:
        return softmax_attention(q, k, v, key_valid)
    return linear_attention(*feature_pair(q, k, fm, key_valid), v)


def materialised_attention(
    q: Tensor, k: Tensor, v: Tensor, fm: FeatureMap, key_valid: Tensor | None = None
) -> Tensor:
    """The O(T·S) oracle: build A = φ(q)φ(k)ᵀ (B, H, T, S) explicitly, normalise, apply to v."""
    if fm.exact_attention:
        scores = fm.scale(q) @ fm.scale(k).transpose(-2, -1)
        if key_valid is not None:
            scores = scores.masked_fill(~key_valid[:, None, None, :], float("-inf"))
        return scores.softmax(-1) @ v
    a = fm(q) @ fm(k).transpose(-2, -1)
    if key_valid is not None:
        a = a * key_valid[:, None, None, :].to(a.dtype)
    return a @ v / a.sum(-1, keepdim=True)
