"""One generation step for a group of cells: train -> metrics -> sample -> admit.

`cell_init` (generation 0, trained on R) and `cell_step` (generation g >= 1)
work on one cell; `GroupRunner` vmaps them over a chunk of cells, shards the
chunk's cells axis across the local devices with shard_map, and jits the
result once per group, donating the corpus state.

Random streams (DESIGN §7.1): each cell carries two key datas made on the host
from stable hashes (`trajectory_key`, `real_key`); inside, the generation's
key is fold_in(trajectory, g) and each purpose folds in its own constant.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from collapse_sim import corpus
from collapse_sim.sources import Source, bos_rows
from kernels import metrics, ngram

SAMPLE = 0  # key purpose of sampling S_g (corpus.SELECT = 1, corpus.FRESH = 2)


@dataclass(frozen=True)
class GroupSpec:
    """What every cell of a group shares: the static shapes and code paths."""

    policy: str
    order: int
    vocab_size: int
    real_sequences: int  # N0
    seq_len: int  # L
    gen_capacity: int  # the largest k in the group; each cell uses its own k rows
    train_sequences: int  # m
    generations: int  # G
    has_truth: bool

    @property
    def contexts(self) -> int:
        return ngram.num_contexts(self.order, self.vocab_size)

    @property
    def capacity(self) -> int:
        return corpus.capacity(self.policy, self.gen_capacity, self.generations)

    @property
    def dtype(self):
        return corpus.token_dtype(self.vocab_size)

    def state_shapes(self, capacity: int | None = None) -> corpus.CorpusState:
        """(shape, dtype) of each field of one cell's corpus state (synth
        buffer of `capacity` rows, default the group's)."""
        cap = self.capacity if capacity is None else capacity
        return corpus.state_shapes(self.policy, self.real_sequences, self.seq_len, cap, self.contexts, self.vocab_size, self.dtype)

    def metric_names(self) -> list[str]:
        names = ["heldout_nll"]
        if self.has_truth:
            names += ["kl_true", "tv_true", "sq_true"]
        names += ["entropy", "support"]
        if self.seq_len >= 2:
            names += ["distinct_2"]
        return names + ["unique_seq", "real_tokens", "train_tokens"]


class CellParams(NamedTuple):
    """Per-cell traced values (a leading cells axis when batched)."""

    trajectory_key: jax.Array  # uint32 [2] key data
    real_key: jax.Array  # uint32 [2] key data
    smoothing: jax.Array  # float32
    k: jax.Array  # int32, generate.sequences
    temperature: jax.Array  # float32
    top_k: jax.Array  # int32
    top_p: jax.Array  # float32
    real_count: jax.Array  # int32, round(rho * m)


class World(NamedTuple):
    """Arrays every cell of a group shares (replicated, not batched)."""

    source: dict  # Source.device_arrays()
    heldout_counts: jax.Array  # float32 [C, V]
    truth_index: jax.Array  # int32 [F]: table row of each full-length context
    truth_weight: jax.Array  # float32 [F]
    truth_cond: jax.Array  # float32 [F, V]


def make_world(spec: GroupSpec, source: Source, heldout_NxL: np.ndarray) -> World:
    """Held-out (context, token) counts and the truth tables for a group."""
    V, m = spec.vocab_size, spec.order - 1
    hc = ngram.fit_counts(jnp.asarray(heldout_NxL), jnp.ones(len(heldout_NxL), jnp.int32), spec.order, V)
    if spec.has_truth:
        weight, cond = source.truth(m)
        index = bos_rows(m, m, V)  # the full-length contexts
    else:
        weight, cond, index = np.zeros(0), np.zeros((0, V)), np.zeros(0, np.int64)
    return World(
        source.device_arrays(),
        hc.astype(jnp.float32),
        jnp.asarray(index, jnp.int32),
        jnp.asarray(weight, jnp.float32),
        jnp.asarray(cond, jnp.float32),
    )


def _finish(spec, source, world, params, state, key, counts, real_tokens, train_tokens):
    """Model from counts -> metrics -> sample S_g -> admit. Returns (state, metrics)."""
    probs = ngram.probs_from_counts(counts, params.smoothing)
    out = {"heldout_nll": metrics.heldout_nll(probs, world.heldout_counts)}
    if spec.has_truth:
        kl, tv, sq = metrics.truth_divergences(probs[world.truth_index], world.truth_cond, world.truth_weight)
        out.update(kl_true=kl, tv_true=tv, sq_true=sq)
    out["entropy"] = metrics.heldout_entropy(probs, world.heldout_counts)
    out["support"] = metrics.support(counts, probs)
    cdf = ngram.cdf_table(probs, params.temperature, params.top_k, params.top_p)
    sample_key = jax.random.fold_in(key, SAMPLE)
    counted = None
    if spec.policy in corpus.COUNT_POLICIES:  # S_g is admitted as counts: count while sampling
        valid = (jnp.arange(spec.gen_capacity) < params.k).astype(jnp.int32)
        sample, counted = ngram.sample(sample_key, cdf, spec.order, spec.vocab_size, spec.gen_capacity, spec.seq_len, valid)
    else:
        sample = ngram.sample(sample_key, cdf, spec.order, spec.vocab_size, spec.gen_capacity, spec.seq_len)
    if spec.seq_len >= 2:
        if counted is not None and spec.order == 2:  # the bigram counts are already there
            out["distinct_2"] = metrics.distinct_2_from_counts(counted, params.k, spec.seq_len)
        else:
            out["distinct_2"] = metrics.distinct_2(sample, params.k, spec.vocab_size)
    out["unique_seq"] = metrics.unique_sequences(sample, params.k)
    out["real_tokens"], out["train_tokens"] = real_tokens, train_tokens
    state = corpus.admit(spec.policy, state, sample, params.k, counted)
    return state, out


def cell_init(spec: GroupSpec, source: Source, world: World, params: CellParams):
    """Generation 0: draw R, train M_0 on it, sample S_0. Returns (state, metrics)."""
    real = source.sample(world.source, jax.random.wrap_key_data(params.real_key), spec.real_sequences, spec.seq_len)
    state = corpus.init_state(spec.policy, real, spec.order, spec.vocab_size, spec.capacity, spec.dtype)
    if spec.policy == "accumulate":
        counts = state.counts
    else:
        counts = ngram.fit_counts(real, jnp.ones(spec.real_sequences, jnp.int32), spec.order, spec.vocab_size)
    tokens = jnp.int32(spec.real_sequences * spec.seq_len)
    key = jax.random.fold_in(jax.random.wrap_key_data(params.trajectory_key), 0)
    return _finish(spec, source, world, params, state, key, counts, tokens, tokens)


def cell_step(spec: GroupSpec, source: Source, world: World, state, generation, params: CellParams):
    """Generation g >= 1: train M_g on T_g from the corpus, metrics, sample, admit."""
    key = jax.random.fold_in(jax.random.wrap_key_data(params.trajectory_key), generation)

    def fresh(k, n):
        return source.sample(world.source, k, n, spec.seq_len)

    counts, real_tokens, train_tokens = corpus.training_counts(
        spec.policy,
        state,
        key,
        params.real_count,
        spec.train_sequences,
        spec.real_sequences,
        spec.order,
        spec.vocab_size,
        fresh,
    )
    return _finish(spec, source, world, params, state, key, counts, real_tokens, train_tokens)


class GroupRunner:
    """Compiled, batched, device-sharded init and step for one group's chunks."""

    def __init__(self, spec: GroupSpec, source: Source, world: World, devices=None):
        if not jax.config.jax_threefry_partitionable:
            # row j of a draw must depend only on (key, j), or a cell's sample
            # would depend on the capacity of its group (DESIGN §7.1)
            raise RuntimeError("collapse_sim needs jax_threefry_partitionable=True (the JAX default); unset JAX_THREEFRY_PARTITIONABLE")
        self.spec = spec
        devices = list(devices if devices is not None else jax.local_devices())
        self.mesh = Mesh(np.array(devices), ("cells",))
        self.n_devices = len(devices)
        self.cells = NamedSharding(self.mesh, P("cells"))
        replicated = NamedSharding(self.mesh, P())
        self.world = jax.device_put(world, replicated)

        def batched(fn, in_specs):
            return jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=P("cells"), check_vma=False)

        init = batched(jax.vmap(partial(cell_init, spec, source), in_axes=(None, 0)), (P(), P("cells")))
        step = batched(jax.vmap(partial(cell_step, spec, source), in_axes=(None, 0, None, 0)), (P(), P("cells"), P(), P("cells")))
        self._init = jax.jit(init)
        self._step = jax.jit(step, donate_argnums=(1,))

    def put_params(self, params: CellParams) -> CellParams:
        return jax.device_put(params, self.cells)

    def put_state(self, state):
        """A batch's corpus state (host or device arrays) on this runner's devices."""
        return jax.device_put(state, self.cells)

    def init(self, params: CellParams):
        """(state, metrics) of generation 0 for a chunk of cells."""
        return self._init(self.world, params)

    def step(self, state, generation: int, params: CellParams):
        """(state, metrics) of generation g >= 1; `state` is donated."""
        return self._step(self.world, state, jnp.int32(generation), params)
