"""Experiment configuration: frozen dataclasses, YAML loading, validation,
``--set`` overrides and sweep expansion (DESIGN §5).

Every mistake a user can make in a config ends in `ConfigError`, whose message
is one line naming the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

POLICIES = ("replace", "accumulate", "accumulate_subsample", "mix", "fresh")
SOURCE_KINDS = ("categorical", "markov", "text")
# keys whose values do not change a cell's trajectory, and so cannot be swept
MAX_VOCAB = 1 << 20  # tokens; a larger vocabulary cannot hold even a unigram table per cell
UNSWEPT = ("name", "replicates", "generations", "checkpoint.every", "checkpoint.keep")


class ConfigError(ValueError):
    """A user's mistake in a config: `where: key: message`, one line."""

    def __init__(self, where: str, key: str, message: str):
        self.where, self.key, self.message = where, key, message
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


@dataclass(frozen=True)
class SourceConfig:
    kind: str = "text"
    path: str | None = None
    vocab_size: int = 16
    zipf: float = 0.0
    probs: tuple[float, ...] | None = None
    order: int = 1
    concentration: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class RealConfig:
    sequences: int = 2000
    seq_len: int = 32
    heldout: int = 500


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "ngram"
    order: int = 2  # ngram
    smoothing: float = 0.0  # ngram
    d_model: int = 64  # transformer, from here on
    layers: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    tie: bool = False  # output layer = the token embedding's transpose
    steps: int = 500  # AdamW steps per generation
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 50  # steps of linear warm-up
    schedule: str = "cosine"  # cosine | constant (after warm-up)
    grad_clip: float = 1.0  # global-norm clipping
    init: str = "fresh"  # fresh | continue (fine-tune the previous generation's model)
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (GPU)


# the model keys each family reads; the others cannot change a trajectory
MODEL_KEYS = {
    "ngram": ("order", "smoothing"),
    "transformer": ("d_model", "layers", "heads", "mlp_ratio", "tie", "steps", "batch_size", "learning_rate",
                    "weight_decay", "warmup", "schedule", "grad_clip", "init", "dtype"),
}


MODEL_KINDS = tuple(MODEL_KEYS)


def unused_model_keys(kind: str) -> list[str]:
    """Dotted model keys that the model family `kind` does not read."""
    used = set(MODEL_KEYS.get(kind, ()))
    return [f"model.{k}" for family in MODEL_KEYS.values() for k in family if k not in used]


@dataclass(frozen=True)
class GenerateConfig:
    sequences: int = 2000
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


@dataclass(frozen=True)
class CorpusConfig:
    policy: str = "replace"
    train_sequences: int = 2000
    real_fraction: float = 0.0


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 10
    keep: int = 3


@dataclass(frozen=True)
class Config:
    name: str = "run"
    seed: int = 0
    replicates: int = 32
    generations: int = 50
    source: SourceConfig = field(default_factory=SourceConfig)
    real: RealConfig = field(default_factory=RealConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    sweep: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def get(self, dotted: str) -> Any:
        obj: Any = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["sweep"] = {k: list(v) for k, v in self.sweep}
        if d["source"]["probs"] is not None:
            d["source"]["probs"] = list(d["source"]["probs"])
        return d


SECTIONS = {
    "source": SourceConfig,
    "real": RealConfig,
    "model": ModelConfig,
    "generate": GenerateConfig,
    "corpus": CorpusConfig,
    "checkpoint": CheckpointConfig,
}


def _leaf_keys() -> list[str]:
    keys = [f.name for f in dataclasses.fields(Config) if f.name not in SECTIONS and f.name != "sweep"]
    for section, cls in SECTIONS.items():
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
    return keys


LEAF_KEYS = _leaf_keys()
ALL_KEYS = LEAF_KEYS + list(SECTIONS) + ["sweep"]


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
    if ftype == "float":
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise bad("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
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
    for key, value in raw.items():
        key = str(key)
        if key == "sweep":
            flat["sweep"] = value
        elif key in SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(where, key, f"expected a mapping, got {value!r}")
            for sub, v in value.items():
                dotted = f"{key}.{sub}"
                if dotted not in LEAF_KEYS:
                    raise _unknown(where, dotted)
                flat[dotted] = v
        elif key in LEAF_KEYS:
            flat[key] = value
        else:
            raise _unknown(where, key)
    return flat


def _build(where: str, flat: dict[str, Any], sweep: tuple) -> Config:
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, value in flat.items():
        value = _coerce(where, key, value)
        section, _, name = key.rpartition(".")
        (sections[section] if section else top)[name] = value
    return Config(**top, **{s: SECTIONS[s](**kw) for s, kw in sections.items()}, sweep=sweep)


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


def _parse_sweep(where: str, raw: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ConfigError(where, "sweep", "expected a mapping of dotted keys to lists of values")
    out = []
    for key, values in raw.items():
        key = str(key)
        wkey = f"sweep.{key}"
        if key not in LEAF_KEYS:
            near = difflib.get_close_matches(key, LEAF_KEYS, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]}?" if near else ""
            raise ConfigError(where, wkey, f"sweeps over a key that does not exist{hint}")
        if key in UNSWEPT:
            raise ConfigError(where, wkey, "this key cannot be swept")
        if not isinstance(values, list) or not values:
            raise ConfigError(where, wkey, f"expected a non-empty list of values, got {values!r}")
        coerced = tuple(_coerce(where, key, v, label=wkey) for v in values)
        if len(set(map(repr, coerced))) != len(coerced):
            raise ConfigError(where, wkey, "lists a value twice")
        out.append((key, coerced))
    return tuple(out)


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
    flat = _flatten(where, raw)
    for expr in overrides:
        key, value = parse_set(expr)
        if key == "sweep" or key.startswith("sweep."):
            sweep_raw = dict(flat.get("sweep") or {})
            if key == "sweep":
                sweep_raw = value
            else:
                sweep_raw[key[len("sweep."):]] = value
            flat["sweep"] = sweep_raw
            continue
        if key in SECTIONS:
            raise ConfigError(f"--set {expr}", key, f"is a section; set one of its keys, e.g. {key}.{dataclasses.fields(SECTIONS[key])[0].name}")
        if key not in LEAF_KEYS:
            raise _unknown(f"--set {expr}", key)
        _coerce(f"--set {expr}", key, value)
        flat[key] = value
    sweep = _parse_sweep(where, flat.pop("sweep", None))
    base = _build(where, flat, sweep)
    _explicit_vocab = "source.vocab_size" in flat
    if base.source.probs is not None and not _explicit_vocab:
        base = with_values(base, {"source.vocab_size": len(base.source.probs)})
    if not sweep:  # with a sweep, only the effective configs are run, so only they are checked
        validate(where, base, explicit_vocab=_explicit_vocab, swept={})
    for point in sweep_points(base):
        validate(where, point.config, explicit_vocab=_explicit_vocab, swept=dict(point.values))
    return base


# ---------------------------------------------------------------- validation


def _require(ok: bool, where: str, key: str, message: str, swept: dict) -> None:
    if not ok:
        if key in swept:
            raise ConfigError(where, f"sweep.{key}", f"value {swept[key]!r}: {message}")
        raise ConfigError(where, key, message)


def validate(where: str, cfg: Config, explicit_vocab: bool = True, swept: dict | None = None) -> None:
    """Range and cross-key checks on one effective config (no file access)."""
    s = swept or {}
    req = lambda ok, key, msg: _require(ok, where, key, msg, s)  # noqa: E731
    req(cfg.replicates >= 1, "replicates", f"must be >= 1, got {cfg.replicates}")
    req(cfg.generations >= 0, "generations", f"must be >= 0, got {cfg.generations}")
    req(0 <= cfg.seed < 2**32, "seed", f"must be in [0, 2**32), got {cfg.seed}")
    src = cfg.source
    req(src.kind in SOURCE_KINDS, "source.kind", f"must be one of {', '.join(SOURCE_KINDS)}, got {src.kind!r}")
    req(0 <= src.seed < 2**32, "source.seed", f"must be in [0, 2**32), got {src.seed}")
    if src.kind in ("categorical", "markov") and src.probs is None:
        req(2 <= src.vocab_size <= MAX_VOCAB, "source.vocab_size", f"must be in [2, {MAX_VOCAB}], got {src.vocab_size}")
    if src.kind == "categorical":
        req(src.zipf >= 0, "source.zipf", f"must be >= 0, got {src.zipf}")
        if src.probs is not None:
            req(len(src.probs) >= 2, "source.probs", f"needs at least 2 probabilities, got {len(src.probs)}")
            req(all(p >= 0 for p in src.probs), "source.probs", "probabilities must be >= 0")
            total = sum(src.probs)
            req(abs(total - 1.0) <= 1e-6, "source.probs", f"probabilities must sum to 1, they sum to {total:.6g}")
            req(
                not explicit_vocab or src.vocab_size == len(src.probs),
                "source.probs",
                f"has {len(src.probs)} entries but source.vocab_size is {src.vocab_size}",
            )
    if src.kind == "markov":
        req(src.order >= 1, "source.order", f"must be >= 1, got {src.order}")
        req(src.concentration > 0, "source.concentration", f"must be > 0, got {src.concentration}")
    real = cfg.real
    req(real.sequences >= 1, "real.sequences", f"must be >= 1, got {real.sequences}")
    req(real.seq_len >= 1, "real.seq_len", f"must be >= 1, got {real.seq_len}")
    req(real.heldout >= 1, "real.heldout", f"must be >= 1, got {real.heldout}")
    model = cfg.model
    req(model.kind in MODEL_KINDS, "model.kind", f"must be ngram or transformer, got {model.kind!r}")
    if model.kind == "transformer":
        _validate_transformer(req, model)
    else:
        req(model.order >= 1, "model.order", f"must be >= 1, got {model.order}")
        req(model.smoothing >= 0, "model.smoothing", f"must be >= 0, got {model.smoothing}")
        req(
            model.order - 1 < cfg.real.seq_len,
            "model.order",
            f"an order-{model.order} model conditions on {model.order - 1} tokens, so it needs "
            f"real.seq_len > {model.order - 1} (got {cfg.real.seq_len}) to ever see a full context",
        )
    gen = cfg.generate
    req(gen.sequences >= 1, "generate.sequences", f"must be >= 1, got {gen.sequences}")
    req(gen.temperature >= 0, "generate.temperature", f"must be >= 0, got {gen.temperature}")
    req(gen.top_k >= 0, "generate.top_k", f"must be >= 0 (0 = off), got {gen.top_k}")
    req(0 < gen.top_p <= 1, "generate.top_p", f"must be in (0, 1], got {gen.top_p}")
    corpus = cfg.corpus
    req(corpus.policy in POLICIES, "corpus.policy", f"must be one of {', '.join(POLICIES)}, got {corpus.policy!r}")
    req(0 <= corpus.real_fraction <= 1, "corpus.real_fraction", f"must be in [0, 1], got {corpus.real_fraction}")
    req(corpus.train_sequences >= 1, "corpus.train_sequences", f"must be >= 1, got {corpus.train_sequences}")
    m, k, n0 = corpus.train_sequences, gen.sequences, real.sequences
    if corpus.policy == "accumulate_subsample":
        req(
            m <= n0 + k,
            "corpus.train_sequences",
            f"accumulate_subsample draws {m} sequences without replacement but the corpus "
            f"at generation 1 holds only real.sequences + generate.sequences = {n0 + k}",
        )
    if corpus.policy in ("mix", "fresh"):
        r = real_count(corpus.real_fraction, m)
        req(
            k >= m - r,
            "generate.sequences",
            f"{corpus.policy} draws {m - r} generated sequences per generation without "
            f"replacement (train_sequences {m}, real_fraction {corpus.real_fraction}); "
            f"generate.sequences = {k} is too small",
        )
        if corpus.policy == "mix":
            req(r <= n0, "real.sequences", f"mix draws {r} real sequences without replacement; real.sequences = {n0} is too small")
    ck = cfg.checkpoint
    req(ck.every >= 0, "checkpoint.every", f"must be >= 0, got {ck.every}")
    req(ck.keep >= 1, "checkpoint.keep", f"must be >= 1, got {ck.keep}")


def _validate_transformer(req, model: ModelConfig) -> None:
    for key in ("d_model", "layers", "heads", "mlp_ratio", "steps", "batch_size"):
        req(getattr(model, key) >= 1, f"model.{key}", f"must be >= 1, got {getattr(model, key)}")
    req(model.d_model % model.heads == 0, "model.heads",
        f"must divide model.d_model = {model.d_model} (heads split it), got {model.heads}")
    req(model.learning_rate > 0, "model.learning_rate", f"must be > 0, got {model.learning_rate}")
    req(model.weight_decay >= 0, "model.weight_decay", f"must be >= 0, got {model.weight_decay}")
    req(model.warmup >= 0, "model.warmup", f"must be >= 0, got {model.warmup}")
    req(model.grad_clip > 0, "model.grad_clip", f"must be > 0, got {model.grad_clip}")
    req(model.schedule in ("cosine", "constant"), "model.schedule", f"must be cosine or constant, got {model.schedule!r}")
    req(model.init in ("fresh", "continue"), "model.init", f"must be fresh or continue, got {model.init!r}")
    req(model.dtype in ("float32", "bfloat16"), "model.dtype", f"must be float32 or bfloat16, got {model.dtype!r}")


def real_count(real_fraction: float, train_sequences: int) -> int:
    """round(rho * m) with halves rounded up: the real sequences of mix / fresh."""
    return int(math.floor(real_fraction * train_sequences + 0.5))


# ---------------------------------------------------------------- sweeps


@dataclass(frozen=True)
class SweepPoint:
    index: int
    values: tuple[tuple[str, Any], ...]  # (dotted key, value) for each swept key
    config: Config  # the effective config: base with the values applied, no sweep


def with_values(cfg: Config, values: dict[str, Any]) -> Config:
    """A copy of cfg with dotted keys set (values already coerced)."""
    top: dict[str, Any] = {}
    by_section: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, _, name = key.rpartition(".")
        if section:
            by_section.setdefault(section, {})[name] = value
        else:
            top[name] = value
    for section, kw in by_section.items():
        top[section] = dataclasses.replace(getattr(cfg, section), **kw)
    return dataclasses.replace(cfg, **top)


def sweep_points(cfg: Config) -> list[SweepPoint]:
    """The grid's product, in the order the sweep lists keys and values."""
    keys = [k for k, _ in cfg.sweep]
    grids = [v for _, v in cfg.sweep]
    points = []
    for i, combo in enumerate(itertools.product(*grids)):
        values = tuple(zip(keys, combo))
        point = with_values(dataclasses.replace(cfg, sweep=()), dict(values))
        if "source.probs" in dict(values) and point.source.probs is not None:
            point = with_values(point, {"source.vocab_size": len(point.source.probs)})
        points.append(SweepPoint(i, values, point))
    return points


# ---------------------------------------------------------------- identity


def trajectory_dict(cfg: Config, source_digest: str) -> dict:
    """The keys a cell's random streams depend on, canonicalised (DESIGN §7.1).

    Keys that cannot change the trajectory (name, replicates, generations,
    checkpoint, real.heldout, unused policy parameters, the keys of the other
    model family) are left out; the
    source is identified by the digest of its content (the text, or the exact
    table of a categorical/markov world), not by the keys that made it.
    """
    d = cfg.to_dict()
    for k in ("name", "replicates", "generations", "sweep", "checkpoint"):
        d.pop(k)
    for key in unused_model_keys(cfg.model.kind):
        d["model"].pop(key.split(".", 1)[1])
    d["source"] = {"kind": d["source"]["kind"], "content": source_digest}  # the digest is the world
    d["real"].pop("heldout")  # the yardstick, not the trajectory
    if d["corpus"]["policy"] not in ("mix", "fresh"):
        d["corpus"].pop("real_fraction")
    if d["corpus"]["policy"] not in ("accumulate_subsample", "mix", "fresh"):
        d["corpus"].pop("train_sequences")
    return d


def stable_hash(obj: Any) -> tuple[int, int]:
    """Two 32-bit words of the SHA-256 of canonical JSON: a key that never drifts."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    h = hashlib.sha256(blob).digest()
    return int.from_bytes(h[:4], "little"), int.from_bytes(h[4:8], "little")


def dump(cfg: Config) -> str:
    """The resolved config as YAML (every key, with its sweep)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
