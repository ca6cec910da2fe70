"""Models: the kernel-attention encoder and its task heads."""

from lk_study.models.encoder import Encoder, draw_seed
from lk_study.models.heads import Classifier, DualClassifier, Regressor

__all__ = ["Classifier", "DualClassifier", "Encoder", "Regressor", "draw_seed"]
