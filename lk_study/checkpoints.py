"""The training checkpoint format: a ``torch.save`` dict in ``state.pt`` (CHECKPOINT_FILE) with

    model      the model's state dict (``encoder.*`` and the head's keys)
    config     the run config as a nested dict (``lk_study.config.to_dict``)
    step       the training step, plus what ``lk_study.train`` needs to resume

written by ``lk_study.train`` into each Train checkpoint folder (``checkpoint_*``).
``load_encoder`` starts a model from a pre-trained encoder; ``checkpoint_state`` reads one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

CHECKPOINT_FILE = "state.pt"  # what lk_study.train writes into each checkpoint directory


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The state file of a checkpoint: PATH itself, PATH/state.pt, or the state.pt of the
    last ``checkpoint_*`` folder under PATH (a Ray Tune trial folder)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if (path / CHECKPOINT_FILE).is_file():
        return path / CHECKPOINT_FILE
    found = sorted(path.glob(f"checkpoint_*/{CHECKPOINT_FILE}")) if path.is_dir() else []
    if found:
        return found[-1]
    raise FileNotFoundError(
        f"no checkpoint at {path}: expected a file written by lk_study.train, "
        f"{path / CHECKPOINT_FILE}, or {path}/checkpoint_*/{CHECKPOINT_FILE}"
    )


def load_encoder(model: nn.Module, checkpoint: str | os.PathLike) -> list[str]:
    """Copy the encoder weights of a training checkpoint into ``model.encoder``.

    The checkpoint is a ``torch.save`` dict whose "model" is a state dict (keys
    ``encoder.*`` and head keys, which are ignored). Every encoder key of ``model`` must be
    present with the same shape and no extra encoder key may exist: otherwise a ValueError
    names the keys (the model sizes, kernel and vocabulary must match the pre-training run).
    Returns the loaded keys (without the ``encoder.`` prefix).
    """
    path = checkpoint_file(checkpoint)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path}: not an lk_study checkpoint (no 'model' state dict)")
    theirs = {
        k[len("encoder.") :]: v for k, v in state["model"].items() if k.startswith("encoder.")
    }
    ours = model.encoder.state_dict()
    missing = sorted(set(ours) - set(theirs))
    extra = sorted(set(theirs) - set(ours))
    shapes = sorted(
        f"{k} {tuple(theirs[k].shape)} vs {tuple(v.shape)}"
        for k, v in ours.items()
        if k in theirs and theirs[k].shape != v.shape
    )
    problems = [
        f"{what}: {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}"
        for what, keys in (
            ("missing from the checkpoint", missing),
            ("not in this model", extra),
            ("shape (checkpoint vs model)", shapes),
        )
        if keys
    ]
    if problems:
        raise ValueError(
            f"{path}: its encoder does not match this model's ({'; '.join(problems)}); use the "
            f"pre-training run's model.* and kernel.* settings and its tokenizer"
        )
    model.encoder.load_state_dict(theirs, strict=True)
    return sorted(theirs)


def checkpoint_state(path: str | os.PathLike) -> tuple[Path, dict]:
    """Read a training checkpoint: a state.pt file, a checkpoint folder, or a Train run folder
    (``train_runs/train-<trial_id>``: its newest ``checkpoint_*``)."""
    file = checkpoint_file(path)
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{file}: not an lk_study training checkpoint (no 'model' or 'config')")
    return file, state
