"""The study file: what is searched, how, for how long, and on which base config.

A study file is a YAML mapping (see search_spaces/quickstart.yaml): ``name``, the base
``config`` (lk_study.config's run sections), the ``search`` space, the ``searcher`` (optuna |
grid | random), ``seeds`` and ``variants`` crossed in, ``objective``, ``budget``,
``scheduler``, ``optuna`` and ``tracking`` (MLflow / W&B) settings and a ``smoke`` section of
overrides. ``load_study``
validates all of it, strictly and before Ray starts, with the generic builder of
lk_study.config (errors name the file, the line, the key and the valid keys).
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lk_study.config import (
    Config,
    ConfigError,
    _build,
    _coerce,
    _load_yaml,
    _unknown,
    _Where,
    config_from_dict,
    config_keys,
    flatten,
    nest,
    to_dict,
    with_overrides,
)
from lk_study.kernels import kernel_from_config
from lk_study.space import FINITE, Param, parse_search
from lk_study.tasks import get_task
from lk_study.tasks.base import check as _check
from lk_study.tracking import Tracking, tracking_record

SEARCHERS = ("optuna", "grid", "random")


@dataclass(frozen=True)
class Objective:
    metric: str = "val_accuracy"
    mode: str = "max"

    def __post_init__(self) -> None:
        _check(self.mode in ("max", "min"), "mode", "must be max or min")


@dataclass(frozen=True)
class Budget:
    num_samples: int = 8
    max_concurrent: int = 0  # 0 = as many as the cluster's CPUs/GPUs fit

    def __post_init__(self) -> None:
        _check(self.num_samples >= 1, "num_samples", "must be >= 1")
        _check(self.max_concurrent >= 0, "max_concurrent", "must be >= 0")


@dataclass(frozen=True)
class Scheduler:
    """Early stopping (ASHA) on our own counter: ``step``, or ``epoch`` when the study
    budgets in epochs (``train.epochs``); see lk_study.tune.asha_budget."""

    name: str = "asha"  # asha | none
    grace_period: int = 100  # steps (epochs if the study budgets in epochs) before a stop
    reduction_factor: int = 2

    def __post_init__(self) -> None:
        _check(self.name in ("asha", "none"), "name", "must be asha or none")
        _check(self.grace_period >= 1, "grace_period", "must be >= 1")
        _check(self.reduction_factor >= 2, "reduction_factor", "must be >= 2")


SQLITE = "sqlite:///"


def storage_url(url: str) -> str:
    """``url`` with a relative SQLite path made absolute against the current directory
    (``sqlite:///optuna.db`` -> ``sqlite:////home/me/optuna.db``); other URLs unchanged."""
    path = url.removeprefix(SQLITE)
    if url.startswith(SQLITE) and path and not path.startswith((":memory:", "/")):
        return SQLITE + os.path.abspath(path)
    return url


@dataclass(frozen=True)
class OptunaSettings:
    """searcher: optuna -- where its studies live: ``storage: ""`` in memory (kept in Tune's
    searcher checkpoints), or an SQLAlchemy URL such as ``sqlite:///optuna.db`` (a relative
    path is taken from the current directory when the study starts), which
    ``optuna-dashboard sqlite:///...`` reads while the study runs."""

    storage: str = ""

    def __post_init__(self) -> None:
        _check(
            not self.storage or re.match(r"^[a-z][a-z0-9+]*://", self.storage) is not None,
            "storage",
            f"{self.storage!r} is not a database URL; write e.g. sqlite:///optuna.db, "
            "or leave it out to keep the Optuna studies in memory",
        )


@dataclass(frozen=True)
class Study:
    name: str
    config: Config
    search: dict[str, Param]
    objective: Objective = field(default_factory=Objective)
    budget: Budget = field(default_factory=Budget)
    scheduler: Scheduler = field(default_factory=Scheduler)
    seed: int = 0  # the searcher's seed
    searcher: str = "optuna"  # optuna | grid | random
    seeds: tuple[int, ...] = ()  # every point runs once per seed (train.seed)
    # every point runs once per variant, a dict of dotted config keys (e.g. one per task with
    # its own model size); variants may switch task.name
    variants: tuple[dict[str, Any], ...] = ()
    optuna: OptunaSettings = field(default_factory=OptunaSettings)
    tracking: Tracking = field(default_factory=Tracking)  # MLflow / W&B (lk_study.tracking)
    source: str = "<dict>"
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)  # key: line
    also: tuple[Objective, ...] = ()  # a Pareto search: the objectives after the first

    @property
    def objectives(self) -> tuple[Objective, ...]:
        """Every objective: ``objective`` (the leaderboard's, Tune's) first."""
        return (self.objective, *self.also)

    def points(self) -> list[dict[str, Any]]:
        """The explicit points, variants and seeds crossed in. grid: every combination of
        the lists; random: ``num_samples`` draws; optuna: every combination of the
        ``{grid: [...]}`` lists ([{}] when there are none), each one searched by its own
        Optuna study (``optuna_space``)."""
        if self.searcher == "random":
            rng = random.Random(self.seed)
            points = [self._draw(rng) for _ in range(self.budget.num_samples)]
        else:
            points = [{}]
            for key, p in self.search.items():
                if self.searcher == "optuna" and p.kind != "grid":
                    continue  # searched by TPE at every point
                points = [
                    {**pt, key: v} if p.active(pt) else pt
                    for pt in points
                    for v in (p.values if p.active(pt) else [None])
                ]
        if self.variants:
            points = [{**v, **pt} for v in self.variants for pt in points]
        if self.seeds:
            points = [{**pt, "train.seed": s} for pt in points for s in self.seeds]
        return points

    def _draw(self, rng: random.Random) -> dict[str, Any]:
        pt: dict[str, Any] = {}
        for key, p in self.search.items():
            if not p.active(pt):
                continue
            if p.kind in FINITE:
                pt[key] = rng.choice(p.values)
            elif p.kind == "int":
                pt[key] = rng.randint(*p.values)
            elif p.kind == "loguniform":
                pt[key] = math.exp(rng.uniform(math.log(p.values[0]), math.log(p.values[1])))
            else:
                pt[key] = rng.uniform(*p.values)
        return pt

    def optuna_space(self, point: Mapping[str, Any]) -> dict[str, Param]:
        """optuna: the dimensions TPE searches at grid ``point`` -- the non-grid ones, their
        conditions on grid keys decided by the point's values (a false one drops the
        dimension, and with it those that depend on it)."""
        space: dict[str, Param] = {}
        for key, p in self.search.items():
            # conditions on keys TPE does not search here: grid keys (the point has them)
            # or dimensions already dropped (it has not, so the condition is false)
            fixed = Param(p.kind, p.values, tuple(c for c in p.when if c[0] not in space))
            if p.kind != "grid" and fixed.active(point):
                space[key] = Param(p.kind, p.values, tuple(c for c in p.when if c[0] in space))
        return space

    def trials_at(self, point: Mapping[str, Any]) -> int:
        """optuna: trials at grid ``point``: ``num_samples``, or 1 when TPE has nothing to
        search there (every trial would be the same)."""
        return self.budget.num_samples if self.optuna_space(point) else 1

    def num_trials(self) -> int:
        if self.searcher == "optuna":
            return sum(self.trials_at(pt) for pt in self.points())
        return len(self.points())


STUDY_KEYS = tuple(
    "name config search searcher seeds variants objective budget scheduler optuna tracking seed "
    "smoke".split()
)


STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def study_from_dict(
    data: Any,
    source: str = "<dict>",
    lines: Mapping[str, int] | None = None,
    overrides: Mapping[str, Any] | None = None,
    smoke: bool = False,
) -> Study:
    """Validate a study mapping. ``overrides`` are dotted keys (config keys, or
    objective./budget./scheduler./optuna./seed/name); a searched config key that is overridden is
    fixed and leaves the search. ``smoke`` applies the file's ``smoke:`` overrides first."""
    where = _Where(source, lines)
    _check_top_level(data, where)
    smoke_set = dict(data.get("smoke") or {}) if smoke else {}
    top, sections, search_raw = _raw_parts(data, where)
    base = _build(Config, data.get("config") or {}, "config", where)
    cfg_over = _apply_overrides(
        {**smoke_set, **dict(overrides or {})},
        overrides or {},
        base,
        top,
        sections,
        search_raw,
        where,
    )
    lines_cfg = {k.removeprefix("config."): v for k, v in where.lines.items()}
    base = with_overrides(base, cfg_over, _Where(source, lines_cfg))
    search = parse_search(search_raw, cfg_over, base, where)
    searcher = _coerce(data.get("searcher", "optuna"), str, "searcher", where)
    if searcher not in SEARCHERS:
        raise ConfigError(
            f"{where('searcher')}: searcher {searcher!r} is not one of {', '.join(SEARCHERS)}"
        )
    seeds = top["seeds"] or []
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{where('seeds')}: seeds must be a list of integers, got {seeds!r}")
    _check_searcher_rules(search, searcher, seeds, where)
    variants = _check_variants(top["variants"] or [], search, base, where)
    if sections["optuna"] and searcher != "optuna":
        raise ConfigError(
            f"{where('optuna')}: the optuna section applies to searcher: optuna, "
            f"not {searcher}; remove it"
        )
    name = _coerce(top["name"], str, "name", where)
    if not STUDY_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"{where('name')}: name {name!r} must be a plain name (letters, digits, '_', '-', "
            "'.'; no '/' or '..'): it names the study's folder under --storage"
        )
    study = Study(
        name=name,
        config=base,
        search=search,
        objective=_build(Objective, sections["objective"], "objective", where),
        budget=_build(Budget, sections["budget"], "budget", where),
        scheduler=_build(Scheduler, sections["scheduler"], "scheduler", where),
        optuna=_build(OptunaSettings, sections["optuna"], "optuna", where),
        tracking=_build(Tracking, sections["tracking"], "tracking", where),
        seed=_coerce(top["seed"], int, "seed", where),
        searcher=searcher,
        seeds=tuple(seeds),
        variants=tuple(dict(v) for v in variants),
        source=source,
        lines=dict(where.lines),
        also=tuple(
            _build(Objective, o, f"objective[{i + 1}]", where) if isinstance(o, Mapping) else o
            for i, o in enumerate(top["also"])
        ),
    )
    check_trials(study)
    check_objective(study, where)
    return study


TRAINING_METRICS = ("step", "epoch", "train_loss", "tokens_per_s", "seconds", "lr", "peak_mib")


def check_objective(study: Study, where: _Where) -> None:
    """The objective is reported by every task of the study (``Task.metric_names`` of the base
    task, the variants' and searched ``task.name`` values) or is a training metric."""
    names = {v.get("task.name", study.config.task.name) for v in study.variants or [{}]}
    names |= set(study.search["task.name"].values) if "task.name" in study.search else set()
    metrics = [o.metric if isinstance(o, Objective) else o for o in study.objectives]
    for name, metric in [(n, m) for n in sorted(names) for m in metrics]:
        cfg = with_overrides(study.config, {"task.name": name}).task
        reported = (*get_task(name).metric_names(cfg), *TRAINING_METRICS)
        if metric not in reported:
            raise ConfigError(
                f"{where('objective.metric')}: objective.metric {metric!r} is "
                f"not reported by task {name}; it reports {', '.join(reported)}"
            )
    if not study.also:
        return
    if len(set(metrics)) < len(metrics) or not all(isinstance(o, Objective) for o in study.also):
        raise ConfigError(
            f"{where('objective')}: a Pareto search's objective is a list of different "
            "{metric: NAME, mode: max|min} mappings"
        )
    if study.searcher != "optuna" or study.scheduler.name != "none":
        raise ConfigError(
            f"{where('objective')}: a Pareto search ({len(metrics)} objectives) needs searcher: "
            f"optuna and scheduler: {{name: none}} (ASHA stops trials on one metric); "
            f"this study has searcher {study.searcher}, scheduler {study.scheduler.name}"
        )


SECTIONS = {
    "objective": Objective,
    "budget": Budget,
    "scheduler": Scheduler,
    "optuna": OptunaSettings,
    "tracking": Tracking,
}
TOP_OVERRIDES = ("name", "seed", "seeds", "variants")  # top-level keys --set may replace


def _check_top_level(data: Any, where: _Where) -> None:
    """A mapping of known study keys, with a name."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{where.source}: a study file must be a mapping with keys {', '.join(STUDY_KEYS)}"
        )
    for key in data:
        if key not in STUDY_KEYS:
            raise _unknown(where, str(key), str(key), STUDY_KEYS)
    if "name" not in data:
        raise ConfigError(f"{where.source}: missing key 'name' (the study's name)")


def _raw_parts(
    data: Mapping[str, Any], where: _Where
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], Any]:
    """The top-level values, the section mappings and the raw search space, as written
    (before overrides; copies, so overrides may change them)."""
    sections, also = {}, data.get("objective")
    if isinstance(also, list) and also:  # a Pareto search: the first is the primary objective
        data = {**data, "objective": also[0]}
    for k in SECTIONS:
        if not isinstance(data.get(k) or {}, Mapping):
            raise ConfigError(f"{where(k)}: {k} must be a mapping, got {data[k]!r}")
        sections[k] = dict(data.get(k) or {})
    top = {
        "name": data["name"],
        "seed": data.get("seed", 0),
        "seeds": data.get("seeds"),
        "variants": data.get("variants"),
        "also": also[1:] if isinstance(also, list) else [],
    }
    raw = data.get("search")
    search_raw = dict(raw or {}) if isinstance(raw, Mapping) else raw
    return top, sections, search_raw


def _apply_overrides(
    all_over: Mapping[str, Any],
    cli: Mapping[str, Any],
    base: Config,
    top: dict[str, Any],
    sections: dict[str, dict[str, Any]],
    search_raw: Any,
    where: _Where,
) -> dict[str, Any]:
    """Route each override (``smoke:`` and then ``--set``, in ``all_over``; ``cli`` the
    ``--set`` ones) into ``top``, ``sections`` or ``search_raw`` in place; return the config
    overrides."""
    sections_of_config = tuple(f"{f.name}." for f in dataclasses.fields(Config))
    valid_over = [*config_keys(base.task.name), *TOP_OVERRIDES, "search.<key>"] + [
        f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)
    ]
    task_keys = config_keys(all_over.get("task.name", base.task.name))
    cfg_over = {}
    for key, value in all_over.items():
        head, _, rest = key.partition(".")
        origin = _Where("--set" if key in cli else f"{where.source} smoke")
        if key in TOP_OVERRIDES:
            top[key] = value
        elif head == "search" and rest and isinstance(search_raw, dict):
            search_raw[rest] = value  # replaces (or adds) a searched dimension
        elif head in sections and rest:
            sections[head][rest] = value
        elif key.startswith(sections_of_config):
            if key not in task_keys:
                raise _unknown(origin, key, key, task_keys)
            cfg_over[key] = value
        else:
            raise _unknown(origin, key, key, valid_over)
    return cfg_over


def _check_searcher_rules(
    search: Mapping[str, Param], searcher: str, seeds: list[int], where: _Where
) -> None:
    """grid: finite lists only; optuna: a grid's conditions only on grid keys; ``seeds``
    and a searched ``train.seed`` exclude each other."""
    for key, p in search.items():
        if searcher == "grid" and p.kind not in FINITE:
            raise ConfigError(
                f"{where(f'search.{key}')}: searcher: grid needs finite lists, but search.{key} "
                f"is {p.kind}; use {{grid: [...]}} or searcher: random / optuna"
            )
        searched = [k for k, _ in p.when if search.get(k, p).kind != "grid"]
        if searcher == "optuna" and p.kind == "grid" and searched:
            raise ConfigError(
                f"{where(f'search.{key}.when')}: search.{key} is a grid, so its points are "
                f"fixed before Optuna runs, but its when refers to {searched[0]!r}, which "
                "Optuna searches; make that key a grid too, or this one a choice"
            )
    if seeds and "train.seed" in search:
        raise ConfigError(
            f"{where('search.train.seed')}: train.seed is searched and also set by seeds; "
            "keep one of them"
        )


def _check_variants(
    variants: Any, search: Mapping[str, Param], base: Config, where: _Where
) -> list[Mapping[str, Any]]:
    """A list of mappings of dotted config keys, none of them searched, each valid on
    ``base``."""
    if not isinstance(variants, list) or not all(isinstance(v, Mapping) for v in variants):
        raise ConfigError(
            f"{where('variants')}: variants must be a list of mappings of dotted config keys"
        )
    for i, variant in enumerate(variants):
        for key in variant:
            if key in search:
                raise ConfigError(
                    f"{where('variants')}: variants[{i}] sets {key!r}, which is also searched"
                )
        with_overrides(base, dict(variant), _Where(f"{where('variants')}: variants[{i}]"))
    return variants


def check_trials(study: Study, limit: int = 5000) -> None:
    """Build each distinct attention kernel the study's trials would build, so constraints
    across keys (e.g. GMM ``num_components`` <= ``num_features`` / 2) fail here, before Ray
    starts, naming the trial. Grid/random: every point. Optuna: every combination of its
    finite values and integer bounds (continuous values cannot break a kernel), crossed with
    the study's explicit points, when there are at most ``limit``."""
    points = study.points()
    if study.searcher == "optuna":  # each grid point x the finite part of its TPE space
        expanded: list[dict[str, Any]] = []
        for point in points:
            combos: list[dict[str, Any]] = [{}]
            for key, p in study.optuna_space(point).items():
                values = p.values if p.kind in (*FINITE, "int") else p.values[:1]
                combos = [
                    {**c, key: v} if p.active(c) else c
                    for c in combos
                    for v in (values if p.active(c) else [None])
                ]
                if len(expanded) + len(combos) > limit:
                    return
            expanded += [{**point, **c} for c in combos]
        points = expanded
    seen = set()
    for point in points:
        shape = {k: v for k, v in point.items() if k.startswith(("kernel.", "model."))}
        key = tuple(sorted(shape.items(), key=str))
        if key in seen:
            continue
        seen.add(key)
        cfg = with_overrides(study.config, shape)
        m = cfg.model
        try:
            kernel_from_config(cfg.kernel, m.d_model // m.num_heads, m.num_heads)
        except ValueError as e:
            shown = ", ".join(f"{k}={v}" for k, v in shape.items()) or "the base config"
            raise ConfigError(f"{study.source}: the trial with {shown} is invalid: {e}") from None


def load_study_file(
    path: str | Path, overrides: Mapping[str, Any] | None = None, smoke: bool = False
) -> Study:
    """Read and validate a study file (see search_spaces/quickstart.yaml for the format).
    ``smoke``: apply its ``smoke:`` section and name the study ``NAME-smoke``, so a smoke run
    never lands in (or resumes) the full study's folder. (The results of a study that ran
    are read by ``lk_study.analysis.load_study``.)"""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such study file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    data, lines = _load_yaml(text, str(path))
    study = study_from_dict(data, str(path), lines, overrides, smoke)
    if not smoke and isinstance(data, Mapping) and data.get("smoke"):
        study_from_dict(data, f"{path} (smoke section)", lines, overrides, smoke=True)
    if smoke:
        study = dataclasses.replace(study, name=f"{study.name}-smoke")
    return study


def study_record(study: Study) -> dict:
    """The study as the study folder's lk_study.json records it (JSON types only)."""
    return {
        "name": study.name,
        "source": study.source,
        "objective": to_dict(study.objective),
        **({"also": [to_dict(o) for o in study.also]} if study.also else {}),
        "config": flatten(study.config),
        "search": {k: to_dict(p) for k, p in study.search.items()},
        "searcher": study.searcher,
        "seeds": list(study.seeds),
        "variants": list(study.variants),
        # only when set, so folders of studies run before this key existed still resume
        **(
            {"optuna": {"storage": storage_url(study.optuna.storage)}}
            if study.optuna.storage
            else {}
        ),
        # only when set (as optuna); absolute URIs, so a resume elsewhere tracks the same place
        **({"tracking": tracked} if (tracked := tracking_record(study.tracking)) else {}),
    }


def study_from_record(record: dict) -> Study:
    """The Study a study folder's lk_study.json describes (inverse of ``study_record``):
    enough to resume it without its YAML file."""
    return Study(
        name=record["name"],
        config=config_from_dict(nest(record["config"]), f"{record['source']} (as run)"),
        search={
            k: Param(p["kind"], tuple(p["values"]), tuple((c, tuple(v)) for c, v in p["when"]))
            for k, p in record["search"].items()
        },
        objective=Objective(**record["objective"]),
        also=tuple(Objective(**o) for o in record.get("also", [])),
        searcher=record["searcher"],
        seeds=tuple(record["seeds"]),
        variants=tuple(record["variants"]),
        optuna=OptunaSettings(**record.get("optuna", {})),
        tracking=Tracking(**record.get("tracking", {})),
        source=record["source"],
    )
