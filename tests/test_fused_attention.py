"""Math tier: the fused, chunked random-feature attention equals the plain autograd composition.

``kernel_attention`` routes every random-feature family to ``fused_feature_attention`` (custom
backward, features recomputed chunk by chunk); ``linear_attention(*feature_pair(...))`` is the
readable reference. Values and gradients (q, k, v and every learned parameter) must agree, over
several chunks, with padding, in float64.
"""

import pytest
import torch

from lk_study.attention import (
    feature_pair,
    fused_feature_attention,
    kernel_attention,
    linear_attention,
    uses_fused_path,
)
from lk_study.kernels import KERNELS, RandomFeatureMap, build_kernel, family_params

B, H, T, S, D, DV = 2, 3, 37, 29, 8, 5
RANDOM = [n for n, cls in KERNELS.items() if issubclass(cls, RandomFeatureMap)]


def perturbed_kernel(name: str) -> RandomFeatureMap:
    """A float64 kernel away from its initialisation, so every parameter matters."""
    extra = {"num_components": 2} if "num_components" in family_params(name) else {}
    fm = build_kernel(name, head_dim=D, num_heads=H, num_features=32, **extra).double()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in fm.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return fm


def test_every_random_family_takes_the_fused_path():
    assert RANDOM and all(uses_fused_path(build_kernel(n, D, H, 16)) for n in RANDOM)
    assert not uses_fused_path(build_kernel("elu", D, H, 16))


@pytest.mark.parametrize("chunk_rows", [None, 4, 7])
@pytest.mark.parametrize("name", RANDOM)
def test_fused_matches_reference_values_and_gradients(name, chunk_rows):
    fm = perturbed_kernel(name)
    g = torch.Generator().manual_seed(0)
    q = (1.5 * torch.randn(B, H, T, D, generator=g, dtype=torch.float64)).requires_grad_()
    k = (1.5 * torch.randn(B, H, S, D, generator=g, dtype=torch.float64)).requires_grad_()
    v = torch.randn(B, H, S, DV, generator=g, dtype=torch.float64).requires_grad_()
    grad_out = torch.randn(B, H, T, DV, generator=g, dtype=torch.float64)
    valid = torch.ones(B, S, dtype=torch.bool)
    valid[1, 20:] = False
    inputs = [q, k, v, *fm.parameters()]
    for key_valid in (None, valid):
        ref = linear_attention(*feature_pair(q, k, fm, key_valid), v)
        out = fused_feature_attention(q, k, v, fm, key_valid, chunk_rows=chunk_rows)
        ref_grads = torch.autograd.grad(ref, inputs, grad_out)
        grads = torch.autograd.grad(out, inputs, grad_out)
        scale = ref.abs().max()  # trig normalisers can be small: compare relative to the output
        assert (out - ref).abs().max() <= 1e-10 * scale
        for got, want in zip(grads, ref_grads, strict=True):
            assert (got - want).abs().max() <= 1e-9 * want.abs().max()


@pytest.mark.parametrize("name", ["prf", "gmm_rks"])
def test_fused_padding_and_all_masked_heads(name):
    fm = build_kernel(name, head_dim=D, num_heads=H, num_features=32)
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    k = k * 30  # large keys: stabilisation must keep everything finite
    valid = torch.zeros(B, T, dtype=torch.bool)
    valid[0, :5] = True  # batch element 1 has no valid key at all
    out = fused_feature_attention(q, k, v, fm, valid, chunk_rows=3)
    assert torch.isfinite(out).all() and (out[1] == 0).all()
    ref = fused_feature_attention(q, k[:, :, :5], v[:, :, :5], fm)
    assert (out[0] - ref[0]).abs().max() <= 1e-4 * ref[0].abs().max()  # trig: den may be small


def test_fused_under_bf16_autocast_returns_bf16_and_matches():
    fm = build_kernel("gmm_prf", head_dim=D, num_heads=H, num_features=32)
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = kernel_attention(q, k, v, fm)
    assert out.dtype == torch.bfloat16
    ref = linear_attention(*feature_pair(q, k, fm), v)
    assert torch.allclose(out.float(), ref, atol=2e-2, rtol=2e-2)  # bf16 output rounding
