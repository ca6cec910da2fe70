"""Typed run configuration (frozen dataclasses), its strict builder and the YAML reader.

One name per concept everywhere: a config field ``kernel.num_features`` is the YAML key
``kernel: {num_features: ...}``, the search-space key ``kernel.num_features``, the Tune
parameter and the results column. Unknown or misspelt keys are errors naming the file, the
line, the key and the valid keys, raised before Ray starts. The study file (search space,
searcher, budget, ``load_study_file``) is lk_study.study, which builds on this module.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from lk_study.kernels import KERNELS
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


RUNNERS = ("auto", "trial", "train")


def runner(cfg: Config) -> str:
    """How a trial of ``cfg`` trains: "trial" (inside the Tune trial) or "train" (Ray Train)."""
    s = cfg.scaling
    if s.runner == "auto":
        return "trial" if s.num_workers == 1 else "train"
    return s.runner


@dataclass(frozen=True)
class ScalingConfig:
    """Workers per trial, and how a trial runs them (``runner``): ``trial`` trains inside the
    Tune trial itself (one worker; starts in about a second), ``train`` through a Ray Train
    ``TorchTrainer`` (DDP over ``num_workers``; a controller and a worker group per trial),
    ``auto`` = ``trial`` for one worker, else ``train``."""

    num_workers: int = 1
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = field(default_factory=lambda: {"CPU": 1.0})
    runner: str = "auto"

    def __post_init__(self) -> None:
        _check(self.num_workers >= 1, "num_workers", "must be >= 1")
        _check(self.runner in RUNNERS, "runner", f"must be one of {', '.join(RUNNERS)}")
        _check(
            self.runner != "trial" or self.num_workers == 1,
            "runner",
            "trial trains one worker inside the Tune trial; use train (or auto) for "
            f"num_workers: {self.num_workers}",
        )
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
