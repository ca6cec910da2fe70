"""Models: the kernel-attention encoder and its task heads."""

from lk_study.models.encoder import Encoder, draw_seed
from lk_study.models.heads import Classifier, DualClassifier, Regressor
from lk_study.models.mlm import MaskedLM

__all__ = ["Classifier", "DualClassifier", "Encoder", "MaskedLM", "Regressor", "draw_seed"]
