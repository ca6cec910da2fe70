"""Task metrics, as GLUE and LRA define them, computed by scikit-learn and scipy.

All take predictions and references as 1-D numpy arrays (class ids, or scores for
regression) and return floats.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def accuracy(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    return {"accuracy": float(skm.accuracy_score(label, pred))}


def accuracy_f1(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """MRPC, QQP: accuracy and F1 of the positive class."""
    return {**accuracy(pred, label), "f1": float(skm.f1_score(label, pred, zero_division=0.0))}


def mcc(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """CoLA: Matthews correlation coefficient."""
    return {"mcc": float(skm.matthews_corrcoef(label, pred))}


def pearson_spearman(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """STS-B: Pearson and Spearman correlation of the predicted scores."""
    if np.std(pred) == 0 or np.std(label) == 0:
        return {"pearson": 0.0, "spearman": 0.0}
    return {
        "pearson": float(stats.pearsonr(pred, label).statistic),
        "spearman": float(stats.spearmanr(pred, label).statistic),
    }
