"""Attention over any registry kernel: linear-time kernelised attention, exact softmax oracle.

    out_t = Σ_s k̂(q_t, k_s) v_s / Σ_s k̂(q_t, k_s),   k̂(q, k) = φ(q)·φ(k)
          = φ(q_t)ᵀ (Σ_s φ(k_s) v_sᵀ) / φ(q_t)ᵀ Σ_s φ(k_s)         O((T + S)·M·d), not O(T·S)

Positive feature maps are stabilised in log space: log φ(q_t) loses its row max and log φ(k_s)
the max over all valid keys of the head. Both shifts multiply numerator and denominator alike,
so they cancel exactly. The denominator is clamped below at ``eps``, so it never divides by ~0
or, for signed (trig) features, by a negative number.

Two implementations of the same formula:

- ``fused_feature_attention`` for random-feature maps φ = component(ω·x') (every random-feature
  family of the registry). It never materialises φ for the whole sequence: keys, then queries,
  are processed in chunks of rows that fit in cache; the per-head key shift is kept as a running
  max (the accumulated Σ_s φ(k_s)[v_s, 1]ᵀ is rescaled by exp(old − new) when it grows, which
  equals shifting by the final max); the backward pass recomputes each chunk's features instead
  of storing them, as FlashAttention does. Beyond inputs, output and gradients it keeps
  O(chunk·M + M·dv) working memory and O(T) row statistics, never O((T + S)·M).
- ``linear_attention(*feature_pair(...))``: the plain autograd composition, used for the other
  feature maps (``elu``) and kept as the readable reference of the fused path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from lk_study.kernels.base import FeatureMap, Positive, RandomFeatureMap, Trig

EPS = 1e-6
KEY_SHIFT_FLOOR = -1e4  # the key shift never goes below this (all keys masked: φ(k) = 0, out = 0)
CHUNK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 24}  # (B, H, rows, M) elements per chunk


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
        k_shift = log_k.amax((-2, -1), keepdim=True).detach().clamp_min(KEY_SHIFT_FLOOR)
        return (log_q - q_shift).exp(), (log_k - k_shift).exp()  # k_shift (B, H, 1, 1)
    phi_q, phi_k = fm(q), fm(k)
    if key_valid is not None:
        phi_k = phi_k.masked_fill(~key_valid[:, None, :, None], 0.0)
    return phi_q, phi_k


def linear_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor, eps: float = EPS) -> Tensor:
    """φ(q) (B, H, T, M), φ(k) (B, H, S, M), v (B, H, S, dv) -> (B, H, T, dv)."""
    kv = phi_k.transpose(-2, -1) @ v  # (B, H, M, dv): Σ_s φ(k_s) v_sᵀ
    z = phi_k.sum(-2).unsqueeze(-1)  # (B, H, M, 1): Σ_s φ(k_s)
    return (phi_q @ kv) / (phi_q @ z).clamp_min(eps)  # (B, H, T, dv) / (B, H, T, 1)


def uses_fused_path(fm: FeatureMap) -> bool:
    """True if ``fm`` takes ``fused_feature_attention``: φ = component(ω·x'), ω = frequencies().

    That is every ``RandomFeatureMap`` with a ``Positive`` or ``Trig`` component that does not
    override how its features are computed (``_project``, ``log_features``, ``forward``).
    """
    cls = type(fm)
    return (
        isinstance(fm, RandomFeatureMap)
        and type(fm.component) in (Positive, Trig)
        and cls._project is RandomFeatureMap._project
        and cls.log_features is RandomFeatureMap.log_features
        and cls.forward is RandomFeatureMap.forward
    )


def kernel_attention(
    q: Tensor, k: Tensor, v: Tensor, fm: FeatureMap, key_valid: Tensor | None = None
) -> Tensor:
    """Attention with kernel ``fm``.

    Args:
        q (B, H, T, d), k (B, H, S, d), v (B, H, S, dv).
        key_valid: optional (B, S) bool, True where the key is a real token.
    Returns (B, H, T, dv): Σ_s k̂(q, k_s) v_s / Σ_s k̂(q, k_s); exact softmax for ``softmax``.
    Random-feature maps take ``fused_feature_attention`` (same value, chunked and lean).
    """
    if fm.exact_attention:
        return softmax_attention(q, k, v, key_valid)
    if uses_fused_path(fm):
        return fused_feature_attention(q, k, v, fm, key_valid)
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


# ------------------------------------------------------------------ fused random-feature path


@dataclass(frozen=True)
class _Recipe:
    """How φ follows from θ = ω·x' (see lk_study.kernels.base): the component's constants."""

    positive: bool  # Positive (exp) or Trig (cos, sin)
    antithetic: bool  # Positive only: features for +ω and −ω
    norm_coef: float  # Positive only: c in exp(ω·x' − c‖x'‖²)
    scale: float  # x' = scale · x, scale = d^(-1/4)


def fused_feature_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fm: RandomFeatureMap,
    key_valid: Tensor | None = None,
    eps: float = EPS,
    chunk_rows: int | None = None,
) -> Tensor:
    """``linear_attention(*feature_pair(q, k, fm, key_valid), v)``, chunked, with its own backward.

    With θ = ω x' (m frequencies ω (H, m, d) and log-weights log w (H, m) from
    ``fm.frequencies()``), the features are, per component,

        Positive:  log φ(x) = [θ, −θ] (antithetic) or θ, + ½ log w (− ½ log 2) − c‖x'‖²
        Trig:      φ(x) = √w [cos θ, sin θ]

    Keys are visited in chunks of ``chunk_rows`` rows: A = Σ_s φ(k_s) [v_s, 1]ᵀ (B, H, M, dv+1)
    accumulates, for positive maps with φ(k) = exp(log φ(k) − m_k) where m_k is the running max
    over valid keys (A is rescaled by exp(m_old − m_new) when it grows). Then queries:
    [num, den] = φ(q) A, with log φ(q) shifted by its row max (its ‖q'‖² term is a per-row
    constant too, so it cancels and is never computed), out = num / max(den, eps). Backward
    recomputes the features chunk by chunk. Computation is in float32 (float64 for float64
    inputs), autocast off; the output has the autocast dtype under autocast, else the inputs'
    promoted dtype. Gradients reach q, k, v and, through ω and log w, the family's learned
    parameters (first order only).

    Args:
        q (B, H, T, d), k (B, H, S, d), v (B, H, S, dv); key_valid optional (B, S) bool.
        chunk_rows: rows per chunk (default: about CHUNK_ELEMENTS[device] elements of φ).
    Returns (B, H, T, dv).
    """
    omega, log_w = fm.frequencies()
    comp = fm.component
    recipe = _Recipe(
        positive=comp.positive,
        antithetic=comp.positive and comp.antithetic,
        norm_coef=comp.norm_coef if comp.positive else 0.0,
        scale=fm.head_dim**-0.25,
    )
    device = q.device.type
    if torch.is_autocast_enabled(device):  # the dtype the matmuls would have under autocast
        out_dtype = torch.get_autocast_dtype(device)
    else:
        out_dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    return _FusedFeatureAttention.apply(
        q, k, v, omega, log_w, key_valid, recipe, eps, chunk_rows, out_dtype
    )


class _FusedFeatureAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, omega, log_w, key_valid, recipe, eps, chunk_rows, out_dtype):
        with torch.autocast(q.device.type, enabled=False):
            return _fused_forward(
                ctx, q, k, v, omega, log_w, key_valid, recipe, eps, chunk_rows, out_dtype
            )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        with torch.autocast(grad_out.device.type, enabled=False):
            return _fused_backward(ctx, grad_out)


def _rows(x: Tensor, width: int, chunk_rows: int | None) -> int:
    if chunk_rows is not None:
        return max(1, chunk_rows)
    per_row = x.shape[0] * x.shape[1] * width
    return max(64, CHUNK_ELEMENTS.get(x.device.type, CHUNK_ELEMENTS["cpu"]) // per_row)


def _feature_params(
    omega: Tensor, log_w: Tensor, r: _Recipe, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """ω (H, m, d), log w (H, m) -> scaled ωᵀ (H, d, m) and a per-feature term (H, 1, M):
    the log-space offset ½ log w (− ½ log 2) for Positive, the factor √w for Trig."""
    w_t = (omega.to(dtype) * r.scale).transpose(-2, -1)  # θ = x' ωᵀ = x @ w_t
    half_log_w = 0.5 * log_w.to(dtype)
    if r.positive:
        offset = half_log_w - 0.5 * math.log(2.0) if r.antithetic else half_log_w
        per_feature = torch.cat([offset, offset], -1) if r.antithetic else offset
    else:
        sqrt_w = half_log_w.exp()
        per_feature = torch.cat([sqrt_w, sqrt_w], -1)
    return w_t, per_feature.unsqueeze(-2)


def _chunk_features(
    x: Tensor, w_t: Tensor, per_feature: Tensor, r: _Recipe, key_valid: Tensor | None, key: bool
) -> Tensor:
    """x (B, H, c, d) -> (B, H, c, M): log φ before its shift (Positive) or φ (Trig).

    Queries skip the −c‖x'‖² term of Positive maps (cancelled by their row shift); invalid keys
    get log φ = −inf (Positive) or φ = 0 (Trig).
    """
    theta = x @ w_t  # (B, H, c, m)
    invalid = None if key_valid is None else ~key_valid[:, None, :, None]  # (B, 1, c, 1)
    m = theta.shape[-1]
    if not r.positive:
        phi = theta.new_empty((*theta.shape[:-1], 2 * m))
        torch.cos(theta, out=phi[..., :m])
        torch.sin(theta, out=phi[..., m:])
        phi.mul_(per_feature)
        return phi if invalid is None else phi.masked_fill_(invalid, 0.0)
    if r.antithetic:  # [θ + o, −θ + o], written in place of a concatenation
        log_phi = theta.new_empty((*theta.shape[:-1], 2 * m))
        torch.add(theta, per_feature[..., :m], out=log_phi[..., :m])
        torch.sub(per_feature[..., m:], theta, out=log_phi[..., m:])
    else:
        log_phi = theta.add_(per_feature)
    if key:
        sq = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_()  # (B, H, c, 1): ‖x‖²
        log_phi.add_(sq.mul_(-r.norm_coef * r.scale**2))  # ‖x'‖² = scale² ‖x‖²
        if invalid is not None:
            log_phi.masked_fill_(invalid, float("-inf"))
    return log_phi


def _add_matmul_(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """acc (B, H, i, j) += a (B, H, i, c) @ b (B, H, c, j), as one GEMM with beta = 1."""
    acc.view(-1, *acc.shape[-2:]).baddbmm_(
        a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
    )


def _fused_forward(ctx, q, k, v, omega, log_w, key_valid, r: _Recipe, eps, chunk_rows, out_dtype):
    ct = torch.promote_types(q.dtype, torch.float32)  # compute dtype
    (b, h, t, _), s, dv = q.shape, k.shape[2], v.shape[-1]
    w_t, per_feature = _feature_params(omega, log_w, r, ct)
    m_feat = per_feature.shape[-1]
    acc = q.new_zeros((b, h, m_feat, dv + 1), dtype=ct)  # Σ_s φ(k_s) [v_s, 1]ᵀ
    k_shift = q.new_full((b, h, 1, 1), KEY_SHIFT_FLOOR, dtype=ct)
    step = _rows(k, m_feat, chunk_rows)
    for a in range(0, s, step):
        rows = slice(a, a + step)
        valid = None if key_valid is None else key_valid[:, rows]
        phi = _chunk_features(k[:, :, rows].to(ct), w_t, per_feature, r, valid, key=True)
        if r.positive:
            new_shift = torch.maximum(k_shift, phi.amax((-2, -1), keepdim=True))
            acc.mul_((k_shift - new_shift).exp_())
            k_shift = new_shift
            phi.sub_(k_shift).exp_()
        v_aug = F.pad(v[:, :, rows].to(ct), (0, 1), value=1.0)  # (B, H, c, dv + 1): [v_s, 1]
        _add_matmul_(acc, phi.transpose(-2, -1), v_aug)
    out = q.new_empty((b, h, t, dv), dtype=out_dtype)
    out_ct = out if out_dtype == ct else q.new_empty((b, h, t, dv), dtype=ct)
    q_shift = q.new_zeros((b, h, t, 1), dtype=ct)
    den = q.new_empty((b, h, t, 1), dtype=ct)
    step = _rows(q, m_feat, chunk_rows)
    for a in range(0, t, step):
        rows = slice(a, a + step)
        phi = _chunk_features(q[:, :, rows].to(ct), w_t, per_feature, r, None, key=False)
        if r.positive:
            row_max = phi.amax(-1, keepdim=True)  # (B, H, c, 1)
            q_shift[:, :, rows] = row_max
            phi.sub_(row_max).exp_()
        num_den = phi @ acc  # (B, H, c, dv + 1)
        den[:, :, rows] = num_den[..., dv:]
        torch.div(num_den[..., :dv], num_den[..., dv:].clamp_min(eps), out=out_ct[:, :, rows])
    if out_ct is not out:
        out.copy_(out_ct)
    ctx.save_for_backward(q, k, v, omega, log_w, key_valid, acc, k_shift, q_shift, den, out_ct)
    ctx.recipe, ctx.eps, ctx.chunk_rows = r, eps, chunk_rows
    return out


def _feature_backward(
    x: Tensor, phi: Tensor, grad_phi: Tensor, w_t: Tensor, r: _Recipe, key: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Chain rule through one chunk's features (``grad_phi`` is overwritten).

    Returns dL/dx (B, H, c, d), dL/dθ (B, H, c, m) and Σ_{b,rows} dL/dφ ⊙ φ (H, M), which is
    dL/d(½ log w) per feature for both components.
    """
    m = w_t.shape[-1]
    if r.positive:  # dL/dlog φ = dL/dφ ⊙ φ
        g_log = grad_phi.mul_(phi)
        g_theta = g_log[..., :m] - g_log[..., m:] if r.antithetic else g_log
        g_x = g_theta @ w_t.transpose(-2, -1)
        if key:  # through −c‖x'‖²
            g_sq = g_log.sum(-1, keepdim=True).mul_(-2.0 * r.norm_coef * r.scale**2)
            g_x.addcmul_(x, g_sq)
        return g_x, g_theta, g_log.sum((0, 2))
    # φ = √w [cos θ, sin θ]: dθ = dφ_sin ⊙ φ_cos − dφ_cos ⊙ φ_sin
    g_theta = grad_phi[..., m:] * phi[..., :m] - grad_phi[..., :m] * phi[..., m:]
    g_weight = grad_phi.mul_(phi).sum((0, 2))
    return g_theta @ w_t.transpose(-2, -1), g_theta, g_weight


def _fused_backward(ctx, grad_out):
    q, k, v, omega, log_w, key_valid, acc, k_shift, q_shift, den, out = ctx.saved_tensors
    r, eps, chunk_rows = ctx.recipe, ctx.eps, ctx.chunk_rows
    need_q, need_k, need_v, need_omega, need_log_w = ctx.needs_input_grad[:5]
    need_params = need_omega or need_log_w
    ct = acc.dtype
    h, t, s, dv = q.shape[1], q.shape[2], k.shape[2], v.shape[-1]
    w_t, per_feature = _feature_params(omega, log_w, r, ct)
    m_feat = per_feature.shape[-1]
    g_acc = torch.zeros_like(acc)  # dL/dA, A = Σ_s φ(k_s) [v_s, 1]ᵀ
    g_w_t = torch.zeros_like(w_t) if need_omega else None
    g_per_feature = q.new_zeros((h, m_feat), dtype=ct)
    g_q = torch.empty_like(q) if need_q else None
    step = _rows(q, m_feat, chunk_rows)
    for a in range(0, t, step):
        rows = slice(a, a + step)
        qc = q[:, :, rows].to(ct)
        d = den[:, :, rows]
        g_num = grad_out[:, :, rows].to(ct) / d.clamp_min(eps)  # (B, H, c, dv)
        g_den = (g_num * out[:, :, rows]).sum(-1, keepdim=True).neg_().mul_(d >= eps)
        g_num_den = torch.cat([g_num, g_den], -1)  # (B, H, c, dv + 1)
        phi = _chunk_features(qc, w_t, per_feature, r, None, key=False)
        if r.positive:
            phi.sub_(q_shift[:, :, rows]).exp_()
        _add_matmul_(g_acc, phi.transpose(-2, -1), g_num_den)
        if need_q or need_params:
            g_phi = g_num_den @ acc.transpose(-2, -1)  # (B, H, c, M)
            g_x, g_theta, g_feat = _feature_backward(qc, phi, g_phi, w_t, r, key=False)
            if need_q:
                g_q[:, :, rows] = g_x
            if need_omega:
                g_w_t.add_((qc.transpose(-2, -1) @ g_theta).sum(0))
            g_per_feature.add_(g_feat)
    g_k = torch.empty_like(k) if need_k else None
    g_v = torch.empty_like(v) if need_v else None
    step = _rows(k, m_feat, chunk_rows)
    for a in range(0, s, step):
        rows = slice(a, a + step)
        kc = k[:, :, rows].to(ct)
        valid = None if key_valid is None else key_valid[:, rows]
        phi = _chunk_features(kc, w_t, per_feature, r, valid, key=True)
        if r.positive:
            phi.sub_(k_shift).exp_()
        if need_v:
            g_v[:, :, rows] = phi @ g_acc[..., :dv]
        if need_k or need_params:
            v_aug = F.pad(v[:, :, rows].to(ct), (0, 1), value=1.0)
            g_phi = v_aug @ g_acc.transpose(-2, -1)  # (B, H, c, M)
            g_x, g_theta, g_feat = _feature_backward(kc, phi, g_phi, w_t, r, key=True)
            if need_k:
                g_k[:, :, rows] = g_x
            if need_omega:
                g_w_t.add_((kc.transpose(-2, -1) @ g_theta).sum(0))
            g_per_feature.add_(g_feat)
    g_omega = (g_w_t.transpose(-2, -1) * r.scale).to(omega.dtype) if need_omega else None
    g_log_w = None
    if need_log_w:  # both halves of the per-feature term come from the same log w_j
        m = w_t.shape[-1]
        g_half = g_per_feature[:, :m] + g_per_feature[:, m:] if m_feat != m else g_per_feature
        g_log_w = (0.5 * g_half).to(log_w.dtype)
    return g_q, g_k, g_v, g_omega, g_log_w, None, None, None, None, None
