"""Experiment configuration: YAML loading, ``--set`` overrides, sweep
expansion and a cell's trajectory identity (DESIGN §5, §7.1).

The schema (every key, its default and type) is `collapse_sim.schema`, the
checks `collapse_sim.validate`; both are re-exported here. Every mistake a
user can make in a config ends in `ConfigError`, whose message is one line
naming the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from collapse_sim.identity import stable_hash, trajectory_dict
from collapse_sim.policies import NAMES as POLICIES
from collapse_sim.schema import (
    ALL_KEYS,
    LEAF_KEYS,
    MODEL_KEYS,
    MODEL_KINDS,
    SECTIONS,
    SOURCE_KINDS,
    UNSWEPT,
    CheckpointConfig,
    Config,
    ConfigError,
    CorpusConfig,
    GenerateConfig,
    ModelConfig,
    RealConfig,
    SourceConfig,
    real_count,
    unused_model_keys,
)
from collapse_sim.validate import validate

__all__ = [
    "ALL_KEYS",
    "LEAF_KEYS",
    "MODEL_KEYS",
    "MODEL_KINDS",
    "POLICIES",
    "SECTIONS",
    "SOURCE_KINDS",
    "UNSWEPT",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "CorpusConfig",
    "GenerateConfig",
    "ModelConfig",
    "RealConfig",
    "SourceConfig",
    "SweepPoint",
    "dump",
    "load",
    "parse_set",
    "real_count",
    "stable_hash",
    "resolve",
    "sweep_points",
    "trajectory_dict",
    "unused_model_keys",
    "validate",
    "with_values",
]


def _unknown(where: str, key: str) -> ConfigError:
    near = difflib.get_close_matches(key, ALL_KEYS, n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]}?" if near else ""
    return ConfigError(where, key, f"unknown key{hint}")


# ---------------------------------------------------------------- types


def _coerce(where: str, key: str, value: Any, label: str | None = None) -> Any:
    """Check and convert one leaf value to the type its default has.

    label: the name used in the error message (default: key).
    """
    section, _, name = key.rpartition(".")
    cls = SECTIONS[section] if section else Config
    ftype = {f.name: f.type for f in dataclasses.fields(cls)}[name]

    def bad(expected: str) -> ConfigError:
        return ConfigError(where, label or key, f"expected {expected}, got {value!r}")

    if ftype == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad("an integer")
        return value
    if ftype == "float | None" and value is None:
        return None
    if ftype in ("float", "float | None"):
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise bad("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number" if ftype == "float" else "a number or null")
        if not math.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if ftype == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if ftype == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if ftype == "str | None":
        if value is not None and not isinstance(value, str):
            raise bad("a string or null")
        return value
    if ftype == "tuple[float, ...] | None":
        if value is None:
            return None
        if not isinstance(value, (list, tuple)) or not value:
            raise bad("a non-empty list of numbers or null")
        out = []
        for v in value:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad("a non-empty list of numbers or null")
            out.append(float(v))
        return tuple(out)
    raise AssertionError(f"no coercion for {ftype}")  # pragma: no cover


# ---------------------------------------------------------------- loading


def _flatten(where: str, raw: Any) -> dict[str, Any]:
    """Nested mapping -> {dotted leaf key: value}; unknown keys are errors."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(where, "", "the top level must be a mapping of keys to values")
    flat: dict[str, Any] = {}

    def section(prefix: str, value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            raise ConfigError(where, prefix, f"expected a mapping, got {value!r}")
        for sub, v in value.items():
            dotted = f"{prefix}.{sub}" if prefix else str(sub)
            if dotted == "sweep":
                flat["sweep"] = v
            elif dotted in SECTIONS:
                section(dotted, v)
            elif dotted in LEAF_KEYS:
                flat[dotted] = v
            else:
                raise _unknown(where, dotted)

    section("", raw)
    return flat


def _build(where: str, flat: dict[str, Any], sweep: tuple, points: tuple = ()) -> Config:
    values = {key: _coerce(where, key, value) for key, value in flat.items()}
    return dataclasses.replace(with_values(Config(), values), sweep=sweep, points=points)


def parse_set(expr: str) -> tuple[str, Any]:
    """One ``--set key.path=value`` (value parsed as YAML) -> (key, value)."""
    where = f"--set {expr}"
    if "=" not in expr:
        raise ConfigError(where, "", "expected key.path=value")
    key, _, text = expr.partition("=")
    key = key.strip()
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(where, key, f"value is not valid YAML ({type(e).__name__})") from None
    return key, value


def _swept_key(where: str, key: str, wkey: str) -> None:
    if key not in LEAF_KEYS:
        near = difflib.get_close_matches(key, LEAF_KEYS, n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]}?" if near else ""
        raise ConfigError(where, wkey, f"sweeps over a key that does not exist{hint}")
    if key in UNSWEPT:
        raise ConfigError(where, wkey, "this key cannot be swept")


def _parse_points(where: str, raw: Any) -> tuple:
    """`sweep.points`: a non-empty list of mappings {dotted key: one value}."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(where, "sweep.points", "expected a non-empty list of mappings of dotted keys to values")
    out = []
    for i, point in enumerate(raw):
        wkey = f"sweep.points[{i}]"
        if not isinstance(point, dict) or not point:
            raise ConfigError(where, wkey, f"expected a non-empty mapping of dotted keys to values, got {point!r}")
        values = []
        for key, value in point.items():
            key = str(key)
            _swept_key(where, key, f"{wkey}.{key}")
            values.append((key, _coerce(where, key, value, label=f"{wkey}.{key}")))
        out.append(tuple(values))
    seen = set()
    for i, point in enumerate(out):
        if repr(sorted(point)) in seen:
            raise ConfigError(where, f"sweep.points[{i}]", "repeats an earlier point")
        seen.add(repr(sorted(point)))
    return tuple(out)


def _parse_sweep(where: str, raw: Any) -> tuple[tuple, tuple]:
    """(grid, points) of a config's sweep: {key: [values]} (a grid), or
    {points: [...]} and optionally grid: {key: [values]} (each point crossed with the grid)."""
    if raw is None:
        return (), ()
    if not isinstance(raw, dict):
        raise ConfigError(where, "sweep", "expected a mapping of dotted keys to lists of values")
    if "points" in raw or "grid" in raw:
        unknown = [str(k) for k in raw if k not in ("points", "grid")]
        if unknown:
            raise ConfigError(
                where, f"sweep.{unknown[0]}", "with points, the grid's keys go under sweep.grid (or: points, grid)"
            )
        grid = _parse_sweep(where, raw["grid"])[0] if raw.get("grid") is not None else ()
        points = _parse_points(where, raw.get("points"))
        both = {k for k, _ in grid} & {k for p in points for k, _ in p}
        if both:
            raise ConfigError(where, f"sweep.grid.{sorted(both)[0]}", "is also set by sweep.points; set it in one")
        return grid, points
    out = []
    for key, values in raw.items():
        key = str(key)
        wkey = f"sweep.{key}"
        _swept_key(where, key, wkey)
        if not isinstance(values, list) or not values:
            raise ConfigError(where, wkey, f"expected a non-empty list of values, got {values!r}")
        coerced = tuple(_coerce(where, key, v, label=wkey) for v in values)
        if len(set(map(repr, coerced))) != len(coerced):
            raise ConfigError(where, wkey, "lists a value twice")
        out.append((key, coerced))
    return tuple(out), ()


def load(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config, apply ``--set`` overrides, validate every sweep point.

    Raises ConfigError (one line naming the file and key) on any mistake.
    """
    where = str(path) if path is not None else "<defaults>"
    raw: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(where, "", "no such config file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(where, "", f"cannot read the config ({e.__class__.__name__})") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(where, "", f"not valid YAML{at}") from None
    return _from_raw(where, raw, overrides)


def resolve(config: str | Path | Config, overrides: list[str] = ()) -> Config:
    """A config from a YAML path (`load`) or a `Config`, with ``--set`` overrides applied and every sweep point
    validated."""
    if isinstance(config, Config):
        return _from_raw("<config>", config.to_dict(), overrides)
    return load(config, overrides)


def _from_raw(where: str, raw: Any, overrides: list[str]) -> Config:
    flat = _flatten(where, raw)
    for expr in overrides:
        key, value = parse_set(expr)
        if key == "sweep" or key.startswith("sweep."):
            sweep_raw = dict(flat.get("sweep") or {})
            if key == "sweep":
                sweep_raw = value
            else:
                sweep_raw[key[len("sweep.") :]] = value
            flat["sweep"] = sweep_raw
            continue
        if key in SECTIONS:
            raise ConfigError(
                f"--set {expr}",
                key,
                f"is a section; set one of its keys, e.g. {key}.{dataclasses.fields(SECTIONS[key])[0].name}",
            )
        if key not in LEAF_KEYS:
            raise _unknown(f"--set {expr}", key)
        _coerce(f"--set {expr}", key, value)
        flat[key] = value
    sweep, points = _parse_sweep(where, flat.pop("sweep", None))
    base = _build(where, flat, sweep, points)
    _explicit_vocab = "source.vocab_size" in flat
    if base.source.probs is not None and not _explicit_vocab:
        base = with_values(base, {"source.vocab_size": len(base.source.probs)})
    if not sweep and not points:  # with a sweep, only the effective configs are run, so only they are checked
        validate(where, base, explicit_vocab=_explicit_vocab, swept={})
    for point in sweep_points(base):
        validate(where, point.config, explicit_vocab=_explicit_vocab, swept=dict(point.values))
    return base


# ---------------------------------------------------------------- sweeps


@dataclass(frozen=True)
class SweepPoint:
    index: int
    values: tuple[tuple[str, Any], ...]  # (dotted key, value) for each swept key
    config: Config  # the effective config: base with the values applied, no sweep


def with_values(cfg, values: dict[str, Any]):
    """A copy of cfg (a Config or one of its sections) with dotted keys set (values already coerced)."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    for head, sub in nested.items():
        top[head] = with_values(getattr(cfg, head), sub)
    return dataclasses.replace(cfg, **top)


def sweep_points(cfg: Config) -> list[SweepPoint]:
    """The sweep's settings: each explicit point (in the order listed) crossed
    with the grid's product (in the order the grid lists keys and values).
    A point's values name every swept key; a key a point does not set takes
    the base config's value. The effective config, and so a cell's identity,
    depends only on the values, not on the form that named them."""
    keys = [k for k, _ in cfg.sweep]
    grids = [v for _, v in cfg.sweep]
    base = dataclasses.replace(cfg, sweep=(), points=())
    out = []
    for explicit in cfg.points or ((),):
        for combo in itertools.product(*grids):
            given = {**dict(explicit), **dict(zip(keys, combo))}
            values = tuple((k, given[k] if k in given else cfg.get(k)) for k in cfg.sweep_keys)
            point = with_values(base, dict(given))
            if "source.probs" in given and point.source.probs is not None:
                point = with_values(point, {"source.vocab_size": len(point.source.probs)})
            out.append(SweepPoint(len(out), values, point))
    return out


def dump(cfg: Config) -> str:
    """The resolved config as YAML (every key, with its sweep)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
