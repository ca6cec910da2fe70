"""Models: the kernel-attention encoder, its task heads, and ``build_model`` (HEADS)."""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

from lk_study.kernels import kernel_from_config
from lk_study.models.encoder import Encoder, draw_seed
from lk_study.models.heads import Classifier, DualClassifier, Regressor
from lk_study.models.mlm import MaskedLM

HEADS: dict[str, type[nn.Module]] = {  # a task's ``head`` -> its model class
    "classify": Classifier,
    "regress": Regressor,
    "dual": DualClassifier,
    "mlm": MaskedLM,
}


def build_model(cfg: Any, task: Any) -> nn.Module:
    """The model for ``cfg`` (an ``lk_study.config.Config``) and its task (the
    ``lk_study.tasks`` registry entry, passed in so models import no task): encoder sized by
    cfg.model, kernel from the registry, the head ``HEADS[task.head]``; the task's data
    conventions (``pad_id``, ``ignore_index``) passed to the modules that need them."""
    m = cfg.model
    make_kernel = functools.partial(
        kernel_from_config, cfg.kernel, m.d_model // m.num_heads, m.num_heads
    )
    encoder = Encoder(
        task.vocab_size(cfg.task),
        task.max_len(cfg.task),
        m.d_model,
        m.num_layers,
        m.num_heads,
        m.d_ff,
        m.dropout,
        make_kernel,
        padding_idx=task.pad_id,
    )
    if task.head not in HEADS:
        raise ValueError(f"unknown head {task.head!r}; valid: {', '.join(HEADS)}")
    return HEADS[task.head].build(encoder, cfg, task)


__all__ = [
    "HEADS",
    "Classifier",
    "DualClassifier",
    "Encoder",
    "MaskedLM",
    "Regressor",
    "build_model",
    "draw_seed",
]
