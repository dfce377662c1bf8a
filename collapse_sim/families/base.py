"""The interface every model family provides, and the static spec of a group.

The engine, the planner and the corpus call these methods and never ask which
family they hold. Every method is pure and static in `spec` (a `GroupSpec`,
hashable: compiled programs are keyed by it); those that run inside the
compiled step take arrays and return arrays or pytrees of them, one cell at a
time (the engine vmaps). `cell` is the cell's `keys.CellParams`: its traced
sampling values and `cell.model[name]` for each key in `traced`.

A family that trains on counts of (context, token) pairs (`count_rows` > 0)
is handed T_g as counts (`TrainingSet.counts`), and under the whole-corpus
policies its corpus is kept as counts; any other family is handed T_g as rows
(`TrainingSet.fetch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from collapse_sim.corpus import CorpusSpec
from collapse_sim.filters import NONE as NO_FILTER
from collapse_sim.filters import FilterSpec
from collapse_sim.sources import Sampler


class Counted(NamedTuple):
    """What a counting family's sampler tallies as it draws a sample: the
    weighted (context, token) counts, int32 [C, V], and the sequences'
    `metrics.sequence_hashes`, so that neither needs the tokens again."""

    counts: Any
    hashes: tuple


@dataclass(frozen=True)
class GroupSpec:
    """What every cell of a group shares: the static shapes and code paths."""

    family: Family
    model: Any  # the family's own static spec (hashable)
    corpus: CorpusSpec
    sampler: Sampler  # the source's static part
    has_truth: bool  # the source's exact conditionals are known (categorical, markov)
    filter: FilterSpec = NO_FILTER  # the quality filter on generated candidates
    truncates: bool = True  # some cell samples with top-k or top-p (False: no ranking compiled)

    @property
    def vocab_size(self) -> int:
        return self.corpus.vocab_size

    @property
    def seq_len(self) -> int:
        return self.corpus.seq_len

    def state_shapes(self, capacity: int | None = None):
        """(shape, dtype) of each field of one cell's corpus state, with the
        parameters the family carries."""
        return self.corpus.shapes(capacity, self.family.carried_shapes(self))

    def state_bytes(self) -> int:
        return self.corpus.state_bytes(self.family.carried_shapes(self))

    def metric_names(self) -> list[str]:
        """The metrics of a row, in column order, with the two token counts
        that make `real_fraction`."""
        names = self.family.model_metric_names(self)
        if self.seq_len >= 2:
            names += ["distinct_2"]
        return names + ["unique_seq", "accept_rate", "admitted", "real_tokens", "train_tokens"]

    def truncation(self, cell):
        """(top_k, top_p) for a cell's sampling filter: its values, or
        (None, None) in a group where no cell truncates, so the program
        leaves the ranking out (`sampling.filter_probs`)."""
        return (cell.top_k, cell.top_p) if self.truncates else (None, None)

    @property
    def sample_rows(self) -> int:
        """Sequences drawn from a model per generation (k, or the filter's candidates)."""
        return self.filter.candidates(self.corpus.gen_capacity)


class Family:
    """A model family. Subclasses set the attributes and implement the methods
    that raise NotImplementedError; one instance of each is registered in
    `collapse_sim.families`."""

    # the methods every family implements, and those of a family that trains on counts
    REQUIRED = (
        "model_spec",
        "memory_parts",
        "world",
        "train",
        "model_metric_names",
        "model_metrics",
        "sample",
        "score",
    )
    REQUIRED_COUNTING = ("count",)

    name: str = ""  # model.kind; its config keys are config.MODEL_KEYS[name]
    traced: tuple[str, ...] = ()  # of those, the ones passed per cell (float32), swept without recompiling
    int_metrics: tuple[str, ...] = ()  # its metrics stored as integers

    # ---- planning (host side)

    def model_spec(self, model_cfg, vocab_size: int, seq_len: int):
        """The family's static spec from the config's model section."""
        raise NotImplementedError

    def reference_order(self, model_spec) -> int:
        """Order of the count model the `reference` filter fits on real data."""
        return 2

    def count_rows(self, model_spec) -> int:
        """Rows C of the count table it trains on; 0 when it trains on tokens."""
        return 0

    def check(self, spec: GroupSpec, where: str, platform: str) -> None:
        """Raise config.ConfigError for a group it cannot run (on devices of `platform`)."""

    def memory_parts(self, spec: GroupSpec) -> dict[str, int]:
        """A generous estimate of the bytes one cell needs during generation 0
        or a step, whichever needs more, by the config key that drives each
        part (corpus buffers included)."""
        raise NotImplementedError

    def explain_part(self, spec: GroupSpec, key: str) -> str | None:
        """A reason, in words, why the part of `key` is large (None: its size says it)."""
        return None

    def cells_per_device(self, spec: GroupSpec, platform: str) -> int | None:
        """The most cells per device in one compiled batch (None: as memory allows)."""
        return None

    def pass_cells(self, spec: GroupSpec, platform: str) -> int | None:
        """Cells per pass within a device's batch (None: all at once, one vmap)."""
        return None

    def world(self, spec: GroupSpec, source, heldout_NxL: np.ndarray):
        """The arrays every cell of the group shares (held-out set, truth), a pytree."""
        raise NotImplementedError

    def carried_shapes(self, spec: GroupSpec) -> dict:
        """(shape, dtype) by name of the parameters a cell's state carries from
        one generation to the next ({}: none)."""
        return {}

    # ---- one cell, inside the compiled step

    def count(self, spec: GroupSpec, tokens_NxL, weight_N):
        """Counts of the weighted rows, int32 [C, V] (counting families)."""
        raise NotImplementedError

    def train(self, spec: GroupSpec, key, cell, tset, carried):
        """M_g from the training set (`corpus.TrainingSet`); `carried`: the
        state's parameters (None at generation 0). Returns (model, fit): the
        model as a pytree, and what training reports (the metrics read it)."""
        raise NotImplementedError

    def model_metric_names(self, spec: GroupSpec) -> list[str]:
        """The model's metrics, in column order."""
        raise NotImplementedError

    def model_metrics(self, spec: GroupSpec, world, model, fit) -> dict:
        """{name: scalar} for `model_metric_names`."""
        raise NotImplementedError

    def sample(self, spec: GroupSpec, model, key, n: int, cell, weight_n=None):
        """n sequences, int32 [n, L], and, given weights (counting families),
        a `Counted` of them (else None)."""
        raise NotImplementedError

    def bigram_counts(self, spec: GroupSpec, counted):
        """The sample's within-sequence bigram counts if `sample` already made
        them (order-2 counts), else None."""
        return None

    def score(self, spec: GroupSpec, model, tokens_NxL):
        """Log-likelihood of each sequence under the model, float32 [N], nats
        (the sum over its L positions; -inf where a token has probability 0)."""
        raise NotImplementedError

    def carry(self, spec: GroupSpec, model) -> dict:
        """The parameters the state carries to the next generation, by name."""
        return {}
