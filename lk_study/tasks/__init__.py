"""Task registry: name -> task object (config section, data preparation, head, metrics).

See ``lk_study.tasks.base`` for the interface every entry implements.
"""

from __future__ import annotations

from lk_study.tasks.base import Split, TaskConfig
from lk_study.tasks.glue import Glue
from lk_study.tasks.image import Image
from lk_study.tasks.listops import ListOps
from lk_study.tasks.pathfinder import Pathfinder
from lk_study.tasks.retrieval import Retrieval
from lk_study.tasks.sparsity import Sparsity
from lk_study.tasks.text import Text
from lk_study.tasks.wikitext import WikiText103MLM

TASKS = {
    "listops": ListOps(),
    "text": Text(),
    "retrieval": Retrieval(),
    "image": Image(),
    "pathfinder": Pathfinder(),
    "sparsity": Sparsity(),
    "wikitext103_mlm": WikiText103MLM(),
    "glue/cola": Glue("cola"),
    "glue/sst2": Glue("sst2"),
    "glue/mrpc": Glue("mrpc"),
    "glue/qqp": Glue("qqp"),
    "glue/stsb": Glue("stsb"),
    "glue/mnli": Glue("mnli"),
    "glue/qnli": Glue("qnli"),
    "glue/rte": Glue("rte"),
    "glue/wnli": Glue("wnli"),
}


def get_task(name: str):
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}") from None


def prepare(cfg: TaskConfig) -> dict:
    """Prepared Parquet splits of ``cfg``'s task (built once per machine, then cached)."""
    return get_task(cfg.name).prepare(cfg)


__all__ = ["TASKS", "Split", "TaskConfig", "get_task", "prepare"]
