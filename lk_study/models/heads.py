"""Task heads on the shared encoder: one interface, so one training loop serves every task.

Every model maps a batch {"ids": (B, T), ["ids2": (B, T2)], "label": (B,)} to outputs and
defines
    loss(out, label)       the training loss (scalar)
    scores(out)            what evaluation averages over random-feature draws:
                           class probabilities (B, C) or regression values (B,)
    eval_loss(scores, y)   (summed loss of averaged scores, number of terms):
                           −Σ log p_y, or Σ (ŷ − y)²
    predict(scores, y)     (predictions, references) for the task metric

    Classifier:      [CLS] state z (B, D) -> Dropout -> Linear -> logits (B, C)
    Regressor:       [CLS] state z -> Linear -> ŷ (B,)                       (STS-B)
    DualClassifier:  z₁, z₂ from one shared encoder -> [z₁, z₂, z₁⊙z₂, z₁−z₂] (B, 4D)
                     -> MLP -> logits (B, C)       (LRA retrieval; ``combine="concat"``: [z₁; z₂])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lk_study.models.encoder import Encoder


class Classifier(nn.Module):
    def __init__(self, encoder: Encoder, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        d = encoder.cls.shape[0]
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(d, num_classes))

    @classmethod
    def build(cls, encoder: Encoder, cfg: Any, task: Any) -> Classifier:
        """The head for run config ``cfg`` and its task entry (``lk_study.models.build_model``)."""
        return cls(encoder, task.num_outputs(cfg.task), cfg.model.dropout)

    def forward(self, batch: dict) -> Tensor:
        return self.head(self.encoder(batch["ids"])[:, 0])

    def loss(self, out: Tensor, label: Tensor) -> Tensor:
        return F.cross_entropy(out.float(), label)

    def scores(self, out: Tensor) -> Tensor:
        return out.float().softmax(-1)

    def eval_loss(self, scores: Tensor, label: Tensor) -> tuple[float, int]:
        """(summed loss, number of terms) of averaged scores."""
        return -scores.gather(1, label[:, None]).clamp_min(1e-12).log().sum().item(), len(label)

    def predict(self, scores: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        """(predictions, references) for the task metric."""
        return scores.argmax(-1), label


class Regressor(Classifier):
    def __init__(self, encoder: Encoder, dropout: float) -> None:
        super().__init__(encoder, 1, dropout)

    @classmethod
    def build(cls, encoder: Encoder, cfg: Any, task: Any) -> Regressor:
        return cls(encoder, cfg.model.dropout)

    def forward(self, batch: dict) -> Tensor:
        return super().forward(batch).squeeze(-1)

    def loss(self, out: Tensor, label: Tensor) -> Tensor:
        return F.mse_loss(out.float(), label.float())

    def scores(self, out: Tensor) -> Tensor:
        return out.float()

    def eval_loss(self, scores: Tensor, label: Tensor) -> tuple[float, int]:
        return (scores - label.double()).pow(2).sum().item(), len(label)

    def predict(self, scores: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        return scores, label


class DualClassifier(Classifier):
    def __init__(
        self, encoder: Encoder, num_classes: int, dropout: float, combine: str = "full"
    ) -> None:
        super().__init__(encoder, num_classes, dropout)
        if combine not in ("full", "concat"):
            raise ValueError(f"combine must be full or concat, got {combine!r}")
        self.combine = combine
        d = encoder.cls.shape[0]
        width = 4 * d if combine == "full" else 2 * d
        self.head = nn.Sequential(
            nn.Linear(width, d), nn.GELU(), nn.Dropout(dropout), nn.Linear(d, num_classes)
        )

    @classmethod
    def build(cls, encoder: Encoder, cfg: Any, task: Any) -> DualClassifier:
        m = cfg.model
        return cls(encoder, task.num_outputs(cfg.task), m.dropout, m.dual_combine)

    def forward(self, batch: dict) -> Tensor:
        z1 = self.encoder(batch["ids"])[:, 0]  # (B, D)
        z2 = self.encoder(batch["ids2"])[:, 0]
        if self.combine == "full":
            z = torch.cat([z1, z2, z1 * z2, z1 - z2], dim=-1)  # (B, 4D)
        else:
            z = torch.cat([z1, z2], dim=-1)  # (B, 2D)
        return self.head(z)
