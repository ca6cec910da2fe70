"""Typed configuration (frozen dataclasses) and the strict YAML loader for study files.

One name per concept everywhere: a config field ``kernel.num_features`` is the YAML key
``kernel: {num_features: ...}``, the search-space key ``kernel.num_features``, the Tune
parameter and the results column. Unknown or misspelt keys are errors naming the file, the
line, the key and the valid keys, raised before Ray starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import random
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lk_study.kernels import KERNELS, kernel_from_config
from lk_study.kernels.base import DEN_FLOOR, INITS
from lk_study.kernels.fastfood import FASTFOOD_PRF_FORMS
from lk_study.kernels.generator import BOUNDS
from lk_study.kernels.gmm import COVARIANCES
from lk_study.tasks import TASKS, TaskConfig
from lk_study.tasks.base import FieldError as _FieldError
from lk_study.tasks.base import check as _check
from lk_study.tasks.sparsity import SparsityConfig


class ConfigError(ValueError):
    """A bad study file or override; the message says where and what is valid."""


# ---------------------------------------------------------------------------- config sections


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    d_ff: int = 128
    dropout: float = 0.1
    # two-sequence tasks: [z1; z2] (concat) or [z1, z2, z1*z2, z1-z2] (full)
    dual_combine: str = "concat"
    init_from: str = ""  # checkpoint whose encoder weights start the model (MLM -> GLUE)

    def __post_init__(self) -> None:
        for name in ("d_model", "num_layers", "num_heads", "d_ff"):
            _check(getattr(self, name) >= 1, name, "must be >= 1")
        _check(self.d_model % self.num_heads == 0, "d_model", "must be divisible by num_heads")
        _check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        _check(self.dual_combine in ("concat", "full"), "dual_combine", "must be concat or full")


@dataclass(frozen=True)
class KernelConfig:
    """The attention kernel (lk_study.kernels.KERNELS). Family parameters apply where the
    family takes them (``lk-study kernels`` lists which). Every key where lk_study differs from
    the authors' code has the authors' value one setting away (README, "Deviations")."""

    name: str = "prf"
    num_features: int = 64  # M per head; ignored by softmax
    num_components: int = 1  # GMM families
    covariance: str = "diag"  # GMM families: diag | full (the authors' GMM-RKS: full)
    hidden_dim: int = 64  # generator families: width of the MLP g_θ
    orthogonal: bool = True  # Gaussian-noise families: orthogonal blocks (False: i.i.d.)
    init: str = "rbf"  # learned families: start at the RBF kernel | authors (their init)
    smoothing: float = 0.0  # signed (rks) families: constant feature s, kernel + s² (authors 1)
    den_floor: float = DEN_FLOOR  # signed families: normaliser floor c, |out| <= max|v| / c
    form: str = "softmax"  # fastfood_prf: softmax (Performer's) | rbf (the authors' one-sided)
    bound: str = "none"  # generator families: none | tanh (the authors' bounded output)
    scale_inputs: bool = False  # elu: elu(x/d^¼)+1 instead of elu(x)+1
    redraw: int = 0  # redraw random features every N training steps (1 = every step); 0 = never
    eval_draws: int = 0  # 0: evaluate with the current training draw; n: mean over n fixed draws

    def __post_init__(self) -> None:
        _check(
            self.name in KERNELS,
            "name",
            f"unknown kernel {self.name!r}; valid: {', '.join(KERNELS)}",
        )
        _check(self.num_features >= 1, "num_features", "must be >= 1")
        _check(self.num_components >= 1, "num_components", "must be >= 1")
        for key, valid in CHOICES.items():
            _check(getattr(self, key) in valid, key, f"must be one of {', '.join(valid)}")
        _check(self.hidden_dim >= 1, "hidden_dim", "must be >= 1")
        _check(math.isfinite(self.smoothing) and self.smoothing >= 0, "smoothing", "must be >= 0")
        _check(0.0 <= self.den_floor <= 1.0, "den_floor", "must be in [0, 1]")
        _check(self.redraw >= 0, "redraw", "must be >= 0 (0 = never)")
        _check(self.eval_draws >= 0, "eval_draws", "must be >= 0 (0 = the training draw)")


CHOICES = {
    "covariance": COVARIANCES,
    "init": INITS,
    "form": tuple(FASTFOOD_PRF_FORMS),
    "bound": BOUNDS,
}


SCHEDULES = ("rsqrt", "linear", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. ``lr`` is the peak rate, reached at step ``warmup`` (W).

    rsqrt (LRA):  lr(t) = lr · min(1, t/W) · √(W / max(t, W))
    linear:       lr(t) = lr · min(t/W, (T − t)/(T − W)),  T = the run's total steps

    The budget is ``max_steps``, or with ``epochs`` > 0 (GLUE-style grids) the number of
    passes over the training split: T = ⌈epochs · ⌊rows / batch_size⌋⌉, resolved when
    the run has read its data. ``warmup_ratio`` > 0 sets W = round(warmup_ratio · T) (BERT's
    10 % warmup) instead of ``warmup`` steps. ``eval_every: 0`` evaluates once per epoch.
    """

    seed: int = 0
    batch_size: int = 64  # global, split over the data-parallel workers
    max_steps: int = 1000
    epochs: float = 0.0  # > 0: the budget in passes over the training split (overrides max_steps)
    eval_every: int = 100  # steps between evaluations; 0 = once per epoch
    lr: float = 1e-3
    schedule: str = "rsqrt"
    warmup: int = 100
    warmup_ratio: float = 0.0  # > 0: warmup = warmup_ratio x total steps
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    adam_eps: float = 1e-9
    grad_clip: float = 1.0  # 0 = no clipping

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_steps"):
            _check(getattr(self, name) >= 1, name, "must be >= 1")
        _check(self.eval_every >= 0, "eval_every", "must be >= 1, or 0 (once per epoch)")
        _check(self.epochs >= 0, "epochs", "must be >= 0 (0 = the budget is max_steps)")
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)")
        _check(self.lr > 0, "lr", "must be > 0")
        _check(self.schedule in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}")
        _check(self.warmup >= 0, "warmup", "must be >= 0")

    def resolve(self, per_epoch: int) -> TrainConfig:
        """This config with ``max_steps``, ``warmup`` and ``eval_every`` in steps, for
        ``per_epoch`` optimiser steps per pass over the training split."""
        total = math.ceil(self.epochs * per_epoch) if self.epochs else self.max_steps
        warmup = round(self.warmup_ratio * total) if self.warmup_ratio else self.warmup
        every = self.eval_every or per_epoch
        return dataclasses.replace(self, max_steps=total, warmup=warmup, eval_every=every)


@dataclass(frozen=True)
class ScalingConfig:
    """Ray Train workers per trial."""

    num_workers: int = 1
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = field(default_factory=lambda: {"CPU": 1.0})

    def __post_init__(self) -> None:
        _check(self.num_workers >= 1, "num_workers", "must be >= 1")
        for name, amount in self.resources_per_worker.items():
            _check(amount >= 0, "resources_per_worker", f"{name} = {amount} must be >= 0")
        if self.use_gpu:
            _check(
                self.resources_per_worker.get("GPU", 1) > 0,
                "resources_per_worker",
                "GPU must be > 0 with use_gpu: true",
            )


@dataclass(frozen=True)
class Config:
    task: TaskConfig = field(default_factory=SparsityConfig)  # the task's own Config class
    model: ModelConfig = field(default_factory=ModelConfig)
    kernel: KernelConfig = field(default_factory=KernelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)


# ---------------------------------------------------------------------------- study sections

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "int")
SEARCHERS = ("optuna", "grid", "random")
FINITE = ("choice", "grid")


@dataclass(frozen=True)
class Param:
    """One searched dimension: ``{choice: [...]}`` or ``{grid: [...]}`` (a finite list),
    ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}`` or ``{int: [lo, hi]}``, optionally
    ``when: {key: [values]}`` (used only when an earlier searched key took one of those
    values). ``searcher: grid`` runs every combination of the finite lists; ``random``
    draws each value uniformly (log-uniformly for loguniform); ``optuna`` lets TPE pick,
    except ``{grid: [...]}`` lists: every combination of those gets its own TPE search
    over the other dimensions (``Study.points``, ``Study.optuna_space``)."""

    kind: str
    values: tuple
    when: tuple[tuple[str, tuple], ...] = ()

    def active(self, sampled: Mapping[str, Any]) -> bool:
        return all(k in sampled and sampled[k] in vals for k, vals in self.when)


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
    source: str = "<dict>"

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


STUDY_KEYS = (
    "name",
    "config",
    "search",
    "searcher",
    "seeds",
    "variants",
    "objective",
    "budget",
    "scheduler",
    "optuna",
    "seed",
    "smoke",
)


# ---------------------------------------------------------------------------- validation helpers


class _Where:
    """Maps dotted keys to 'file:line' for error messages."""

    def __init__(self, source: str, lines: Mapping[str, int] | None = None) -> None:
        self.source = source
        self.lines = dict(lines or {})

    def __call__(self, dotted: str) -> str:
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            line = self.lines.get(".".join(parts[:n]))
            if line is not None:
                return f"{self.source}:{line}"
        return self.source


def _unknown(where: _Where, dotted: str, key: str, valid: typing.Iterable[str]) -> ConfigError:
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(
        f"{where(dotted)}: unknown key {dotted!r}{hint}; valid keys here: {', '.join(valid)}"
    )


def _coerce(value: Any, tp: Any, dotted: str, where: _Where) -> Any:
    """Check ``value`` against the annotation ``tp``; ints widen to float, '1e-3' parses."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{where(dotted)}: {dotted} = {value!r} is not a valid {_type_name(tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise bad from None
        if number is None:
            raise bad
        if not math.isfinite(number):
            raise ConfigError(f"{where(dotted)}: {dotted} = {value!r} must be a finite number")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if origin is dict:
        if not isinstance(value, Mapping):
            raise bad
        _, vt = typing.get_args(tp)
        return {str(k): _coerce(v, vt, f"{dotted}.{k}", where) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, dotted, where)
            except ConfigError:
                pass
        raise bad
    raise TypeError(f"unsupported annotation {tp}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _build(cls: type, data: Any, prefix: str, where: _Where) -> Any:
    """Construct dataclass ``cls`` from a mapping, strictly."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{where(prefix)}: {prefix or 'the file'} must be a mapping, got {data!r}"
        )
    if cls is TaskConfig:  # the task section's fields depend on the task
        name = data.get("name", Config().task.name)
        if name not in TASKS:
            dotted = f"{prefix}.name" if prefix else "name"
            raise ConfigError(
                f"{where(dotted)}: {dotted}: unknown task {name!r}; valid tasks: {', '.join(TASKS)}"
            )
        cls = TASKS[name].Config
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise _unknown(where, dotted, str(key), fields)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, dotted, where)
        else:
            kwargs[key] = _coerce(value, tp, dotted, where)
    try:
        return cls(**kwargs)
    except _FieldError as e:
        dotted = f"{prefix}.{e.field_name}" if prefix else e.field_name
        raise ConfigError(f"{where(dotted)}: {dotted}: {e}") from None


# ---------------------------------------------------------------------------- dotted names


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Config -> {'task.name': ..., 'kernel.num_features': ...} (dict fields stay whole)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, key + "."))
        else:
            out[key] = value
    return out


COMMON_TASK_KEYS = tuple(f"task.{f.name}" for f in dataclasses.fields(TaskConfig))


def config_keys(task: str | None = None) -> list[str]:
    """The dotted config keys for ``task`` (default: the default task)."""
    cfg = Config() if task is None else Config(task=TASKS[task].Config())
    return list(flatten(cfg))


def all_config_keys() -> list[str]:
    """Dotted config keys of every task."""
    return list(dict.fromkeys(k for name in TASKS for k in config_keys(name)))


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Config:
    return _build(Config, data, "", _Where(source))


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a.b': 1} -> {'a': {'b': 1}}."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *head, last = key.split(".")
        node = out
        for part in head:
            node = node.setdefault(part, {})
        node[last] = value
    return out


FILE_KEYS = ("model.init_from", "task.tokenizer")  # config keys naming files a run reads
STUDY_REF = "study:"  # a FILE_KEYS value "study:NAME": from study NAME (tune.resolve_refs)


def study_refs(flat: Mapping[str, Any]) -> dict[str, str]:
    """{key: NAME} for the ``FILE_KEYS`` of dotted config ``flat`` set to ``study:NAME``."""
    return {
        k: flat[k].removeprefix(STUDY_REF)
        for k in FILE_KEYS
        if isinstance(flat.get(k), str) and flat[k].startswith(STUDY_REF)
    }


def siblings(a: str, b: str) -> bool:
    """Tasks whose config sections have the same fields and defaults apart from the name."""

    def section(task: str) -> dict[str, Any]:
        return {k: v for k, v in to_dict(TASKS[task].Config()).items() if k != "name"}

    return section(a) == section(b)


def with_overrides(
    cfg: Config, overrides: Mapping[str, Any], where: _Where | None = None
) -> Config:
    """A copy of ``cfg`` with dotted keys replaced (validated as if written in the file)."""
    where = where or _Where("<override>")
    task = overrides.get("task.name", cfg.task.name)
    if task not in TASKS:
        raise ConfigError(f"{where('task.name')}: unknown task {task!r}; valid: {', '.join(TASKS)}")
    valid = config_keys(task)
    for key in overrides:
        if key not in valid:
            raise _unknown(where, key, key, valid)
    current = flatten(cfg)
    if task != cfg.task.name and not siblings(task, cfg.task.name):
        # another task: start from its defaults (sibling tasks, such as the GLUE tasks,
        # whose sections differ only in the name, keep the section)
        current = {k: v for k, v in current.items() if not k.startswith("task.")}
        current.update({k: v for k, v in flatten(cfg).items() if k in COMMON_TASK_KEYS})
        current.pop("task.name")
    merged = nest({**current, **overrides})
    return _build(Config, merged, "", where)


def parse_value(text: str) -> Any:
    """A ``--set key=value`` value, read as YAML (numbers, booleans, lists)."""
    return yaml.safe_load(text) if text.strip() else ""


# ---------------------------------------------------------------------------- YAML with lines


def _load_yaml(text: str, source: str) -> tuple[Any, dict[str, int]]:
    """Parse YAML keeping the line of every mapping key (dotted path -> line); reject duplicates."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    lines: dict[str, int] = {}

    def walk(n: yaml.Node, prefix: str) -> None:
        if isinstance(n, yaml.MappingNode):
            seen = set()
            for k, v in n.value:
                key = f"{prefix}.{k.value}" if prefix else str(k.value)
                if key in seen:
                    raise ConfigError(f"{source}:{k.start_mark.line + 1}: duplicate key {key!r}")
                seen.add(key)
                lines[key] = k.start_mark.line + 1
                walk(v, key)

    if node is None:
        return {}, lines
    walk(node, "")
    return yaml.safe_load(text), lines


def _parse_param(
    key: str, spec: Any, earlier: Mapping[str, Any], base: Config, where: _Where
) -> Param:
    dotted = f"search.{key}"
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"{where(dotted)}: search.{key} must be a mapping such as {{choice: [a, b]}}; "
            f"valid distributions: {', '.join(DISTRIBUTIONS)}"
        )
    kinds = [k for k in spec if k != "when"]
    for k in kinds:
        if k not in DISTRIBUTIONS:
            raise _unknown(where, f"{dotted}.{k}", k, (*DISTRIBUTIONS, "when"))
    if len(kinds) != 1:
        raise ConfigError(
            f"{where(dotted)}: {dotted} needs exactly one of {', '.join(DISTRIBUTIONS)}"
        )
    kind = kinds[0]
    values = spec[kind]
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where(dotted)}: {dotted}.{kind} must be a non-empty list")
    if kind not in FINITE and len(values) != 2:
        raise ConfigError(f"{where(dotted)}: {dotted}.{kind} must be [low, high]")
    # every value must make a valid config on its own
    checked = []
    vwhere = _Where(where.source, {key: where.lines.get(dotted)})
    for v in values:
        cfg = with_overrides(base, {key: v}, vwhere)
        checked.append(flatten(cfg)[key])
    if kind not in FINITE and not checked[0] < checked[1]:
        raise ConfigError(f"{where(dotted)}: {dotted}.{kind} needs low < high, got {values}")
    when = spec.get("when", {})
    if not isinstance(when, Mapping):
        raise ConfigError(f"{where(dotted)}: {dotted}.when must be a mapping {{key: [values]}}")
    conds = []
    for ck, cv in when.items():
        if ck not in earlier:
            raise ConfigError(
                f"{where(f'{dotted}.when.{ck}')}: {dotted}.when refers to {ck!r}, which is not a "
                f"searched key defined above it; searched so far: {', '.join(earlier) or 'none'}"
            )
        values_of = tuple(cv if isinstance(cv, list) else [cv])
        cwhere = _Where(where.source, {ck: where.lines.get(f"{dotted}.when.{ck}")})
        for v in values_of:  # each value must be in its key's domain (catches typos)
            with_overrides(base, {ck: v}, cwhere)
        conds.append((ck, values_of))
    return Param(kind, tuple(checked), tuple(conds))


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
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: a study file must be a mapping with keys {', '.join(STUDY_KEYS)}"
        )
    for key in data:
        if key not in STUDY_KEYS:
            raise _unknown(where, str(key), str(key), STUDY_KEYS)
    if "name" not in data:
        raise ConfigError(f"{source}: missing key 'name' (the study's name)")
    smoke_set = dict(data.get("smoke") or {}) if smoke else {}
    all_over = {**smoke_set, **dict(overrides or {})}
    sections = {}
    for k in ("objective", "budget", "scheduler", "optuna"):
        if not isinstance(data.get(k) or {}, Mapping):
            raise ConfigError(f"{where(k)}: {k} must be a mapping, got {data[k]!r}")
        sections[k] = dict(data.get(k) or {})
    top = {
        "name": data["name"],
        "seed": data.get("seed", 0),
        "seeds": data.get("seeds"),
        "variants": data.get("variants"),
    }
    search_raw = (
        dict(data.get("search") or {})
        if isinstance(data.get("search"), Mapping)
        else (data.get("search"))
    )
    cfg_over = {}
    base = _build(Config, data.get("config") or {}, "config", where)
    sections_of_config = tuple(f"{f.name}." for f in dataclasses.fields(Config))
    valid_over = [
        *config_keys(base.task.name),
        "name",
        "seed",
        "seeds",
        "variants",
        "search.<key>",
    ] + [
        f"{s}.{f.name}"
        for s, cls in (
            ("objective", Objective),
            ("budget", Budget),
            ("scheduler", Scheduler),
            ("optuna", OptunaSettings),
        )
        for f in dataclasses.fields(cls)
    ]
    task_keys = config_keys(all_over.get("task.name", base.task.name))
    for key, value in all_over.items():
        head, _, rest = key.partition(".")
        origin = _Where("--set" if key in (overrides or {}) else f"{source} smoke")
        if key in ("name", "seed", "seeds", "variants"):
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
    lines_cfg = {k.removeprefix("config."): v for k, v in where.lines.items()}
    base = with_overrides(base, cfg_over, _Where(source, lines_cfg))
    search_raw = search_raw or {}
    if not isinstance(search_raw, Mapping):
        raise ConfigError(f"{where('search')}: search must be a mapping of dotted keys")
    search: dict[str, Param] = {}
    valid = all_config_keys()
    for key, spec in search_raw.items():
        if key not in valid:
            raise _unknown(where, f"search.{key}", str(key), valid)
        if key in cfg_over:
            continue  # fixed by an override
        search[key] = _parse_param(key, spec, {**search, **cfg_over}, base, where)
    # conditions on a key fixed by an override are resolved against the fixed value
    fixed = flatten(base)
    resolved = {}
    for key, p in search.items():
        conds = tuple((k, v) for k, v in p.when if k in search)
        if all(fixed[k] in v for k, v in p.when if k not in search):
            resolved[key] = Param(p.kind, p.values, conds)
    searcher = _coerce(data.get("searcher", "optuna"), str, "searcher", where)
    if searcher not in SEARCHERS:
        raise ConfigError(
            f"{where('searcher')}: searcher {searcher!r} is not one of {', '.join(SEARCHERS)}"
        )
    seeds = top["seeds"] or []
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{where('seeds')}: seeds must be a list of integers, got {seeds!r}")
    for key, p in resolved.items():
        if searcher == "grid" and p.kind not in FINITE:
            raise ConfigError(
                f"{where(f'search.{key}')}: searcher: grid needs finite lists, but search.{key} "
                f"is {p.kind}; use {{grid: [...]}} or searcher: random / optuna"
            )
        searched = [k for k, _ in p.when if resolved.get(k, p).kind != "grid"]
        if searcher == "optuna" and p.kind == "grid" and searched:
            raise ConfigError(
                f"{where(f'search.{key}.when')}: search.{key} is a grid, so its points are "
                f"fixed before Optuna runs, but its when refers to {searched[0]!r}, which "
                "Optuna searches; make that key a grid too, or this one a choice"
            )
    if seeds and "train.seed" in resolved:
        raise ConfigError(
            f"{where('search.train.seed')}: train.seed is searched and also set by seeds; "
            "keep one of them"
        )
    variants = top["variants"] or []
    if not isinstance(variants, list) or not all(isinstance(v, Mapping) for v in variants):
        raise ConfigError(
            f"{where('variants')}: variants must be a list of mappings of dotted config keys"
        )
    for i, variant in enumerate(variants):
        for key in variant:
            if key in resolved:
                raise ConfigError(
                    f"{where('variants')}: variants[{i}] sets {key!r}, which is also searched"
                )
        with_overrides(base, dict(variant), _Where(f"{where('variants')}: variants[{i}]"))
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
    try:
        study = Study(
            name=name,
            config=base,
            search=resolved,
            objective=_build(Objective, sections["objective"], "objective", where),
            budget=_build(Budget, sections["budget"], "budget", where),
            scheduler=_build(Scheduler, sections["scheduler"], "scheduler", where),
            optuna=_build(OptunaSettings, sections["optuna"], "optuna", where),
            seed=_coerce(top["seed"], int, "seed", where),
            searcher=searcher,
            seeds=tuple(seeds),
            variants=tuple(dict(v) for v in variants),
            source=source,
        )
    except _FieldError as e:  # pragma: no cover - sections raise ConfigError already
        raise ConfigError(f"{source}: {e}") from None
    check_trials(study)
    return study


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


def load_study(
    path: str | Path, overrides: Mapping[str, Any] | None = None, smoke: bool = False
) -> Study:
    """Read and validate a study file (see search_spaces/quickstart.yaml for the format)."""
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
    return study
