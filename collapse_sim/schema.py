"""The config schema: every key, its default and type, as frozen dataclasses (DESIGN §5).

Pure data, read by the loader (`config`), the checks (`validate`), the
fingerprint of a run directory and the families. `ConfigError` is the one
error a user's config can raise: one line naming the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

SOURCE_KINDS = ("categorical", "markov", "text")
# keys whose values do not change a cell's trajectory, and so cannot be swept
MAX_VOCAB = 1 << 20  # tokens; a larger vocabulary cannot hold even a unigram table per cell
UNSWEPT = ("name", "replicates", "generations", "checkpoint.every", "checkpoint.keep", "checkpoint.seconds")


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
    "transformer": (
        "d_model",
        "layers",
        "heads",
        "mlp_ratio",
        "tie",
        "steps",
        "batch_size",
        "learning_rate",
        "weight_decay",
        "warmup",
        "schedule",
        "grad_clip",
        "init",
        "dtype",
    ),
}


MODEL_KINDS = tuple(MODEL_KEYS)


def unused_model_keys(kind: str) -> list[str]:
    """Dotted model keys that the model family `kind` does not read."""
    used = set(MODEL_KEYS.get(kind, ()))
    return [f"model.{k}" for family in MODEL_KEYS.values() for k in family if k not in used]


FILTER_KINDS = ("none", "dedup", "truth", "noisy_truth", "self", "reference")
SCORING_FILTERS = ("truth", "noisy_truth", "self", "reference")  # those that admit by score


@dataclass(frozen=True)
class FilterConfig:
    """Quality filter on generated candidates (DESIGN §4; `collapse_sim.filters`)."""

    kind: str = "none"  # none | dedup | truth | noisy_truth | self | reference
    threshold: float | None = None  # admit a candidate whose score (mean nats per token) >= threshold
    keep_fraction: float = 1.0  # ... and that ranks among the best keep_fraction of the candidates
    oversample: int = 1  # candidates drawn per admitted sequence
    noise: float = 0.0  # noisy_truth: standard deviation of the Gaussian noise added to each score
    reference_sequences: int = 1000  # reference: real sequences the verifier is fitted on


@dataclass(frozen=True)
class GenerateConfig:
    sequences: int = 2000
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    filter: FilterConfig = field(default_factory=FilterConfig)


@dataclass(frozen=True)
class CorpusConfig:
    policy: str = "replace"
    train_sequences: int = 2000
    real_fraction: float = 0.0


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 10
    keep: int = 3
    seconds: float = 10.0  # at least this much run time between two `every` checkpoints (0: no floor)

    def cadence(self) -> str:
        """When checkpoints are made, in words."""
        if not self.every:
            return "at the end only"
        return f"every {self.every} generations" + (f", at most one per {self.seconds:g} s" if self.seconds else "")


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
    sweep: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # the grid: (key, values), a product
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # explicit sweep points, each crossed with the grid: ((key, value), ...) per point
    points: tuple[tuple[tuple[str, Any], ...], ...] = ()

    @property
    def sweep_keys(self) -> list[str]:
        """Every swept key: those the points set (in order of first use), then the grid's."""
        keys = [k for point in self.points for k, _ in point]
        keys += [k for k, _ in self.sweep]
        return list(dict.fromkeys(keys))

    def get(self, dotted: str) -> Any:
        obj: Any = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        grid = {k: list(v) for k, v in self.sweep}
        points = [{k: list(v) if isinstance(v, tuple) else v for k, v in point} for point in d.pop("points")]
        d["sweep"] = {"grid": grid, "points": points} if points else grid
        if d["source"]["probs"] is not None:
            d["source"]["probs"] = list(d["source"]["probs"])
        return d


# every section by its dotted name (a section may hold another: generate.filter)
SECTIONS = {
    "source": SourceConfig,
    "real": RealConfig,
    "model": ModelConfig,
    "generate": GenerateConfig,
    "generate.filter": FilterConfig,
    "corpus": CorpusConfig,
    "checkpoint": CheckpointConfig,
}


def _leaf_keys() -> list[str]:
    keys = [f.name for f in dataclasses.fields(Config) if f.name not in SECTIONS and f.name not in ("sweep", "points")]
    for section, cls in SECTIONS.items():
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls) if f"{section}.{f.name}" not in SECTIONS]
    return keys


LEAF_KEYS = _leaf_keys()
ALL_KEYS = LEAF_KEYS + list(SECTIONS) + ["sweep"]


def real_count(real_fraction: float, train_sequences: int) -> int:
    """round(rho * m) with halves rounded up: the real sequences of mix / fresh."""
    return int(math.floor(real_fraction * train_sequences + 0.5))
