"""Math tier: the fused, chunked random-feature attention equals the plain autograd composition.

``kernel_attention`` routes every random-feature family to ``fused_feature_attention`` (custom
backward, features recomputed chunk by chunk); ``reference_attention`` is the readable
reference. Values and gradients (q, k, v and every learned parameter) must agree, over several
chunks, with padding, in float64, at norms where the signed maps' floor is active and where it
is not; ``gradcheck`` checks the hand-written backward against finite differences.
"""

import pytest
import torch

from lk_study.attention import (
    fused_feature_attention,
    kernel_attention,
    reference_attention,
    uses_fused_path,
)
from lk_study.kernels import KERNELS, RandomFeatureMap, build_kernel, family_params

B, H, T, S, D, DV = 2, 3, 37, 29, 8, 5
RANDOM = [n for n, cls in KERNELS.items() if issubclass(cls, RandomFeatureMap)]
# every random family, plus the signed ones with the authors' smoothing feature
VARIANTS = [(n, {}) for n in RANDOM] + [
    (n, {"smoothing": 0.7}) for n in RANDOM if "smoothing" in family_params(n)
]
IDS = [f"{n}-{'-'.join(f'{k}{v}' for k, v in kw.items()) or 'default'}" for n, kw in VARIANTS]


def perturbed_kernel(name: str, **family) -> RandomFeatureMap:
    """A float64 kernel away from its initialisation, so every parameter matters."""
    if "num_components" in family_params(name):
        family["num_components"] = 2
    fm = build_kernel(name, head_dim=D, num_heads=H, num_features=32, **family).double()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in fm.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return fm


def test_every_random_family_takes_the_fused_path():
    assert RANDOM and all(uses_fused_path(build_kernel(n, D, H, 16)) for n in RANDOM)
    assert not uses_fused_path(build_kernel("elu", D, H, 16))


@pytest.mark.parametrize("chunk_rows", [None, 7])
@pytest.mark.parametrize(("name", "family"), VARIANTS, ids=IDS)
def test_fused_matches_reference_values_and_gradients(name, family, chunk_rows):
    fm = perturbed_kernel(name, **family)
    g = torch.Generator().manual_seed(0)
    valid = torch.ones(B, S, dtype=torch.bool)
    valid[1, 20:] = False
    floored = []
    for norm in (0.3, 2.0):  # at 2.0 (‖x'‖ ≈ 3.4) the signed maps' floor is active on most rows
        q = (norm * torch.randn(B, H, T, D, generator=g, dtype=torch.float64)).requires_grad_()
        k = (norm * torch.randn(B, H, S, D, generator=g, dtype=torch.float64)).requires_grad_()
        v = torch.randn(B, H, S, DV, generator=g, dtype=torch.float64).requires_grad_()
        grad_out = torch.randn(B, H, T, DV, generator=g, dtype=torch.float64)
        inputs = [q, k, v, *fm.parameters()]
        for key_valid in (None, valid):
            ref = reference_attention(q, k, v, fm, key_valid)
            out = fused_feature_attention(q, k, v, fm, key_valid, chunk_rows=chunk_rows)
            ref_grads = torch.autograd.grad(ref, inputs, grad_out)
            grads = torch.autograd.grad(out, inputs, grad_out)
            assert (out - ref).abs().max() <= 1e-10 * ref.abs().max()
            for got, want in zip(grads, ref_grads, strict=True):
                assert (got - want).abs().max() <= 1e-9 * want.abs().max()
        if not fm.positive and not family:
            phi_q, phi_k = fm(q), fm(k)
            den = phi_q @ phi_k.sum(-2).unsqueeze(-1)
            floor = (
                fm.den_floor
                * phi_q.norm(dim=-1, keepdim=True)
                * phi_k.norm(dim=-1).sum(-1)[..., None, None]
            )
            floored.append((den < floor).double().mean().item())
    if floored:  # both regimes were exercised
        assert floored[0] < 0.5 and floored[1] > 0.5, floored


@pytest.mark.parametrize(("name", "family"), VARIANTS, ids=IDS)
def test_fused_backward_passes_gradcheck(name, family):
    fm = perturbed_kernel(name, **family)
    g = torch.Generator().manual_seed(1)
    q, k = (2 * torch.randn(1, H, n, D, generator=g, dtype=torch.float64) for n in (6, 5))
    v = torch.randn(1, H, 5, 3, generator=g, dtype=torch.float64)
    valid = torch.tensor([[True, True, True, True, False]])
    params = dict(fm.named_parameters())  # flat names: the families own their parameters
    for pname in params:
        delattr(fm, pname)  # replaced by plain tensors below, so gradcheck can perturb them

    def f(q, k, v, *values):
        for pname, value in zip(params, values, strict=True):
            setattr(fm, pname, value)
        return fused_feature_attention(q, k, v, fm, valid, chunk_rows=2)

    inputs = [x.detach().clone().requires_grad_() for x in (q, k, v, *params.values())]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", ["prf", "gmm_rks"])
def test_fused_padding_and_all_masked_heads(name):
    fm = build_kernel(name, head_dim=D, num_heads=H, num_features=32)
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    k = k * 30  # large keys
    valid = torch.zeros(B, T, dtype=torch.bool)
    valid[0, :5] = True  # batch element 1 has no valid key at all
    out = fused_feature_attention(q, k, v, fm, valid, chunk_rows=3)
    assert torch.isfinite(out).all() and (out[1] == 0).all()
    ref = fused_feature_attention(q, k[:, :, :5], v[:, :, :5], fm)
    assert (out[0] - ref[0]).abs().max() <= 1e-5 * ref[0].abs().max()


def test_fused_under_bf16_autocast_returns_bf16_and_matches():
    fm = build_kernel("gmm_prf", head_dim=D, num_heads=H, num_features=32)
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = kernel_attention(q, k, v, fm)
    assert out.dtype == torch.bfloat16
    ref = reference_attention(q, k, v, fm)
    assert torch.allclose(out.float(), ref, atol=2e-2, rtol=2e-2)  # bf16 output rounding
