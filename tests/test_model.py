"""Smoke tier: the model learns; the training loop's schedule and data order."""

import copy
import math

import pytest
import torch

from lk_study.config import Config, with_overrides
from lk_study.tasks import Split, prepare
from lk_study.train import batches, build_model, fit, lr_factor

TINY = {
    "task.size": 200,
    "task.seq_len": 16,
    "task.num_signal": 3,
    "task.num_types": 3,
    "model.d_model": 32,
    "model.num_heads": 4,
    "model.d_ff": 64,
    "model.dropout": 0.0,
}


def test_model_overfits_a_tiny_batch():
    for kernel in ("softmax", "prf", "gmm_prf"):
        cfg = with_overrides(Config(), {**TINY, "kernel.name": kernel, "kernel.num_features": 16})
        torch.manual_seed(0)
        model = build_model(cfg)
        ids = torch.randint(1, 10, (16, 16))  # vocab 1 + 3 * num_types
        labels = torch.randint(0, 2, (16,))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(150):
            loss = model.loss(model({"ids": ids}), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < 0.05, (kernel, loss.item())
        assert (model({"ids": ids}).argmax(-1) == labels).all()


def test_fit_reports_and_resumes_identically():
    cfg = with_overrides(
        Config(),
        {
            **TINY,
            "kernel.name": "gmm_prf",
            "kernel.num_features": 8,
            "kernel.redraw": 3,
            "train.max_steps": 8,
            "train.eval_every": 4,
            "train.batch_size": 16,
        },
    )
    full, snaps = [], []
    fit(cfg, lambda m, s: (full.append(m), snaps.append(copy.deepcopy(s))))
    assert [m["step"] for m in full] == [4, 8]
    expected = {
        "step",
        "epoch",
        "train_loss",
        "val_loss",
        "val_accuracy",
        "tokens_per_s",
        "seconds",
    }
    assert expected <= set(full[0])
    resumed = []
    fit(cfg, lambda m, s: resumed.append(m), state=snaps[0])
    assert resumed[0]["step"] == 8
    assert abs(resumed[0]["val_loss"] - full[1]["val_loss"]) < 1e-5
    assert abs(resumed[0]["train_loss"] - full[1]["train_loss"]) < 1e-5


def test_rsqrt_schedule_and_batches():
    t = Config().train
    w = t.warmup
    assert abs(lr_factor(t, w - 1) - 1.0) < 1e-9 and lr_factor(t, w // 2 - 1) < 0.6
    assert abs(lr_factor(t, 4 * w - 1) - 0.5) < 1e-9  # sqrt(W / 4W)
    steps = [next(b)[0] for b in [batches(10, 3, 0, 0)] for _ in range(5)]
    assert steps == [0, 1, 2, 3, 4]
    a = batches(10, 3, 0, 0)
    first = [next(a)[1].tolist() for _ in range(5)]
    b = batches(10, 3, 0, 3)
    assert next(b)[1].tolist() == first[3]  # resume mid-stream sees the same batch


def test_draws_are_seeded_per_layer_and_identical_across_ranks():
    cfg = with_overrides(Config(), {**TINY, "kernel.name": "prf", "kernel.num_features": 8})
    torch.manual_seed(1)
    rank0 = build_model(cfg).encoder
    torch.manual_seed(2)  # another process: different global RNG state
    rank1 = build_model(cfg).encoder
    for enc in (rank0, rank1):
        enc.resample_kernels(seed=5, draw=3)
    w0 = [layer.attn.kernel.omega.clone() for layer in rank0.layers]
    w1 = [layer.attn.kernel.omega for layer in rank1.layers]
    assert all(torch.equal(a, b) for a, b in zip(w0, w1, strict=True))
    assert not torch.equal(w0[0], w0[1])  # layers differ
    rank0.resample_kernels(seed=5, draw=4)
    assert not torch.equal(rank0.layers[0].attn.kernel.omega, w0[0])  # redraws differ


def test_evaluation_is_deterministic_and_restores_the_training_draw(tmp_path):
    from lk_study.tasks import Split, get_task, prepare
    from lk_study.train import evaluate

    over = {**TINY, "kernel.name": "gmm_prf", "kernel.num_features": 8}
    cfg = with_overrides(Config(), {**over, "task.cache_dir": str(tmp_path)})
    torch.manual_seed(0)
    model = build_model(cfg)
    model.encoder.resample_kernels(0, 7)
    before = model.encoder.layers[0].attn.kernel.eps.clone()
    split = Split(prepare(cfg.task)["validation"])
    task = get_task("sparsity")
    args = (model, model, split, task, 16, torch.device("cpu"), False, 0)
    one = evaluate(*args, eval_draws=0, train_draw=7)
    assert set(one) == {"loss", "accuracy"} and 0 <= one["accuracy"] <= 1
    assert one == evaluate(*args, eval_draws=0, train_draw=7)
    three = evaluate(*args, eval_draws=3, train_draw=7)
    assert three == evaluate(*args, eval_draws=3, train_draw=7)
    assert three["loss"] != one["loss"]
    assert torch.equal(model.encoder.layers[0].attn.kernel.eps, before)


def test_non_finite_loss_stops_the_run_with_a_reason():
    cfg = with_overrides(
        Config(),
        {
            **TINY,
            "train.lr": 1e12,
            "train.max_steps": 200,
            "train.eval_every": 100,
            "train.batch_size": 16,
        },
    )
    reports = []
    with pytest.raises(FloatingPointError, match="training loss became nan"):
        fit(cfg, lambda m, s: reports.append((m, s)))
    metrics, snapshot = reports[-1]
    assert "training loss became" in metrics["error"] and snapshot is None
    assert metrics["step"] < 200


def test_no_weight_decay_on_spectral_parameters():
    from lk_study.train import param_groups

    cfg = with_overrides(Config(), {**TINY, "kernel.name": "gmm_prf", "kernel.num_features": 8})
    model = build_model(cfg)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(".kernel." not in names[id(p)] and p.ndim == 2 for p in decay["params"])
    assert any(".kernel.mu" in names[id(p)] for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)


def test_epoch_budget_warmup_ratio_and_per_epoch_evaluation():
    """train.epochs sets the run's length from the training split's size; eval_every 0
    evaluates once per epoch; warmup_ratio makes the warmup a share of the run."""
    cfg = with_overrides(
        Config(),
        {
            **TINY,
            "kernel.name": "prf",
            "kernel.num_features": 8,
            "train.batch_size": 16,
            "train.max_steps": 1,  # ignored: the budget is in epochs
            "train.epochs": 2.5,
            "train.eval_every": 0,
            "train.schedule": "linear",
            "train.warmup_ratio": 0.5,
        },
    )
    reports = []
    fit(cfg, lambda m, s: reports.append(m))
    rows = Split(prepare(cfg.task)["train"]).total_rows
    per_epoch = rows // 16
    total = math.ceil(2.5 * per_epoch)
    assert [m["step"] for m in reports] == [per_epoch, 2 * per_epoch, total]
    assert [m["epoch"] for m in reports] == [1.0, 2.0, total / per_epoch]
    assert all(m["total_steps"] == total for m in reports)
    resolved = cfg.train.resolve(per_epoch)
    assert resolved.warmup == round(0.5 * total) and resolved.max_steps == total
    # linear schedule: peak at the warmup, zero at the end of the resolved run
    assert lr_factor(resolved, resolved.warmup - 1) == 1.0
    assert lr_factor(resolved, total) == 0.0
