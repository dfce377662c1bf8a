"""Fixed-capacity per-cell token buffers and the mechanics of the corpus policies.

One cell at a time (the engine vmaps). What each policy keeps and trains on
is the table in `collapse_sim.policies`; this module reads it. A policy turns
the corpus state into the training set T_g and admits the new sample S_g.
Every buffer has a fixed capacity and a valid length; nothing past the valid
length is ever read (rows there carry weight 0 or are masked out of selection).

A model family trains either on tokens (the transformer: T_g as rows, read
in place) or on counts of (context, token) pairs (the n-gram: a family with
a count table, `CorpusSpec.count_rows` > 0). Under the policies whose T_g is
all of C_g (replace, accumulate), a counting family's corpus is its running
counts: no tokens are kept, and S_g is counted once, as it is sampled.

Memory per cell (L = seq_len, k = generate.sequences, N0 = real.sequences,
G = generations, C x V the count table):

| policy               | counting family               | token family                   |
|----------------------|-------------------------------|--------------------------------|
| replace              | C x V counts of S_{g-1}       | k x L                          |
| accumulate           | C x V counts of C_g           | (N0 + (G + 1) k) x L           |
| accumulate_subsample | (N0 + (G + 1) k) x L          | (N0 + (G + 1) k) x L           |
| mix                  | (N0 + k) x L                  | (N0 + k) x L                   |
| fresh                | k x L                         | k x L                          |

Under `model.init: continue` the state also carries the previous
generation's parameters (`model`: a dict of arrays named by their path in
the family's parameter tree).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from collapse_sim.draws import distinct_rows, top_rows
from collapse_sim.keys import FRESH, SELECT
from collapse_sim.policies import POLICIES, Policy

MODEL_PREFIX = "model."  # checkpoint names of the parameters a state carries: model.<path>


class CorpusState(NamedTuple):
    real: jax.Array  # [N0 or 0, L] the real set R, kept where the policy rereads it
    synth: jax.Array  # [capacity, L] generated sequences
    n_synth: jax.Array  # int32: valid rows of synth (under counts: sequences admitted so far)
    counts: jax.Array  # [C or 0, V] int32: counts of T_{g+1} where the corpus lives as counts
    model: dict = {}  # the previous model's parameters by path (init: continue)


class TrainingSet(NamedTuple):
    """T_g as the family needs it: `counts` (int32 [C, V]) for a counting
    family; else `fetch(idx)` -> rows idx (int32 [B], each in [0, n)) of T_g
    as int32 [B, L]. real_tokens / train_tokens: T_g's real and total tokens."""

    counts: jax.Array | None
    fetch: Callable | None
    n: jax.Array | None
    real_tokens: jax.Array
    train_tokens: jax.Array


def token_dtype(vocab_size: int):
    """Smallest unsigned integer dtype that holds every token id."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dt).max:
            return dt
    raise ValueError(vocab_size)  # pragma: no cover


@dataclass(frozen=True)
class CorpusSpec:
    """The static shape of one cell's corpus. It holds the synth buffer's
    capacity rather than G, so runs of different lengths under a policy whose
    buffer does not grow share their compiled programs (`for_run` makes it)."""

    policy: str
    real_sequences: int  # N0
    seq_len: int  # L
    gen_capacity: int  # the largest k of the group; each cell uses its own k rows
    train_sequences: int  # m
    vocab_size: int  # V
    count_rows: int = 0  # C, rows of the family's count table; 0: the family trains on tokens
    capacity: int = 0  # rows of the synth buffer for the whole run
    keep_tokens: bool = False  # a counting family's corpus kept as tokens all the same (a dedup filter reads them)

    @classmethod
    def for_run(
        cls,
        policy: str,
        real_sequences: int,
        seq_len: int,
        gen_capacity: int,
        train_sequences: int,
        generations: int,
        vocab_size: int,
        count_rows: int = 0,
        keep_tokens: bool = False,
    ) -> CorpusSpec:
        """The spec of a run of `generations` generations (G)."""
        capacity = POLICIES[policy].capacity(gen_capacity, generations, count_rows > 0 and not keep_tokens)
        return cls(
            policy,
            real_sequences,
            seq_len,
            gen_capacity,
            train_sequences,
            vocab_size,
            count_rows,
            capacity,
            keep_tokens,
        )

    @property
    def rule(self) -> Policy:
        return POLICIES[self.policy]

    @property
    def counting(self) -> bool:
        """The family trains on counts."""
        return self.count_rows > 0

    @property
    def as_counts(self) -> bool:
        """T_g lives as counts, not tokens."""
        return self.rule.as_counts(self.counting and not self.keep_tokens)

    @property
    def stores_real(self) -> bool:
        return self.rule.stores_real(self.counting and not self.keep_tokens)

    @property
    def dtype(self):
        return token_dtype(self.vocab_size)

    def shapes(self, capacity: int | None = None, model: dict | None = None) -> CorpusState:
        """(shape, dtype) of each field of one cell's state, as `init_state`
        makes it (synth buffer of `capacity` rows, default the spec's);
        `model`: (shape, dtype) of each parameter carried, by name."""
        cap = self.capacity if capacity is None else capacity
        dt, L = np.dtype(self.dtype), self.seq_len
        return CorpusState(
            ((self.real_sequences if self.stores_real else 0, L), dt),
            ((cap, L), dt),
            ((), np.dtype(np.int32)),
            ((self.count_rows if self.as_counts else 0, self.vocab_size), np.dtype(np.int32)),
            {name: (tuple(shape), np.dtype(d)) for name, (shape, d) in (model or {}).items()},
        )

    def state_bytes(self, model: dict | None = None) -> int:
        """Bytes of one cell's state (what stays resident between blocks)."""
        shapes = self.shapes(model=model)
        return sum(int(np.prod(shape)) * dt.itemsize for shape, dt in (*shapes[:4], *shapes.model.values()))


def zeros(shapes: CorpusState, n: int) -> CorpusState:
    """A batch of n all-zero states of the given `CorpusSpec.shapes`."""
    z = lambda sd: np.zeros((n, *sd[0]), sd[1])
    return CorpusState(*(z(sd) for sd in shapes[:4]), {name: z(sd) for name, sd in shapes.model.items()})


def init_state(cs: CorpusSpec, real_NxL, count_fn=None) -> CorpusState:
    """Corpus state after R is drawn (before S_0 is admitted).

    count_fn(tokens, weight) -> int32 [C, V]: the family's counts (counting families)."""
    N0, L = real_NxL.shape
    table = jnp.zeros((0, cs.vocab_size), jnp.int32)
    if cs.as_counts:
        table = (
            count_fn(real_NxL, jnp.ones(N0, jnp.int32))
            if cs.rule.keeps_real
            else jnp.zeros((cs.count_rows, cs.vocab_size), jnp.int32)
        )
    real = real_NxL.astype(cs.dtype) if cs.stores_real else jnp.zeros((0, L), cs.dtype)
    return CorpusState(real, jnp.zeros((cs.capacity, L), cs.dtype), jnp.int32(0), table, {})


def first_training_set(cs: CorpusSpec, state: CorpusState, real_NxL, count_fn=None) -> TrainingSet:
    """T_0 = R."""
    tokens = jnp.int32(cs.real_sequences * cs.seq_len)
    if not cs.counting:
        return TrainingSet(None, lambda idx: real_NxL[idx], jnp.int32(cs.real_sequences), tokens, tokens)
    if cs.as_counts and cs.rule.keeps_real:  # the corpus already counted R
        counts = state.counts
    else:
        counts = count_fn(real_NxL, jnp.ones(cs.real_sequences, jnp.int32))
    return TrainingSet(counts, None, None, tokens, tokens)


def _corpus_rows(state, idx, real_sequences):
    """Rows idx of C_g = R followed by the synth buffer (indices < N0 are R's)."""
    N0, cap = real_sequences, state.synth.shape[0]
    real = state.real[jnp.clip(idx, 0, N0 - 1)]
    synth = state.synth[jnp.clip(idx - N0, 0, cap - 1)]
    return jnp.where((idx < N0)[:, None], real, synth)


def _selection(cs: CorpusSpec, state, key, real_count, fresh_fn, synth_range=None):
    """The rows of T_g for the drawing policies (accumulate_subsample, mix,
    fresh): (rows, weight 0/1 per row, real tokens, total tokens)."""
    N0, L, cap, m = cs.real_sequences, cs.seq_len, state.synth.shape[0], cs.train_sequences
    select_key = jax.random.fold_in(key, SELECT)
    if cs.rule.draw == "subsample":
        bounds = None if synth_range is None else (N0 + synth_range[0], N0 + synth_range[1])
        idx = distinct_rows(select_key, N0 + state.n_synth, N0 + cap, m, bounds)
        rows = _corpus_rows(state, idx, N0)
        return rows, jnp.ones(m, jnp.int32), jnp.sum(idx < N0).astype(jnp.int32) * L, jnp.int32(m * L)
    # mix / fresh: r real sequences and m - r generated ones
    take_s = min(m, cap)
    s_idx = top_rows(select_key, state.n_synth, cap, take_s)
    s_rows = state.synth[s_idx]
    s_w = (jnp.arange(take_s) < m - real_count).astype(jnp.int32)
    if cs.rule.draw == "mix":
        take_r = min(m, N0)
        r_idx = top_rows(jax.random.fold_in(select_key, 1), N0, N0, take_r)
        r_rows = state.real[r_idx]
    else:
        take_r = m
        r_rows = fresh_fn(jax.random.fold_in(key, FRESH), m)
    r_w = (jnp.arange(take_r) < real_count).astype(jnp.int32)
    rows = jnp.concatenate([r_rows.astype(state.synth.dtype), s_rows])
    return rows, jnp.concatenate([r_w, s_w]), real_count * L, jnp.int32(m * L)


def training_set(
    cs: CorpusSpec, state: CorpusState, key, real_count, fresh_fn, count_fn=None, synth_range=None
) -> TrainingSet:
    """T_g for g >= 1. `synth_range`: (lowest, highest) n_synth of the
    batch's cells, unbatched, or None (`distinct_rows`'s bounds).

    real_count: int32 r = round(rho * m) (mix / fresh).
    fresh_fn: key, n -> n fresh real sequences (fresh only).
    count_fn: the family's counts of weighted rows (counting families).

    A whole-corpus policy reads the buffers in place (no copy of C_g per
    generation); the drawing policies gather their m rows once, with the
    real rows of mix / fresh first and the generated ones after them.
    """
    N0, L = cs.real_sequences, cs.seq_len
    if cs.rule.whole:
        real_n = N0 if cs.rule.keeps_real else 0
        real_tokens, train_tokens = jnp.int32(real_n * L), (real_n + state.n_synth) * L
        if cs.as_counts:
            return TrainingSet(state.counts, None, None, real_tokens, train_tokens)
        if cs.rule.keeps_real:
            fetch = lambda idx: _corpus_rows(state, idx, N0).astype(jnp.int32)
        else:
            fetch = lambda idx: state.synth[idx].astype(jnp.int32)
        if cs.counting:  # a counting family whose corpus is kept as tokens: count all of C_g
            rows = jnp.concatenate([state.real, state.synth]) if cs.rule.keeps_real else state.synth
            weight = (jnp.arange(rows.shape[0]) < real_n + state.n_synth).astype(jnp.int32)
            return TrainingSet(count_fn(rows, weight), None, None, real_tokens, train_tokens)
        return TrainingSet(None, fetch, real_n + state.n_synth, real_tokens, train_tokens)
    rows, weight, real_tokens, train_tokens = _selection(cs, state, key, real_count, fresh_fn, synth_range)
    if cs.counting:
        return TrainingSet(count_fn(rows, weight), None, None, real_tokens, train_tokens)
    m = cs.train_sequences
    if cs.rule.draw != "subsample":  # compact: the r weighted real rows, then the m - r generated ones
        take_r = len(rows) - min(m, state.synth.shape[0])
        i = jnp.arange(m)
        rows = rows[jnp.where(i < real_count, i, take_r + i - real_count)]
    return TrainingSet(None, lambda idx: rows[idx].astype(jnp.int32), jnp.int32(m), real_tokens, train_tokens)


def admit(cs: CorpusSpec, state: CorpusState, sample_kxL, k, counts=None) -> CorpusState:
    """The corpus after S_g (its first k rows valid) is admitted.

    counts: the counts of S_g's first k rows, where the corpus lives as counts.
    """
    if cs.as_counts:
        if cs.rule.keeps_all:
            return state._replace(counts=state.counts + counts, n_synth=state.n_synth + k)
        return state._replace(counts=counts, n_synth=jnp.asarray(k, jnp.int32))
    sample = sample_kxL.astype(state.synth.dtype)
    if cs.rule.keeps_all:
        synth = jax.lax.dynamic_update_slice(state.synth, sample, (state.n_synth, 0))
        return state._replace(synth=synth, n_synth=state.n_synth + k)
    return state._replace(synth=sample, n_synth=jnp.asarray(k, jnp.int32))


# ---------------------------------------------------------------- host form (checkpoints)


def to_host(parts: CorpusState) -> dict[str, np.ndarray]:
    """A batch of cell states as checkpoint arrays.

    Each field of `parts` is a list of host arrays that split the batch along
    its cells axis (one per device shard, viewed in place where the backend
    allows). The synth buffer is packed: only each cell's valid rows
    [0, n_synth) are kept, concatenated in cell order, so a checkpoint of
    accumulate_subsample holds what has been admitted so far, not the
    capacity for the whole run; it is the one copy made of it. Parameters
    are named model.<path>.
    """

    def cat(xs):
        return np.concatenate(xs) if len(xs) > 1 else np.array(xs[0])

    n_synth = cat(parts.n_synth)
    L = parts.synth[0].shape[2]
    rows, i = [], 0
    for block in parts.synth:
        for cell in block:
            rows.append(cell[: min(int(n_synth[i]), len(cell))])
            i += 1
    packed = np.concatenate(rows) if rows else np.zeros((0, L), parts.synth[0].dtype)
    out = {"real": cat(parts.real), "synth_rows": packed, "n_synth": n_synth, "counts": cat(parts.counts)}
    for name, leaf in parts.model.items():
        out[MODEL_PREFIX + name] = cat(leaf)
    return out


def from_host(arrays: dict[str, np.ndarray], capacity: int) -> CorpusState:
    """The inverse of `to_host`: a batch of full states with `capacity` synth
    rows per cell (which may exceed the capacity they were saved with, when a
    run is extended). Rows past a cell's valid length are zero; no policy
    reads them (DESIGN §7.4)."""
    real, rows, n_synth = arrays["real"], arrays["synth_rows"], arrays["n_synth"]
    n, L = len(n_synth), real.shape[2]
    valid = np.minimum(n_synth, capacity).astype(np.int64)
    if int(valid.sum()) != len(rows):
        raise ValueError(f"{len(rows)} packed rows for {int(valid.sum())} valid rows")
    synth = np.zeros((n, capacity, L), rows.dtype)
    if capacity:
        synth[np.arange(capacity)[None, :] < valid[:, None]] = rows
    model = {name[len(MODEL_PREFIX) :]: a for name, a in arrays.items() if name.startswith(MODEL_PREFIX)}
    return CorpusState(real, synth, n_synth.astype(np.int32), arrays["counts"], model)
