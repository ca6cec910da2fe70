"""Attention over any registry kernel: linear-time kernelised attention, exact softmax oracle.

    out_t = Σ_s k̂(q_t, k_s) v_s / Σ_s k̂(q_t, k_s),   k̂(q, k) = φ(q)·φ(k)
          = φ(q_t)ᵀ (Σ_s φ(k_s) v_sᵀ) / φ(q_t)ᵀ Σ_s φ(k_s)         O((T + S)·M·d), not O(T·S)

The output is a weighted average of the values at every input norm, in fp32 and bf16:

**Positive maps** (φ > 0: prf, gmm_prf, fastfood_prf, generator_prf, elu) are evaluated in log
space as attention over features. With ℓ_tj = log φ_j(q_t), λ_sj = log φ_j(k_s) and the
per-feature key shift c_j = max_s λ_sj (valid keys):

    Z_j = Σ_s e^(λ_sj − c_j) ≥ 1,    Â_j = Σ_s e^(λ_sj − c_j) v_s / Z_j     (a convex mix of v)
    a_tj = ℓ_tj + c_j + log Z_j,     p_tj = e^(a_tj − max_j' a_tj')          (max_j p_tj = 1)
    out_t = Σ_j p_tj Â_j / Σ_j p_tj

which is the formula above exactly (the shifts cancel), and an exact convex combination of the
values (Σ_j p_tj ≥ 1: no division by a small number, at any norm). Only an all-padding key set
gives out = 0.

**Signed maps** (rks, gmm_rks, fastfood_rks, generator_rks: φ = [√w cos, √w sin(, s)]) floor the
normaliser relative to the feature norms:

    den_t = max(φ(q_t)·Σ_s φ(k_s),  c ‖φ(q_t)‖ Σ_s ‖φ(k_s)‖),   c = ``fm.den_floor`` ∈ (0, 1]

Because |φ(q)·φ(k)| ≤ ‖φ(q)‖‖φ(k)‖ (Cauchy–Schwarz), each output channel obeys

    |out_te| ≤ Σ_s |k̂(q_t, k_s)| |v_se| / den_t ≤ max_s |v_se| / c,     so C = 1/c

(for these maps ‖φ(x)‖² = Σ_j w_j + s² = 1 + s² for every x, so the floor is c·(1 + s²)·S_valid
and is a constant of the inputs: where it is active the output is the numerator over a
constant, and the backward pass treats it so, exactly). With c = 0 only ``EPS`` remains, which
bounds nothing. With the smoothing feature s ≥ 1 every k̂ ≥ 0 and the output is convex.

Three implementations of the same formula:

- ``fused_feature_attention`` for random-feature maps φ = component(ω·x') (every random-feature
  family of the registry). It never materialises φ for the whole sequence: keys, then queries,
  are processed in chunks of rows that fit in cache; the per-feature key shift is kept as a
  running max (the accumulated Σ_s φ(k_s)[v_s, 1]ᵀ is rescaled row by row by exp(old − new)
  when it grows, which equals shifting by the final max); the backward pass recomputes each
  chunk's features instead of storing them, as FlashAttention does. Beyond inputs, output and
  gradients it keeps O(chunk·M + M·dv) working memory and O(T) row statistics.
- ``reference_attention``: the plain autograd composition of the same formulas
  (``log_linear_attention`` for positive maps, ``linear_attention`` for signed ones), used for
  the other feature maps (``elu``) and kept as the readable reference of the fused path.
- ``materialised_attention``: the O(T·S) oracle that builds the attention matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from lk_study.kernels.base import FeatureMap, Positive, RandomFeatureMap, Trig

EPS = 1e-6  # the normaliser's absolute floor (it matters only when every key is padding)
SHIFT_FLOOR = -1e30  # log-space shifts never go below this (a feature with only padding keys)
CHUNK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 24}  # (B, H, rows, M) elements per chunk


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor | None = None) -> Tensor:
    """Exact softmax attention through ``scaled_dot_product_attention``; shapes as below."""
    mask = None if key_valid is None else key_valid[:, None, None, :]  # (B, 1, 1, S)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def feature_pair(
    q: Tensor, k: Tensor, fm: FeatureMap, key_valid: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """φ(q) (B, H, T, M) and φ(k) (B, H, S, M) — or log φ for positive maps — padding keys
    removed (φ = 0, log φ = −inf)."""
    if fm.positive:
        log_q, log_k = fm.log_features(q), fm.log_features(k)
        if key_valid is not None:
            log_k = log_k.masked_fill(~key_valid[:, None, :, None], float("-inf"))
        return log_q, log_k
    phi_q, phi_k = fm(q), fm(k)
    if key_valid is not None:
        phi_k = phi_k.masked_fill(~key_valid[:, None, :, None], 0.0)
    return phi_q, phi_k


def log_linear_attention(log_q: Tensor, log_k: Tensor, v: Tensor) -> Tensor:
    """Positive maps, from log φ(q) (B, H, T, M), log φ(k) (B, H, S, M), v (B, H, S, dv)
    -> (B, H, T, dv): attention over features, an exact convex combination (module docstring)."""
    c = log_k.amax(-2, keepdim=True).detach().clamp_min(SHIFT_FLOOR)  # (B, H, 1, M)
    e = (log_k - c).exp()  # (B, H, S, M), max over s = 1 per feature
    z = e.sum(-2, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)  # (B, H, 1, M): Z_j
    a_hat = (e.transpose(-2, -1) @ v) / z.transpose(-2, -1)  # (B, H, M, dv): Â_j
    logits = log_q + c + z.log()  # (B, H, T, M): a_tj
    p = (logits - logits.amax(-1, keepdim=True).detach()).exp()  # (B, H, T, M), max 1
    return (p @ a_hat) / p.sum(-1, keepdim=True)


def linear_attention(
    phi_q: Tensor, phi_k: Tensor, v: Tensor, den_floor: float = 0.0, eps: float = EPS
) -> Tensor:
    """φ(q) (B, H, T, M), φ(k) (B, H, S, M), v (B, H, S, dv) -> (B, H, T, dv), with the
    normaliser floored at den_floor · ‖φ(q_t)‖ · Σ_s ‖φ(k_s)‖ (and at eps)."""
    kv = phi_k.transpose(-2, -1) @ v  # (B, H, M, dv): Σ_s φ(k_s) v_sᵀ
    z = phi_k.sum(-2).unsqueeze(-1)  # (B, H, M, 1): Σ_s φ(k_s)
    den = phi_q @ z  # (B, H, T, 1)
    if den_floor:
        k_norms = phi_k.norm(dim=-1).sum(-1)[..., None, None]  # (B, H, 1, 1)
        floor = den_floor * phi_q.norm(dim=-1, keepdim=True) * k_norms
        den = torch.maximum(den, floor.detach())
    return (phi_q @ kv) / den.clamp_min(eps)  # (B, H, T, dv) / (B, H, T, 1)


def reference_attention(
    q: Tensor, k: Tensor, v: Tensor, fm: FeatureMap, key_valid: Tensor | None = None
) -> Tensor:
    """The autograd reference of ``kernel_attention`` for feature maps (not ``softmax``).
    The output has the autocast dtype under autocast, as the fused path's."""
    pair = feature_pair(q, k, fm, key_valid)
    if fm.positive:
        out = log_linear_attention(*pair, v)
    else:
        out = linear_attention(*pair, v, den_floor=fm.den_floor)
    return out.to(_out_dtype(q, k, v))


def _out_dtype(q: Tensor, k: Tensor, v: Tensor) -> torch.dtype:
    """The dtype the matmuls would have: the autocast dtype, else the inputs' promoted one."""
    device = q.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)


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
    return reference_attention(q, k, v, fm, key_valid)


def materialised_attention(
    q: Tensor, k: Tensor, v: Tensor, fm: FeatureMap, key_valid: Tensor | None = None
) -> Tensor:
    """The O(T·S) oracle: build the attention matrix A (B, H, T, S) explicitly, normalise,
    apply to v. Positive maps: log A_ts = logsumexp_j(log φ_j(q_t) + log φ_j(k_s)), normalised
    by a softmax over s (materialises (B, H, T, S, M)); signed maps: A = φ(q)φ(k)ᵀ over the
    floored row sum (module docstring)."""
    mask = None if key_valid is None else ~key_valid[:, None, None, :]  # (B, 1, 1, S)
    if fm.exact_attention:
        scores = fm.scale(q) @ fm.scale(k).transpose(-2, -1)
        return (scores if mask is None else scores.masked_fill(mask, float("-inf"))).softmax(-1) @ v
    if fm.positive:
        log_a = torch.logsumexp(
            fm.log_features(q).unsqueeze(-2) + fm.log_features(k).unsqueeze(-3), dim=-1
        )  # (B, H, T, S)
        if mask is not None:
            log_a = log_a.masked_fill(mask, float("-inf"))
        return log_a.softmax(-1) @ v
    phi_q, phi_k = fm(q), fm(k)
    a = phi_q @ phi_k.transpose(-2, -1)
    norms = phi_k.norm(dim=-1)[:, :, None, :]  # (B, H, 1, S)
    if mask is not None:
        a, norms = a.masked_fill(mask, 0.0), norms.masked_fill(mask, 0.0)
    floor = fm.den_floor * phi_q.norm(dim=-1, keepdim=True) * norms.sum(-1, keepdim=True)
    return a @ v / torch.maximum(a.sum(-1, keepdim=True), floor).clamp_min(EPS)


# ------------------------------------------------------------------ fused random-feature path


@dataclass(frozen=True)
class _Recipe:
    """How φ follows from θ = ω·x' (see lk_study.kernels.base): the component's constants."""

    positive: bool  # Positive (exp) or Trig (cos, sin)
    antithetic: bool  # Positive only: features for +ω and −ω
    norm_coef: float  # Positive only: c in exp(ω·x' − c‖x'‖²)
    scale: float  # x' = scale · x, scale = d^(-1/4)
    smoothing: float  # Trig only: the constant feature s (0: none)
    den_floor: float  # Trig only: c of the normaliser floor


def fused_feature_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fm: RandomFeatureMap,
    key_valid: Tensor | None = None,
    eps: float = EPS,
    chunk_rows: int | None = None,
) -> Tensor:
    """``reference_attention(q, k, v, fm, key_valid)``, chunked, with its own backward.

    With θ = ω x' (m frequencies ω (H, m, d) and log-weights log w (H, m) from
    ``fm.frequencies()``), the features are, per component,

        Positive:  log φ(x) = [θ, −θ] (antithetic) or θ, + ½ log w (− ½ log 2) − c‖x'‖²
        Trig:      φ(x) = [√w cos θ, √w sin θ (, s)]

    Keys are visited in chunks of ``chunk_rows`` rows and A = Σ_s φ(k_s) [v_s, 1]ᵀ
    (B, H, M, dv+1) accumulates; for positive maps with φ(k) = exp(log φ(k) − c), c (B, H, 1, M)
    the running per-feature max over valid keys (row j of A is rescaled by exp(c_old − c_new)
    when it grows), and A's rows are then normalised to [Â_j, 1] with log Z_j kept. Then the
    queries: positive maps weight the rows by p_tj = exp(a_tj − max_j a_tj) (the module
    docstring; the ‖q'‖² term of log φ(q) is a per-row constant, so it cancels and is never
    computed); signed maps take [num, den] = φ(q) A and floor den. Backward recomputes the
    features chunk by chunk. Computation is in float32 (float64 for float64 inputs), autocast
    off; the output has the autocast dtype under autocast, else the inputs' promoted dtype.
    Gradients reach q, k, v and, through ω and log w, the family's learned parameters (first
    order only).

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
        smoothing=0.0 if comp.positive else comp.smoothing,
        den_floor=0.0 if comp.positive else comp.floor,
    )
    return _FusedFeatureAttention.apply(
        q, k, v, omega, log_w, key_valid, recipe, eps, chunk_rows, _out_dtype(q, k, v)
    )


class _FusedFeatureAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, omega, log_w, key_valid, recipe, eps, chunk_rows, out_dtype):
        with torch.autocast(q.device.type, enabled=False):
            forward = _positive_forward if recipe.positive else _signed_forward
            return forward(
                ctx, q, k, v, omega, log_w, key_valid, recipe, eps, chunk_rows, out_dtype
            )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        with torch.autocast(grad_out.device.type, enabled=False):
            backward = _positive_backward if ctx.recipe.positive else _signed_backward
            return backward(ctx, grad_out)


def _rows(x: Tensor, width: int, chunk_rows: int | None) -> int:
    if chunk_rows is not None:
        return max(1, chunk_rows)
    per_row = x.shape[0] * x.shape[1] * width
    return max(64, CHUNK_ELEMENTS.get(x.device.type, CHUNK_ELEMENTS["cpu"]) // per_row)


def _feature_params(
    omega: Tensor, log_w: Tensor, r: _Recipe, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """ω (H, m, d), log w (H, m) -> scaled ωᵀ (H, d, m) and a per-feature term (H, 1, M):
    the log-space offset ½ log w (− ½ log 2) for Positive, the factor √w for Trig (without
    the smoothing column)."""
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
    """x (B, H, c, d) -> (B, H, c, M): log φ before its shift (Positive) or φ (Trig, with the
    smoothing column last when s > 0).

    Queries skip the −c‖x'‖² term of Positive maps (it cancels); invalid keys get
    log φ = −inf (Positive) or φ = 0 (Trig).
    """
    theta = x @ w_t  # (B, H, c, m)
    invalid = None if key_valid is None else ~key_valid[:, None, :, None]  # (B, 1, c, 1)
    m = theta.shape[-1]
    if not r.positive:
        phi = theta.new_empty((*theta.shape[:-1], 2 * m + (1 if r.smoothing else 0)))
        torch.cos(theta, out=phi[..., :m])
        torch.sin(theta, out=phi[..., m : 2 * m])
        phi[..., : 2 * m].mul_(per_feature)
        if r.smoothing:
            phi[..., 2 * m :] = r.smoothing
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


def _output_buffers(q: Tensor, dv: int, ct: torch.dtype, out_dtype: torch.dtype):
    b, h, t = q.shape[:3]
    out = q.new_empty((b, h, t, dv), dtype=out_dtype)
    out_ct = out if out_dtype == ct else q.new_empty((b, h, t, dv), dtype=ct)
    return out, out_ct


def _positive_forward(ctx, q, k, v, omega, log_w, key_valid, r, eps, chunk_rows, out_dtype):
    ct = torch.promote_types(q.dtype, torch.float32)  # compute dtype
    (b, h, t, _), s, dv = q.shape, k.shape[2], v.shape[-1]
    w_t, per_feature = _feature_params(omega, log_w, r, ct)
    m_feat = per_feature.shape[-1]
    acc = q.new_zeros((b, h, m_feat, dv + 1), dtype=ct)  # Σ_s φ(k_s) [v_s, 1]ᵀ, shifted by c
    c = q.new_full((b, h, 1, m_feat), SHIFT_FLOOR, dtype=ct)  # per-feature key shift
    step = _rows(k, m_feat, chunk_rows)
    for a in range(0, s, step):
        rows = slice(a, a + step)
        valid = None if key_valid is None else key_valid[:, rows]
        phi = _chunk_features(k[:, :, rows].to(ct), w_t, per_feature, r, valid, key=True)
        new_c = torch.maximum(c, phi.amax(-2, keepdim=True))
        acc.mul_((c - new_c).exp_().transpose(-2, -1))
        c = new_c
        phi.sub_(c).exp_()
        v_aug = F.pad(v[:, :, rows].to(ct), (0, 1), value=1.0)  # (B, H, c, dv + 1): [v_s, 1]
        _add_matmul_(acc, phi.transpose(-2, -1), v_aug)
    z = acc[..., dv:].clamp_min(torch.finfo(ct).tiny)  # (B, H, M, 1): Z_j (≥ 1, or 0 → tiny)
    acc.div_(z)  # rows [Â_j, 1]
    log_z = z.log_().transpose(-2, -1).add_(c)  # (B, H, 1, M): c_j + log Z_j
    out, out_ct = _output_buffers(q, dv, ct, out_dtype)
    q_shift = q.new_empty((b, h, t, 1), dtype=ct)
    den = q.new_empty((b, h, t, 1), dtype=ct)
    step = _rows(q, m_feat, chunk_rows)
    for a in range(0, t, step):
        rows = slice(a, a + step)
        p = _chunk_features(q[:, :, rows].to(ct), w_t, per_feature, r, None, key=False)
        p.add_(log_z)  # a_tj
        row_max = p.amax(-1, keepdim=True).clamp_min_(SHIFT_FLOOR)  # (B, H, c, 1)
        q_shift[:, :, rows] = row_max
        p.sub_(row_max).exp_()
        num_den = p @ acc  # (B, H, c, dv + 1); den ≥ 1 unless every key is padding
        den[:, :, rows] = num_den[..., dv:]
        torch.div(num_den[..., :dv], num_den[..., dv:].clamp_min(eps), out=out_ct[:, :, rows])
    if out_ct is not out:
        out.copy_(out_ct)
    ctx.save_for_backward(q, k, v, omega, log_w, key_valid, acc, c, log_z, q_shift, den, out_ct)
    ctx.recipe, ctx.eps, ctx.chunk_rows = r, eps, chunk_rows
    return out


def _signed_forward(ctx, q, k, v, omega, log_w, key_valid, r, eps, chunk_rows, out_dtype):
    ct = torch.promote_types(q.dtype, torch.float32)  # compute dtype
    (b, h, t, _), s, dv = q.shape, k.shape[2], v.shape[-1]
    w_t, per_feature = _feature_params(omega, log_w, r, ct)
    m_feat = per_feature.shape[-1] + (1 if r.smoothing else 0)
    acc = q.new_zeros((b, h, m_feat, dv + 1), dtype=ct)  # Σ_s φ(k_s) [v_s, 1]ᵀ
    k_norms = q.new_zeros((b, h, 1, 1), dtype=ct)  # Σ_s ‖φ(k_s)‖ over valid keys
    step = _rows(k, m_feat, chunk_rows)
    for a in range(0, s, step):
        rows = slice(a, a + step)
        valid = None if key_valid is None else key_valid[:, rows]
        phi = _chunk_features(k[:, :, rows].to(ct), w_t, per_feature, r, valid, key=True)
        if r.den_floor:
            k_norms += torch.linalg.vector_norm(phi, dim=-1).sum(-1)[..., None, None]
        v_aug = F.pad(v[:, :, rows].to(ct), (0, 1), value=1.0)  # (B, H, c, dv + 1): [v_s, 1]
        _add_matmul_(acc, phi.transpose(-2, -1), v_aug)
    out, out_ct = _output_buffers(q, dv, ct, out_dtype)
    den = q.new_empty((b, h, t, 1), dtype=ct)  # the normaliser used: floored, ≥ eps
    active = torch.empty((b, h, t, 1), dtype=torch.bool, device=q.device)  # den unfloored
    step = _rows(q, m_feat, chunk_rows)
    for a in range(0, t, step):
        rows = slice(a, a + step)
        phi = _chunk_features(q[:, :, rows].to(ct), w_t, per_feature, r, None, key=False)
        num_den = phi @ acc  # (B, H, c, dv + 1)
        raw = num_den[..., dv:]
        floor = torch.linalg.vector_norm(phi, dim=-1, keepdim=True).mul_(k_norms * r.den_floor)
        floor.clamp_min_(eps)
        active[:, :, rows] = raw >= floor
        den[:, :, rows] = torch.maximum(raw, floor)
        torch.div(num_den[..., :dv], den[:, :, rows], out=out_ct[:, :, rows])
    if out_ct is not out:
        out.copy_(out_ct)
    ctx.save_for_backward(q, k, v, omega, log_w, key_valid, acc, den, active, out_ct)
    ctx.recipe, ctx.eps, ctx.chunk_rows = r, eps, chunk_rows
    return out


def _theta_grads(x: Tensor, g_theta: Tensor, w_t: Tensor, g_w_t: Tensor | None) -> Tensor:
    """dL/dx (B, H, c, d) from dL/dθ (B, H, c, m), θ = x @ w_t; accumulates dL/dw_t."""
    if g_w_t is not None:
        g_w_t.add_((x.transpose(-2, -1) @ g_theta).sum(0))
    return g_theta @ w_t.transpose(-2, -1)


def _positive_chain(
    x: Tensor, g_log: Tensor, w_t: Tensor, r: _Recipe, key: bool, g_w_t: Tensor | None
) -> Tensor:
    """Chain rule from dL/dlog φ (B, H, c, M) to dL/dx (B, H, c, d) (and dL/dw_t)."""
    m = w_t.shape[-1]
    g_theta = g_log[..., :m] - g_log[..., m:] if r.antithetic else g_log
    g_x = _theta_grads(x, g_theta, w_t, g_w_t)
    if key:  # through −c‖x'‖²
        g_sq = g_log.sum(-1, keepdim=True).mul_(-2.0 * r.norm_coef * r.scale**2)
        g_x.addcmul_(x, g_sq)
    return g_x


def _param_grads(ctx, omega, log_w, g_w_t, g_per_feature, r, m_feat, m):
    g_omega = (g_w_t.transpose(-2, -1) * r.scale).to(omega.dtype) if g_w_t is not None else None
    g_log_w = None
    if ctx.needs_input_grad[4]:  # both halves of the per-feature term come from the same log w_j
        g_half = g_per_feature[:, :m] + g_per_feature[:, m:] if m_feat != m else g_per_feature
        g_log_w = (0.5 * g_half).to(log_w.dtype)
    return g_omega, g_log_w


def _positive_backward(ctx, grad_out):
    """Gradients of out_t = Σ_j p_tj Â_j / Σ_j p_tj, written with w = p / den ≤ 1:

        dL/dℓ_tj = w_tj (g_t·Â_j − g_t·out_t)                        (queries)
        dL/dλ_sj = q_sj ([v_s, 1]·G_j),  q_sj = e^(λ_sj − c_j) / Z_j   (keys)
        dL/dv_s  = Σ_j q_sj G_j^v,        G_j = Σ_t w_tj [g_t, −g_t·out_t]

    with g_t = dL/dout_t; every factor is bounded, at any input norm.
    """
    q, k, v, omega, log_w, key_valid, acc, c, log_z, q_shift, den, out = ctx.saved_tensors
    r, eps, chunk_rows = ctx.recipe, ctx.eps, ctx.chunk_rows
    need_q, need_k, need_v, need_omega, need_log_w = ctx.needs_input_grad[:5]
    need_params = need_omega or need_log_w
    ct = acc.dtype
    h, t, s, dv = q.shape[1], q.shape[2], k.shape[2], v.shape[-1]
    w_t, per_feature = _feature_params(omega, log_w, r, ct)
    m_feat = per_feature.shape[-1]
    a_hat = acc[..., :dv]  # (B, H, M, dv)
    g_acc = torch.zeros_like(acc)  # G (B, H, M, dv + 1)
    g_w_t = torch.zeros_like(w_t) if need_omega else None
    g_per_feature = q.new_zeros((h, m_feat), dtype=ct)
    g_q = torch.empty_like(q) if need_q else None
    step = _rows(q, m_feat, chunk_rows)
    for a in range(0, t, step):
        rows = slice(a, a + step)
        qc = q[:, :, rows].to(ct)
        g = grad_out[:, :, rows].to(ct)  # (B, H, c, dv)
        g_dot_out = (g * out[:, :, rows]).sum(-1, keepdim=True)  # (B, H, c, 1)
        w = _chunk_features(qc, w_t, per_feature, r, None, key=False)
        w.add_(log_z).sub_(q_shift[:, :, rows]).exp_().div_(den[:, :, rows].clamp_min(eps))
        _add_matmul_(g_acc, w.transpose(-2, -1), torch.cat([g, g_dot_out.neg()], -1))
        if need_q or need_params:
            g_log = (g @ a_hat.transpose(-2, -1)).sub_(g_dot_out).mul_(w)  # (B, H, c, M)
            g_x = _positive_chain(qc, g_log, w_t, r, False, g_w_t)
            if need_q:
                g_q[:, :, rows] = g_x
            g_per_feature.add_(g_log.sum((0, 2)))
    g_k = torch.empty_like(k) if need_k else None
    g_v = torch.empty_like(v) if need_v else None
    log_zc = log_z - c  # (B, H, 1, M): log Z_j
    step = _rows(k, m_feat, chunk_rows)
    for a in range(0, s, step):
        rows = slice(a, a + step)
        kc = k[:, :, rows].to(ct)
        valid = None if key_valid is None else key_valid[:, rows]
        qk = _chunk_features(kc, w_t, per_feature, r, valid, key=True)
        qk.sub_(c).sub_(log_zc).exp_()  # q_sj = e^(λ_sj − c_j) / Z_j
        if need_v:
            g_v[:, :, rows] = qk @ g_acc[..., :dv]
        if need_k or need_params:
            v_aug = F.pad(v[:, :, rows].to(ct), (0, 1), value=1.0)
            g_log = (v_aug @ g_acc.transpose(-2, -1)).mul_(qk)  # (B, H, c, M)
            g_x = _positive_chain(kc, g_log, w_t, r, True, g_w_t)
            if need_k:
                g_k[:, :, rows] = g_x
            g_per_feature.add_(g_log.sum((0, 2)))
    g_omega, g_log_w = _param_grads(
        ctx, omega, log_w, g_w_t, g_per_feature, r, m_feat, w_t.shape[-1]
    )
    return g_q, g_k, g_v, g_omega, g_log_w, None, None, None, None, None


def _trig_chain(
    x: Tensor, phi: Tensor, grad_phi: Tensor, w_t: Tensor, g_w_t: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Chain rule through φ = √w [cos θ, sin θ (, s)] (``grad_phi`` is overwritten).

    Returns dL/dx (B, H, c, d) and Σ_{b,rows} dL/dφ ⊙ φ over the 2m random columns (H, 2m),
    which is dL/d(½ log w) per feature; the constant smoothing column has no gradient.
    """
    m = w_t.shape[-1]
    # dθ = dφ_sin ⊙ φ_cos − dφ_cos ⊙ φ_sin
    g_theta = grad_phi[..., m : 2 * m] * phi[..., :m] - grad_phi[..., :m] * phi[..., m : 2 * m]
    g_weight = grad_phi[..., : 2 * m].mul_(phi[..., : 2 * m]).sum((0, 2))
    return _theta_grads(x, g_theta, w_t, g_w_t), g_weight


def _signed_backward(ctx, grad_out):
    """out = num / den with den = max(φ(q)·Σφ(k), floor): where the floor is active, den is a
    constant of the inputs (‖φ‖ is, for Trig maps), so only the numerator carries gradient."""
    q, k, v, omega, log_w, key_valid, acc, den, active, out = ctx.saved_tensors
    r, chunk_rows = ctx.recipe, ctx.chunk_rows
    need_q, need_k, need_v, need_omega, need_log_w = ctx.needs_input_grad[:5]
    need_params = need_omega or need_log_w
    ct = acc.dtype
    h, t, s, dv = q.shape[1], q.shape[2], k.shape[2], v.shape[-1]
    w_t, per_feature = _feature_params(omega, log_w, r, ct)
    m_feat = acc.shape[-2]
    g_acc = torch.zeros_like(acc)  # dL/dA, A = Σ_s φ(k_s) [v_s, 1]ᵀ
    g_w_t = torch.zeros_like(w_t) if need_omega else None
    g_per_feature = q.new_zeros((h, per_feature.shape[-1]), dtype=ct)
    g_q = torch.empty_like(q) if need_q else None
    step = _rows(q, m_feat, chunk_rows)
    for a in range(0, t, step):
        rows = slice(a, a + step)
        qc = q[:, :, rows].to(ct)
        g_num = grad_out[:, :, rows].to(ct) / den[:, :, rows]  # (B, H, c, dv)
        g_den = (g_num * out[:, :, rows]).sum(-1, keepdim=True).neg_().mul_(active[:, :, rows])
        g_num_den = torch.cat([g_num, g_den], -1)  # (B, H, c, dv + 1)
        phi = _chunk_features(qc, w_t, per_feature, r, None, key=False)
        _add_matmul_(g_acc, phi.transpose(-2, -1), g_num_den)
        if need_q or need_params:
            g_phi = g_num_den @ acc.transpose(-2, -1)  # (B, H, c, M)
            g_x, g_feat = _trig_chain(qc, phi, g_phi, w_t, g_w_t)
            if need_q:
                g_q[:, :, rows] = g_x
            g_per_feature.add_(g_feat)
    g_k = torch.empty_like(k) if need_k else None
    g_v = torch.empty_like(v) if need_v else None
    step = _rows(k, m_feat, chunk_rows)
    for a in range(0, s, step):
        rows = slice(a, a + step)
        kc = k[:, :, rows].to(ct)
        valid = None if key_valid is None else key_valid[:, rows]
        phi = _chunk_features(kc, w_t, per_feature, r, valid, key=True)
        if need_v:
            g_v[:, :, rows] = phi @ g_acc[..., :dv]
        if need_k or need_params:
            v_aug = F.pad(v[:, :, rows].to(ct), (0, 1), value=1.0)
            g_phi = v_aug @ g_acc.transpose(-2, -1)  # (B, H, c, M)
            g_x, g_feat = _trig_chain(kc, phi, g_phi, w_t, g_w_t)
            if need_k:
                g_k[:, :, rows] = g_x
            g_per_feature.add_(g_feat)
    g_omega, g_log_w = _param_grads(
        ctx, omega, log_w, g_w_t, g_per_feature, r, per_feature.shape[-1], w_t.shape[-1]
    )
    return g_q, g_k, g_v, g_omega, g_log_w, None, None, None, None, None
