"""The search space of a study file: one ``Param`` per searched dotted config key.

    search:
      kernel.name: {choice: [softmax, prf, gmm_prf]}
      kernel.num_features: {choice: [8, 32], when: {kernel.name: [prf, gmm_prf]}}
      train.lr: {loguniform: [1.0e-4, 1.0e-2]}

Distributions: ``choice`` / ``grid`` (finite lists), ``uniform`` / ``loguniform`` / ``int``
([low, high]); ``when`` makes a key conditional on keys searched above it. Every value is
checked against the config on its own (so a typo fails here, naming file and line).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lk_study.config import (
    Config,
    ConfigError,
    _unknown,
    _Where,
    all_config_keys,
    flatten,
    with_overrides,
)

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "int")
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


def parse_param(
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


def parse_search(
    search_raw: Any, cfg_over: Mapping[str, Any], base: Config, where: _Where
) -> dict[str, Param]:
    """The searched dimensions; a key fixed by an override leaves the search, and conditions
    on it are resolved against the fixed value."""
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
        search[key] = parse_param(key, spec, {**search, **cfg_over}, base, where)
    fixed = flatten(base)
    resolved = {}
    for key, p in search.items():
        conds = tuple((k, v) for k, v in p.when if k in search)
        if all(fixed[k] in v for k, v in p.when if k not in search):
            resolved[key] = Param(p.kind, p.values, conds)
    return resolved
