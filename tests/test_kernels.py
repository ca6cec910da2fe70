"""Math tier: every random-feature kernel against its exact kernel (parametrised on KERNELS)."""

import pytest
import torch

from lk_study.kernels import KERNELS, RandomFeatureMap, build_kernel, family_params

H, D = 2, 8
RANDOM = [n for n, cls in KERNELS.items() if issubclass(cls, RandomFeatureMap)]
LEARNED = [n for n in RANDOM if any(True for _ in build_kernel(n, D, H, 16).parameters())]


def relative_error(name: str, m: int, x, y, seed: int) -> float:
    fm = build_kernel(name, head_dim=D, num_heads=H, num_features=m)
    fm.resample(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        est = fm(x) @ fm(y).transpose(-2, -1)
        exact = fm.exact_kernel(x, y)
    return ((est - exact).abs().mean() / exact.abs().mean()).item()


@pytest.mark.parametrize("name", RANDOM)
def test_estimate_converges_like_one_over_sqrt_m(name):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(1, H, 6, D, generator=g) * 0.7, torch.randn(1, H, 5, D, generator=g) * 0.7
    errs = {
        m: sum(relative_error(name, m, x, y, s) for s in range(4)) / 4 for m in (64, 1024, 16384)
    }
    assert errs[16384] < 0.03
    # 16x more features -> about 4x less error (allow 2.5x for noise / orthogonality gains)
    assert errs[1024] < errs[64] / 2.5
    assert errs[16384] < errs[1024] / 2.5


@pytest.mark.parametrize("name", RANDOM)
def test_same_generator_same_draw(name):
    a = build_kernel(name, head_dim=D, num_heads=H, num_features=32)
    b = build_kernel(name, head_dim=D, num_heads=H, num_features=32)
    a.resample(torch.Generator().manual_seed(5))
    b.resample(torch.Generator().manual_seed(5))
    x = torch.randn(2, H, 4, D)
    assert torch.equal(a(x), b(x))
    b.resample(torch.Generator().manual_seed(6))
    assert not torch.equal(a(x), b(x))


@pytest.mark.parametrize("name", RANDOM)
def test_forward_is_deterministic(name):
    fm = build_kernel(name, head_dim=D, num_heads=H, num_features=32)
    x = torch.randn(2, H, 4, D)
    assert torch.equal(fm(x), fm(x))


def test_random_kernels_are_found():
    assert {"rks", "prf", "gmm_rks", "gmm_prf"} <= set(RANDOM)


def test_rks_targets_rbf_and_elu_is_its_own_kernel():
    x, y = torch.randn(1, H, 3, D), torch.randn(1, H, 4, D)
    rks = build_kernel("rks", head_dim=D, num_heads=H, num_features=16)
    rbf = torch.exp(-0.5 * torch.cdist(x / D**0.25, y / D**0.25) ** 2)
    assert torch.allclose(rks.exact_kernel(x, y), rbf, atol=1e-6)
    elu = build_kernel("elu", head_dim=D, num_heads=H, num_features=99)
    assert elu.num_features == D and (elu(x) > 0).all()
    assert torch.allclose(elu.exact_kernel(x, y), elu(x) @ elu(y).transpose(-2, -1))


def test_prf_targets_softmax_kernel():
    fm = build_kernel("prf", head_dim=D, num_heads=H, num_features=16)
    x, y = torch.randn(1, H, 3, D), torch.randn(1, H, 4, D)
    assert torch.allclose(fm.exact_kernel(x, y), torch.exp(x @ y.transpose(-2, -1) / D**0.5))


@pytest.mark.parametrize("name", ["gmm_prf", "gmm_rks"])
def test_gmm_at_init_is_rbf(name):
    fm = build_kernel(name, head_dim=D, num_heads=H, num_features=16, num_components=1)
    x, y = torch.randn(1, H, 3, D), torch.randn(1, H, 4, D)
    xs, ys = x / D**0.25, y / D**0.25
    rbf = torch.exp(-0.5 * torch.cdist(xs, ys) ** 2)
    assert torch.allclose(fm.exact_kernel(x, y), rbf, atol=1e-5)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_gmm_learned_kernel_matches_estimate_away_from_init(covariance):
    fm = build_kernel(
        "gmm_prf",
        head_dim=D,
        num_heads=H,
        num_features=20000,
        num_components=2,
        covariance=covariance,
    )
    with torch.no_grad():
        fm.mu.normal_(0, 0.3)
        fm.logits.copy_(torch.tensor([[0.0, 1.0], [2.0, -1.0]]))
        fm.log_scale.normal_(-0.3, 0.1)
        if fm.lower is not None:
            fm.lower.normal_(0, 0.1)
    x, y = torch.randn(1, H, 3, D) * 0.5, torch.randn(1, H, 4, D) * 0.5
    with torch.no_grad():
        est = fm(x) @ fm(y).transpose(-2, -1)
        exact = fm.exact_kernel(x, y)
    assert ((est - exact).abs() / exact).max() < 0.1


def test_prf_rows_orthogonal_within_blocks():
    fm = build_kernel("prf", head_dim=D, num_heads=H, num_features=2 * D)
    w = fm.omega[0]  # (D, D): one full block
    gram = w @ w.T
    off = gram - torch.diag(torch.diagonal(gram))
    assert off.abs().max() < 1e-4 * gram.diagonal().max()
    assert (w.norm(dim=-1) > 0).all()


def test_learned_families_are_found():
    assert {"gmm_prf", "gmm_rks"} <= set(LEARNED)


@pytest.mark.parametrize("name", LEARNED)
def test_gradients_reach_learned_parameters(name):
    extra = {"num_components": 2} if "num_components" in family_params(name) else {}
    fm = build_kernel(name, head_dim=D, num_heads=H, num_features=16, **extra)
    x, y = torch.randn(1, H, 3, D), torch.randn(1, H, 4, D)
    (fm(x) @ fm(y).transpose(-2, -1)).sum().backward()
    for pname, p in fm.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_unknown_kernel_and_parameter_are_rejected():
    with pytest.raises(ValueError, match="valid kernels: softmax, elu, rks, prf"):
        build_kernel("gmm", head_dim=D, num_heads=H)
    with pytest.raises(ValueError, match="valid: orthogonal"):
        build_kernel("prf", head_dim=D, num_heads=H, num_components=2)
    with pytest.raises(ValueError, match="multiple of 2"):
        build_kernel("prf", head_dim=D, num_heads=H, num_features=7)
