"""The n-gram family: a count table over the previous order - 1 tokens.

A model is its counts of T_g and their Lidstone-smoothed probabilities
(`kernels/ngram.py`); it trains on counts, so the corpus hands it T_g's
counts and, under replace and accumulate, keeps no tokens. Its metrics are
exact over the table: held-out NLL and entropy from the held-out set's
(context, token) counts, divergences from the source's exact conditionals
over the full-length contexts weighted by their stationary probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import numpy as np

from collapse_sim.config import ConfigError
from collapse_sim.families.base import Counted, Family, GroupSpec
from collapse_sim.kernels import metrics, ngram, sampling
from collapse_sim.kernels.reduce import tree_sum
from collapse_sim.sources import bos_rows

INT32_MAX = 2**31 - 1


_fit_counts = jax.jit(ngram.fit_counts, static_argnums=(2, 3))  # one program, not op by op


@dataclass(frozen=True)
class NgramSpec:
    order: int
    vocab_size: int

    @property
    def contexts(self) -> int:
        return ngram.num_contexts(self.order, self.vocab_size)


class NgramWorld(NamedTuple):
    heldout_counts: jax.Array  # float32 [C, V]: the held-out set's (context, token) counts
    truth_index: jax.Array  # int32 [F]: table row of each full-length context
    truth_weight: jax.Array  # float32 [F]: its stationary probability
    truth_cond: jax.Array  # float32 [F, V]: P(next | context)


class NgramModel(NamedTuple):
    counts: jax.Array  # int32 [C, V]
    probs: jax.Array  # float32 [C, V]


class Ngram(Family):
    name = "ngram"
    traced = ("smoothing",)
    int_metrics = ("support",)

    def model_spec(self, model_cfg, vocab_size, seq_len):
        return NgramSpec(model_cfg.order, vocab_size)

    def reference_order(self, model_spec):
        return model_spec.order

    def count_rows(self, model_spec):
        return model_spec.contexts

    def check(self, spec, where, platform):
        V, n = spec.vocab_size, spec.model.order
        if (V + 1) ** n > INT32_MAX:
            raise ConfigError(
                where,
                "model.order",
                f"an order-{n} model over {V} tokens has too many contexts to index ((V+1)**order > 2**31)",
            )

    def memory_parts(self, spec: GroupSpec):
        cs = spec.corpus
        C, V, L = spec.model.contexts, spec.vocab_size, spec.seq_len
        W = sampling.cdf_width(V)
        item = np.dtype(cs.dtype).itemsize
        real_rows = cs.real_sequences if cs.stores_real else 0
        distinct = 4 * V * V if V * V <= (1 << 22) else 8 * cs.gen_capacity * L
        # a corpus kept as counts is counted while S_g is drawn (unfiltered):
        # no token buffer, only each row's context, draws and hash in the scan
        counted = cs.as_counts and not spec.filter.active
        return {
            "model.order": 4 * (8 * C * V + 2 * C * W) + distinct,  # the table and its derivatives
            # token buffers (the state and its successor) and the selection's scores
            "generations": (item * L * 2 + 12) * cs.capacity,
            # R drawn and counted at generation 0, and the real rows a corpus keeps
            "real.sequences": (item * L * 2 + 4 * L * 4 + 12) * real_rows + 4 * L * 4 * cs.real_sequences,
            "generate.sequences": (4 * 8 if counted else 4 * L * 4) * spec.sample_rows,  # the sample, contexts, draws
            "corpus.train_sequences": 0 if cs.as_counts else 4 * L * 4 * cs.train_sequences,  # T_g's tokens
        }

    def explain_part(self, spec, key):
        if key != "model.order":
            return None
        return (
            f"an order-{spec.model.order} table over {spec.vocab_size} tokens has "
            f"{spec.model.contexts * spec.vocab_size:,} entries"
        )

    def world(self, spec, source, heldout_NxL):
        V, order = spec.vocab_size, spec.model.order
        m = order - 1
        hc = _fit_counts(np.asarray(heldout_NxL, np.int32), np.ones(len(heldout_NxL), np.int32), order, V)
        if spec.has_truth:
            weight, cond = source.truth(m)
            index = bos_rows(m, m, V)  # the full-length contexts
        else:
            weight, cond, index = np.zeros(0), np.zeros((0, V)), np.zeros(0, np.int64)
        return NgramWorld(  # converted on the host: no program to compile
            jax.device_put(np.asarray(hc, np.float32)),
            jax.device_put(np.asarray(index, np.int32)),
            jax.device_put(np.asarray(weight, np.float32)),
            jax.device_put(np.asarray(cond, np.float32)),
        )

    def count(self, spec, tokens_NxL, weight_N):
        return ngram.fit_counts(tokens_NxL, weight_N, spec.model.order, spec.vocab_size)

    def train(self, spec, key, cell, tset, carried):
        return NgramModel(tset.counts, ngram.probs_from_counts(tset.counts, cell.model["smoothing"])), None

    def model_metric_names(self, spec):
        truth = ["kl_true", "tv_true", "sq_true"] if spec.has_truth else []
        return ["heldout_nll", *truth, "entropy", "support"]

    def model_metrics(self, spec, world: NgramWorld, model: NgramModel, fit):
        probs = model.probs
        out = {"heldout_nll": metrics.heldout_nll(probs, world.heldout_counts)}
        if spec.has_truth:
            kl, tv, sq = metrics.truth_divergences(probs[world.truth_index], world.truth_cond, world.truth_weight)
            out.update(kl_true=kl, tv_true=tv, sq_true=sq)
        out["entropy"] = metrics.heldout_entropy(probs, world.heldout_counts)
        out["support"] = metrics.support(model.counts, probs)
        return out

    def sample(self, spec, model, key, n, cell, weight_n=None):
        cdf = ngram.cdf_table(model.probs, cell.temperature, *spec.truncation(cell))
        out = ngram.sample(key, cdf, spec.model.order, spec.vocab_size, n, spec.seq_len, weight_n)
        if weight_n is None:
            return out, None
        tokens, counts, hashes = out
        return tokens, Counted(counts, hashes)

    def bigram_counts(self, spec, counted):
        return counted.counts if counted is not None and spec.model.order == 2 else None

    def score(self, spec, model, tokens_NxL):
        return tree_sum(ngram.log_probs(tokens_NxL, model.probs, spec.model.order), axis=-1)


NGRAM = Ngram()
