"""Quality filters (`generate.filter`): which generated sequences enter the corpus.

With a filter, generation g draws `oversample * k` candidates from M_g
(the same stream as an unfiltered S_g: candidate j depends only on the key
and j), and admits the first k that pass, in draw order; a shortfall is
admitted as nothing. A candidate's score is its mean log-likelihood per
token (nats) under

| kind        | scored under                                                            |
|-------------|-------------------------------------------------------------------------|
| truth       | the true source (categorical, markov)                                   |
| noisy_truth | the same, plus Gaussian noise of sd `noise` (an imperfect verifier)     |
| self        | the generating model M_g (`Family.score`)                               |
| reference   | an add-one smoothed count model of order `Family.reference_order`,      |
|             | fitted on `reference_sequences` real sequences drawn once per replicate |

and it passes when score >= `threshold` (null: no threshold) and it ranks
among the best round(keep_fraction x candidates) (ties by draw order).
`dedup` scores nothing: a candidate passes unless it repeats an earlier
candidate of the generation or a sequence the corpus state holds (64-bit
hashes, `kernels/select.novel`); a counting family then keeps its corpus as
tokens, not counts, so that there is something to compare with.

The reference set is drawn from fold_in(real key, REFERENCE): independent of
R and of the held-out set, and the same for every sweep point of a
replicate that shares R (for a text source its windows come from the
training region, as R's do, and may overlap R's by chance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from collapse_sim.kernels import ngram, select
from collapse_sim.keys import NOISE, REFERENCE
from collapse_sim.schema import SCORING_FILTERS
from collapse_sim.sources import bos_table


@dataclass(frozen=True)
class FilterSpec:
    """The static part of a group's filter (its per-cell values are traced: `keys.CellParams`)."""

    kind: str = "none"
    oversample: int = 1
    reference_sequences: int = 0
    reference_order: int = 0

    @property
    def active(self) -> bool:
        return self.kind != "none"

    @property
    def scoring(self) -> bool:
        return self.kind in SCORING_FILTERS

    @property
    def keeps_tokens(self) -> bool:
        """The filter compares candidates with the corpus's sequences."""
        return self.kind == "dedup"

    def candidates(self, gen_capacity: int) -> int:
        """Candidate rows drawn per generation for a group whose largest k is `gen_capacity`."""
        return self.oversample * gen_capacity if self.active else gen_capacity


NONE = FilterSpec()


def filter_spec(generate_cfg, reference_order: int) -> FilterSpec:
    f = generate_cfg.filter
    if f.kind == "none":
        return NONE
    ref = f.kind == "reference"
    return FilterSpec(f.kind, f.oversample, f.reference_sequences if ref else 0, reference_order if ref else 0)


class FilterWorld(NamedTuple):
    truth_logp: jax.Array  # float32 [C_source, V]: ln P(next | context) (truth filters; else [0, V])


def world(fs: FilterSpec, source) -> FilterWorld:
    V = source.vocab_size
    if fs.kind in ("truth", "noisy_truth"):
        table = bos_table(source.stationary, source.transitions, source.markov_order)
        with np.errstate(divide="ignore"):
            return FilterWorld(jax.device_put(np.log(table).astype(np.float32)))
    return FilterWorld(jax.device_put(np.zeros((0, V), np.float32)))  # host arrays: no program to compile


def _scores(spec, world, cell, model, key, cand_NxL):
    """Mean log-likelihood per token of each candidate, float32 [N]."""
    fs, L, V = spec.filter, spec.seq_len, spec.vocab_size
    if fs.kind in ("truth", "noisy_truth"):
        ctx = ngram.context_ids(cand_NxL, spec.sampler.table_order, V)
        total = jnp.sum(world.filter.truth_logp[ctx, cand_NxL], axis=-1)
        if fs.kind == "noisy_truth":
            noise = jax.random.normal(jax.random.fold_in(key, NOISE), (cand_NxL.shape[0],))
            return total / L + cell.noise * noise
        return total / L
    if fs.kind == "self":
        return spec.family.score(spec, model, cand_NxL) / L
    # reference: an add-one smoothed count model fitted on real sequences
    ref_key = jax.random.fold_in(jax.random.wrap_key_data(cell.real_key), REFERENCE)
    rows = spec.sampler.sample(world.source, ref_key, fs.reference_sequences, L)
    counts = ngram.fit_counts(rows, jnp.ones(fs.reference_sequences, jnp.int32), fs.reference_order, V)
    probs = ngram.probs_from_counts(counts, 1.0)
    return jnp.sum(ngram.log_probs(cand_NxL, probs, fs.reference_order), axis=-1) / L


def admit(spec, world, cell, state, model, key, cand_NxL):
    """S_g from the candidates: (rows [gen_capacity, L], admitted, accept_rate).

    `state`: the corpus before S_g is admitted (dedup compares with it)."""
    fs, cs = spec.filter, spec.corpus
    n = fs.oversample * cell.k
    if fs.kind == "dedup":
        held = jnp.concatenate([state.real, state.synth]).astype(jnp.int32)
        valid = jnp.arange(held.shape[0]) < state.real.shape[0] + state.n_synth
        ok = select.novel(held, valid, cand_NxL, n)
    else:
        score = _scores(spec, world, cell, model, key, cand_NxL)
        ok = select.ranked(score, n, cell.keep_count) & (score >= cell.threshold)
    rows, admitted = select.first_passing(cand_NxL, ok, cell.k, cs.gen_capacity)
    accept = jnp.sum(ok.astype(jnp.int32)) / n
    return rows, admitted, accept.astype(jnp.float32)
