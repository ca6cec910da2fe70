"""lk_study: distributed hyperparameter studies of kernelized (learned random-feature)
transformers, after *Learning the Transformer Kernel* (TMLR 2022).

kernels -> attention -> models -> tasks -> train (Ray Train) -> tune (Ray Tune + Optuna)
-> analysis (pandas). See README.md.
"""

__version__ = "0.1.0"
