"""Masked-LM head (BERT); ``load_encoder`` (re-exported from lk_study.checkpoints) loads a
pre-trained encoder into any head.

    hidden states (B, T+1, D) --drop row 0 ([CLS])--> h (B, T, D)
    --gather the N target positions (label ≠ ignore_index)--> (N, D)
    --transform: Linear(D, D) -> GELU -> LayerNorm--> (N, D)
    --decoder tied to the input embedding E (V, D): logits = (h / √D) Eᵀ + b--> (N, V)

The 1/√D (T5's rescaling for tied embeddings) keeps the initial logits O(1): E is N(0, 1)
per entry (nn.Embedding's init, which the encoder's inputs rely on), so h Eᵀ alone would have
standard deviation √D (≈ 23 at D = 512) and an initial loss far above ln V.

The decoder runs only where there is a target, as in Google's BERT (``gather_indexes``):
with V ≈ 30K the (B, T, V) logits would dominate compute and memory, and evaluation (which
averages float64 scores over random-feature draws) would hold B·T·V doubles. A batch without
"label" gets the logits of every position, (B, T, V) (e.g. for filling in masks).

Interface of ``lk_study.models.heads`` (so ``lk_study.train`` runs it unchanged):
    loss        cross-entropy over targets, mean over the N targets
    scores      softmax probabilities p (N, V)
    eval_loss   (−Σₙ log pₙ[yₙ], N)
    predict     (argmax p (N,), targets y (N,))
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lk_study.checkpoints import CHECKPOINT_FILE, checkpoint_file, load_encoder
from lk_study.models.encoder import Encoder

__all__ = ["CHECKPOINT_FILE", "MaskedLM", "checkpoint_file", "load_encoder"]


class MaskedLM(nn.Module):
    def __init__(self, encoder: Encoder, ignore_index: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.ignore_index = ignore_index  # the task's IGNORE: a token without a target
        d = encoder.cls.shape[0]
        self.transform = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d))
        self.bias = nn.Parameter(torch.zeros(encoder.embed.num_embeddings))

    @classmethod
    def build(cls, encoder: Encoder, cfg: Any, task: Any) -> MaskedLM:
        return cls(encoder, task.ignore_index)

    def forward(self, batch: dict) -> Tensor:
        h = self.encoder(batch["ids"])[:, 1:]  # (B, T, D): token positions, [CLS] dropped
        label = batch.get("label")
        if label is not None:
            h = h[label != self.ignore_index]  # (N, D), row-major order of the targets
        h = self.transform(h) * self.bias.new_tensor(h.shape[-1] ** -0.5)
        return F.linear(h, self.encoder.embed.weight, self.bias)  # (..., V)

    def _targets(self, label: Tensor) -> Tensor:
        return label[label != self.ignore_index]  # (N,), the order forward() gathers in

    def loss(self, out: Tensor, label: Tensor) -> Tensor:
        target = self._targets(label)
        if not len(target):  # no token chosen in this batch: a zero that keeps the graph
            return out.float().sum() * 0.0
        return F.cross_entropy(out.float(), target)

    def scores(self, out: Tensor) -> Tensor:
        return out.float().softmax(-1)

    def eval_loss(self, scores: Tensor, label: Tensor) -> tuple[float, int]:
        target = self._targets(label)
        p = scores.gather(1, target[:, None]).clamp_min(1e-12)
        return -p.log().sum().item(), len(target)

    def predict(self, scores: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        return scores.argmax(-1), self._targets(label)
