"""Math tier: linear attention equals the materialised normalised kernel attention."""

import pytest
import torch

from lk_study.attention import kernel_attention, materialised_attention
from lk_study.kernels import KERNELS, build_kernel

B, H, T, D = 2, 3, 9, 8
POSITIVE_OR_EXACT = ["softmax", "elu", "prf", "gmm_prf", "fastfood_prf", "generator_prf"]


@pytest.mark.parametrize("name", POSITIVE_OR_EXACT)
def test_linear_equals_materialised(name):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    fm = build_kernel(name, head_dim=D, num_heads=H, num_features=32)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, 6:] = False
    for kv in (None, valid):
        out = kernel_attention(q, k, v, fm, kv)
        ref = materialised_attention(q, k, v, fm, kv)
        assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(KERNELS))
def test_padding_keys_do_not_change_real_outputs(name):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, H, T, D, generator=g) for _ in range(3))
    fm = build_kernel(name, head_dim=D, num_heads=H, num_features=32)
    valid = torch.ones(1, T + 4, dtype=torch.bool)
    valid[:, T:] = False
    junk = torch.randn(1, H, 4, D, generator=g) * 10  # large padding keys must not matter
    k_pad, v_pad = torch.cat([k, junk], 2), torch.cat([v, junk], 2)
    out = kernel_attention(q, k, v, fm)
    out_pad = kernel_attention(q, k_pad, v_pad, fm, valid)
    assert torch.allclose(out, out_pad, atol=1e-5)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(KERNELS))
def test_no_nan_for_large_inputs(name, autocast):
    """Norms up to 30, padding: finite output and gradients (inputs and kernel parameters)."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, H, T, D, generator=g) for _ in range(3))
    norms = torch.rand(2, H, T, 1, generator=g) * 30
    norms[0] = 30  # the first batch element entirely at the largest norm
    q = (q / q.norm(dim=-1, keepdim=True) * norms).requires_grad_()
    k = (k / k.norm(dim=-1, keepdim=True) * norms.flip(2)).requires_grad_()
    v = v.requires_grad_()
    valid = torch.ones(2, T, dtype=torch.bool)
    valid[1, -3:] = False
    fm = build_kernel(name, head_dim=D, num_heads=H, num_features=32)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = kernel_attention(q, k, v, fm, valid)
    assert out.dtype == (torch.bfloat16 if autocast else torch.float32)
    (out.float() * torch.randn(out.shape, generator=g)).sum().backward()
    grads = {"q": q.grad, "k": k.grad, "v": v.grad}
    grads |= {pname: p.grad for pname, p in fm.named_parameters()}
    assert torch.isfinite(out).all()
    for gname, grad in grads.items():
        assert grad is not None and torch.isfinite(grad).all(), gname
