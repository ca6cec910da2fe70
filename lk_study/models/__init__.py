"""Models: the kernel-attention encoder and its task heads."""

from lk_study.models.encoder import Encoder, EncoderClassifier, draw_seed

__all__ = ["Encoder", "EncoderClassifier", "draw_seed"]
