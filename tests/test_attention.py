"""Math tier: attention is a weighted average of the values, for every registry kernel.

Oracles: the materialised attention matrix (O(T·S)) and the bound itself. Positive maps (and
softmax) must return an exact convex combination: over v ≡ 1 the output is 1. Signed maps must
satisfy the stated bound |out_te| ≤ max_s |v_se| / c (lk_study.attention). At norms up to 60,
fp32 and bf16 autocast, fused and reference paths, with and without padding.
"""

import pytest
import torch

from lk_study.attention import kernel_attention, materialised_attention, reference_attention
from lk_study.kernels import KERNELS, build_kernel
from lk_study.models.encoder import Encoder

B, H, T, D = 2, 3, 9, 8
NORMS = (1, 4, 8, 16, 30, 60)


def is_convex(name: str) -> bool:
    """Positive feature maps and exact softmax: the output is a convex combination."""
    fm = build_kernel(name, head_dim=D, num_heads=H, num_features=16)
    return fm.positive or fm.exact_attention


CONVEX = [n for n in KERNELS if is_convex(n)]
SIGNED = [n for n in KERNELS if not is_convex(n)]


def test_the_registry_splits_into_convex_and_signed_kernels():
    assert {"softmax", "elu", "prf", "gmm_prf", "fastfood_prf", "generator_prf"} <= set(CONVEX)
    assert {"rks", "gmm_rks", "fastfood_rks", "generator_rks"} <= set(SIGNED)


@pytest.mark.parametrize("name", list(KERNELS))
def test_linear_equals_materialised(name):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    fm = build_kernel(name, head_dim=D, num_heads=H, num_features=32)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, 6:] = False
    for scale in (1.0, 3.0):  # at 3 the signed maps' floor is active
        for kv in (None, valid):
            out = kernel_attention(scale * q, scale * k, v, fm, kv)
            ref = materialised_attention(scale * q, scale * k, v, fm, kv)
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


def at_norm(x: torch.Tensor, norm: float) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True) * norm


def check_weighted_average(name, fm, q, k, v, out, valid, bf16):
    """Convex kernels over v ≡ 1 give 1; signed ones obey |out_te| <= max_s |v_se| / c."""
    if is_convex(name):
        tol = 1e-2 if bf16 else 1e-3
        assert (out - 1).abs().max() <= tol, (out - 1).abs().max()
    else:
        vmax = v.masked_fill(~valid[:, None, :, None], 0).abs().amax(-2, keepdim=True)
        bound = vmax / fm.den_floor * (1 + (1e-2 if bf16 else 1e-5))
        assert (out.abs() <= bound).all(), (out.abs() / vmax).max()


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(KERNELS))
def test_output_is_a_weighted_average_at_every_norm(name, autocast):
    """Norms 1..60, both paths, padding: the bound holds, no NaN/Inf forward or backward."""
    fm = build_kernel(name, head_dim=16, num_heads=2, num_features=32)
    paths = {"fused": kernel_attention}
    if not fm.exact_attention:
        paths["reference"] = reference_attention
    g = torch.Generator().manual_seed(2)
    valid = torch.ones(2, 24, dtype=torch.bool)
    valid[1, -5:] = False
    for norm in NORMS:
        q = at_norm(torch.randn(2, 2, 24, 16, generator=g), norm).requires_grad_()
        k = at_norm(torch.randn(2, 2, 24, 16, generator=g), norm).requires_grad_()
        for path, attend in paths.items():
            for key_valid in (None, valid):
                kv = torch.ones(2, 24, dtype=torch.bool) if key_valid is None else key_valid
                v = torch.ones(2, 2, 24, 4) if is_convex(name) else torch.randn(2, 2, 24, 4)
                v.requires_grad_()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    out = attend(q, k, v, fm, key_valid)
                assert out.dtype == (torch.bfloat16 if autocast else torch.float32), path
                out = out.float()
                assert torch.isfinite(out).all(), (path, norm)
                check_weighted_average(name, fm, q, k, v, out, kv, autocast)
                grads = torch.autograd.grad(
                    (out * torch.randn(out.shape, generator=g)).sum(),
                    [q, k, v, *fm.parameters()],
                    allow_unused=True,
                )
                for grad in grads:
                    assert grad is None or torch.isfinite(grad).all(), (path, norm)


@pytest.mark.parametrize("name", list(KERNELS))
def test_encoder_attention_at_initialisation_is_a_weighted_average(name):
    """The first layer of a real encoder at initialisation (d_model 256, T = 1000)."""
    torch.manual_seed(0)
    make = lambda: build_kernel(name, head_dim=64, num_heads=4, num_features=256)  # noqa: E731
    enc = Encoder(257, 1000, 256, 1, 4, 1024, 0.0, make).eval()
    ids = torch.randint(1, 257, (1, 1000))
    ids[0, 900:] = 0  # padding
    with torch.no_grad():
        x = torch.cat([enc.cls.expand(1, 1, -1), enc.embed(ids)], 1) + enc.pos[:1001]
        layer = enc.layers[0]
        qkv = layer.attn.qkv(layer.ln1(x)).view(1, 1001, 3, 4, 64)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        valid = torch.cat([torch.ones(1, 1, dtype=torch.bool), ids != 0], 1)
        fm = layer.attn.kernel
        v = torch.ones_like(v) if is_convex(name) else v
        out = kernel_attention(q, k, v, fm, valid)
        check_weighted_average(name, fm, q, k, v, out, valid, bf16=False)
        hidden = enc(ids)
    assert torch.isfinite(hidden).all() and hidden.abs().max() < 100
