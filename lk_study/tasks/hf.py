"""Hugging Face ``datasets`` sources: ``task.source: hub``, ``generate`` or a PATH.

    "hub"       -> datasets.load_dataset(repo, config_name)   (downloads; users with network)
    "generate"  -> a small synthetic stand-in in the hub's schema, built in memory by the
                   ``generate`` builder the task passes in (WikiText-103 and GLUE, from the
                   grammar of ``lk_study.generators.text``; offline smoke runs and tests,
                   not a benchmark)
    PATH        -> datasets.load_from_disk(PATH), or PATH/<subdir> when PATH holds one folder
                   per task (e.g. every GLUE task saved under one root), each written by
                   ``DatasetDict.save_to_disk``

``datasets`` is imported on first use, never at import time of ``lk_study``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pyarrow as pa

CHUNK = 10_000  # rows per Arrow slice when streaming a split


def describe(source: str, repo: str, config_name: str | None) -> str:
    """How error messages name a source: the hub dataset or the folder."""
    name = repo + (f" ({config_name})" if config_name else "")
    if source == "hub":
        return f"hub dataset {name}"
    if source == "generate":
        return f"synthetic stand-in for {name}"
    return str(source)


def load_splits(
    source: str,
    repo: str,
    config_name: str | None,
    splits: Sequence[str],
    subdir: str = "",
    generate: Callable[[], object] | None = None,
) -> dict:
    """{split: datasets.Dataset} for ``splits`` from the hub, a saved DatasetDict, or
    (``source: generate``) the DatasetDict that the task's stand-in builder ``generate()``
    returns."""
    import datasets

    what = describe(source, repo, config_name)
    if source == "hub":
        data = datasets.load_dataset(repo, config_name)
    elif source == "generate":
        if generate is None:
            raise ValueError(
                f"source: generate has no synthetic stand-in for {what} (it covers "
                "wikitext103_mlm and glue/<task>); use source: hub or a PATH to a saved "
                "DatasetDict"
            )
        data = generate()
    else:
        root = Path(source).expanduser()
        candidates = [root / subdir, root] if subdir else [root]
        found = [p for p in candidates if (p / "dataset_dict.json").is_file()]
        if not found:
            wanted = " or ".join(str(p / "dataset_dict.json") for p in candidates)
            raise FileNotFoundError(
                f"source {root} not found or not a saved DatasetDict: expected {wanted} "
                f"(write it with DatasetDict.save_to_disk; splits {', '.join(splits)}), "
                f"or set source: hub"
            )
        what = str(found[0])
        data = datasets.load_from_disk(str(found[0]))
    missing = [s for s in splits if s not in data]
    if missing:
        raise ValueError(f"{what}: missing split(s) {', '.join(missing)}; it has {', '.join(data)}")
    return {s: data[s] for s in splits}


def check_columns(ds, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"{where}: missing column(s) {', '.join(missing)}; it has {', '.join(ds.column_names)}"
        )


def chunks(ds, columns: Sequence[str]) -> Iterator[tuple[int, pa.Table]]:
    """(first row index, Arrow table of ``columns``) slices of a split, in order."""
    from lk_study.tasks.base import progress

    arrow = ds.select_columns(list(columns)).with_format("arrow")
    with progress(total=len(ds), desc=getattr(ds, "split", None) or "rows") as bar:
        for start in range(0, len(ds), CHUNK):
            yield start, arrow[start : start + CHUNK]
            bar.update(min(CHUNK, len(ds) - start))
