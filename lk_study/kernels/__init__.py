"""Kernel registry: name -> feature-map class (one file per family).

Adding a kernel = one file + one line here; tests parametrise over ``KERNELS``.
"""

from __future__ import annotations

import inspect
from typing import Any

from lk_study.kernels.base import FeatureMap, RandomFeatureMap
from lk_study.kernels.elu import ELU
from lk_study.kernels.fastfood import FastFoodPRF, FastFoodRKS
from lk_study.kernels.generator import GeneratorPRF, GeneratorRKS
from lk_study.kernels.gmm import GMMPRF, GMMRKS
from lk_study.kernels.prf import PRF, RKS
from lk_study.kernels.softmax import Softmax

KERNELS: dict[str, type[FeatureMap]] = {
    "softmax": Softmax,
    "elu": ELU,
    "rks": RKS,
    "prf": PRF,
    "gmm_rks": GMMRKS,
    "gmm_prf": GMMPRF,
    "fastfood_rks": FastFoodRKS,
    "fastfood_prf": FastFoodPRF,
    "generator_rks": GeneratorRKS,
    "generator_prf": GeneratorPRF,
}


def family_params(name: str) -> tuple[str, ...]:
    """The keyword parameters a family accepts beyond head_dim, num_heads, num_features."""
    cls = kernel_class(name)
    params = inspect.signature(cls.__init__).parameters
    return tuple(p for p in params if p not in ("self", "head_dim", "num_heads", "num_features"))


def kernel_class(name: str) -> type[FeatureMap]:
    try:
        return KERNELS[name]
    except KeyError:
        raise ValueError(f"unknown kernel {name!r}; valid kernels: {', '.join(KERNELS)}") from None


def build_kernel(
    name: str, head_dim: int, num_heads: int, num_features: int = 256, **family: object
) -> FeatureMap:
    """Build a registry entry.

    Unknown names or parameters raise ValueError listing the valid ones.
    """
    cls = kernel_class(name)
    valid = family_params(name)
    unknown = sorted(set(family) - set(valid))
    if unknown:
        raise ValueError(
            f"kernel {name!r} does not take {', '.join(unknown)}; "
            f"valid: {', '.join(valid) or 'none'}"
        )
    return cls(head_dim, num_heads, num_features, **family)


def kernel_from_config(kernel: Any, head_dim: int, num_heads: int) -> FeatureMap:
    """Build the kernel a ``KernelConfig`` (lk_study.config) describes: its name,
    num_features and every family parameter the family takes, each a ``KernelConfig`` field of
    the same name (a family parameter the config lacks is an error, never dropped).
    Constraints across keys (e.g. GMM num_components <= num_features / 2) raise ValueError."""
    params = family_params(kernel.name)
    missing = [p for p in params if not hasattr(kernel, p)]
    if missing:
        raise ValueError(
            f"kernel {kernel.name!r} takes {', '.join(missing)}, which the kernel config "
            f"({type(kernel).__name__}) has no key for; add the field to KernelConfig"
        )
    family = {p: getattr(kernel, p) for p in params}
    return build_kernel(kernel.name, head_dim, num_heads, kernel.num_features, **family)


__all__ = [
    "KERNELS",
    "FeatureMap",
    "RandomFeatureMap",
    "build_kernel",
    "family_params",
    "kernel_class",
    "kernel_from_config",
]
