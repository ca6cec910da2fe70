"""Smoke tier: pinned short loss curves (torchtune style).

Eight training losses of ``fit`` on a tiny sparsity config, per kernel, on CPU in fp32. A change
to the kernels, the attention, the model, the data order or the optimiser that moves any of
them by more than 1e-4 fails here; if the change is intended, regenerate the numbers with
``python tests/test_loss_curves.py`` and say why in the commit.
"""

import pytest
import torch

from lk_study.config import Config, with_overrides
from lk_study.train import fit

CONFIG = {
    "task.size": 200,
    "task.seq_len": 16,
    "task.num_signal": 3,
    "task.num_types": 3,
    "model.d_model": 32,
    "model.num_layers": 1,
    "model.num_heads": 4,
    "model.d_ff": 64,
    "model.dropout": 0.0,
    "kernel.num_features": 16,
    "train.batch_size": 16,
    "train.max_steps": 8,
    "train.eval_every": 1,
    "train.lr": 3e-3,
    "train.warmup": 2,
}

PINNED = {
    "softmax": [0.746186, 0.753323, 0.641451, 0.690850, 1.103833, 0.797822, 0.726618, 0.680424],
    "prf": [0.746048, 0.754167, 0.641887, 0.693884, 1.104841, 0.796582, 0.722777, 0.680520],
    "gmm_prf": [0.730999, 0.730468, 0.657256, 0.686570, 1.073328, 0.785080, 0.715371, 0.685029],
    "rks": [0.734307, 0.728980, 0.649860, 0.690358, 1.037033, 0.740259, 0.684287, 0.704222],
}


def loss_curve(kernel: str) -> list[float]:
    cfg = with_overrides(Config(), {**CONFIG, "kernel.name": kernel})
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one reduction order, whatever the machine's core count
    try:
        fit(cfg, lambda metrics, _: losses.append(metrics["train_loss"]))
    finally:
        torch.set_num_threads(threads)
    return losses


@pytest.mark.parametrize("kernel", list(PINNED))
def test_pinned_loss_curve(kernel):
    got = loss_curve(kernel)
    assert len(got) == 8
    assert got == pytest.approx(PINNED[kernel], abs=1e-4), got


if __name__ == "__main__":  # regenerate PINNED
    for name in PINNED:
        print(f'    "{name}": [{", ".join(f"{x:.6f}" for x in loss_curve(name))}],')
