"""Task registry: name -> task object (data preparation, vocabulary, head, metrics)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq

from lk_study.tasks.sparsity import Sparsity

if TYPE_CHECKING:
    from lk_study.config import TaskConfig

TASKS = {
    "sparsity": Sparsity(),
}


def get_task(name: str):
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}") from None


def read_split(path, rank: int = 0, world_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Read a prepared split (Parquet: ids fixed-size list, label) -> ids (N, L), labels (N,),
    keeping rows rank, rank + world_size, ... (this worker's shard)."""
    table = pq.read_table(path)
    ids_col = table.column("ids").combine_chunks()
    width = ids_col.type.list_size
    ids = ids_col.flatten().to_numpy().reshape(-1, width)
    labels = table.column("label").to_numpy()
    return ids[rank::world_size].copy(), labels[rank::world_size].copy()


def prepare(cfg: TaskConfig) -> dict:
    return get_task(cfg.name).prepare(cfg)


__all__ = ["TASKS", "get_task", "prepare", "read_split"]
