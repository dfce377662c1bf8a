"""One generation step for a group of cells: train -> metrics -> sample -> admit.

`cell_init` (generation 0, trained on R) and `cell_step` (generation g >= 1)
work on one cell; `GroupRunner` vmaps them over a chunk of cells, shards the
chunk's cells axis across the local devices with shard_map, and jits the
result once per group, donating the corpus state. On CPU devices a
transformer chunk's cells go through in passes of a few cells per device
(`CPU_PASS_SEQUENCES`; a lax.map over vmapped passes), so a pass's
activations stay in cache.

Two model families share this path. An n-gram model is its counts: the
policies hand over the counts of T_g and metrics are exact over the table. A
transformer trains on T_g's rows (`corpus.training_rows`) with AdamW for
`model.steps` steps, from fresh parameters or the previous generation's
(`model.init`); its metrics are estimated over the held-out positions.

Random streams (DESIGN §7.1): each cell carries two key datas made on the host
from stable hashes (`trajectory_key`, `real_key`); inside, the generation's
key is fold_in(trajectory, g) and each purpose folds in its own constant.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from collapse_sim import corpus
from collapse_sim.sources import Source, bos_rows, bos_table
from kernels import metrics, ngram, transformer

SAMPLE = 0  # key purpose of sampling S_g (corpus.SELECT = 1, corpus.FRESH = 2)
INIT, TRAIN = 3, 4  # transformer: fresh parameters, training batches
# Transformer training sequences per pass on a CPU device: a chunk's cells go
# through in lax.map passes of max(1, CPU_PASS_SEQUENCES // batch) cells
# (vmapped when more than one). Measured at d_model 32, L 32 (docs/architecture.md):
# at batch 32, passes of 2 cells train about 1.25x faster per cell than 8,
# whose attention scores (cells x batch x heads x L x L floats) outgrow the
# core's L2 cache; at batch 64, single cells beat pairs by about 8 %. A vmap
# of one cell is slow (1.5x), so a single cell runs unvmapped.
CPU_PASS_SEQUENCES = 64


@dataclass(frozen=True)
class Training:
    """The static part of a transformer's training (traced: learning rate,
    weight decay and clipping norm, in CellParams)."""

    steps: int
    batch_size: int
    warmup: int
    schedule: str
    init: str  # fresh | continue


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
    family: str = "ngram"  # model.kind
    arch: transformer.Arch | None = None  # transformer only, as is `training`
    training: Training | None = None

    @property
    def counts(self) -> bool:
        """The model is trained from counts (n-gram), not from token rows."""
        return self.family == "ngram"

    @property
    def contexts(self) -> int:
        return ngram.num_contexts(self.order, self.vocab_size) if self.counts else 0

    @property
    def capacity(self) -> int:
        return corpus.capacity(self.policy, self.gen_capacity, self.generations, self.counts)

    @property
    def carries_model(self) -> bool:
        """The state holds the previous generation's parameters (init: continue)."""
        return self.training is not None and self.training.init == "continue"

    @property
    def heldout_chunk(self) -> int:
        """Held-out rows per forward pass of a transformer: twice the training
        batch, so its activations stay below those of a training step."""
        return 2 * self.training.batch_size

    @property
    def dtype(self):
        return corpus.token_dtype(self.vocab_size)

    def state_shapes(self, capacity: int | None = None) -> corpus.CorpusState:
        """(shape, dtype) of each field of one cell's corpus state (synth
        buffer of `capacity` rows, default the group's)."""
        cap = self.capacity if capacity is None else capacity
        model = param_shapes(self.arch) if self.carries_model else ()
        return corpus.state_shapes(self.policy, self.real_sequences, self.seq_len, cap, self.contexts, self.vocab_size,
                                   self.dtype, self.counts, model)

    def metric_names(self) -> list[str]:
        names = ["heldout_nll"]
        if self.has_truth:
            names += ["kl_true", "tv_true", "sq_true"]
        names += ["entropy"] + (["support"] if self.counts else ["train_loss", "loss_nonfinite"])
        if self.seq_len >= 2:
            names += ["distinct_2"]
        return names + ["unique_seq", "real_tokens", "train_tokens"]


@cache
def _param_struct(arch: transformer.Arch):
    return jax.eval_shape(lambda: transformer.init(arch, jax.random.key(0)))


def param_shapes(arch: transformer.Arch) -> tuple:
    """(shape, dtype) of each parameter leaf of one model, in tree order."""
    return tuple((tuple(a.shape), np.dtype(a.dtype)) for a in jax.tree.leaves(_param_struct(arch)))


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
    learning_rate: jax.Array  # float32 (transformer)
    weight_decay: jax.Array  # float32 (transformer)
    grad_clip: jax.Array  # float32 (transformer)


class World(NamedTuple):
    """Arrays every cell of a group shares (replicated, not batched)."""

    source: dict  # Source.device_arrays()
    heldout_counts: jax.Array  # float32 [C, V]
    truth_index: jax.Array  # int32 [F]: table row of each full-length context
    truth_weight: jax.Array  # float32 [F]
    truth_cond: jax.Array  # float32 [F, V]
    # transformer: the held-out rows in chunks of `heldout_chunk`, the weight
    # of each row (0 for padding), and where the truth is known the source's
    # table row of every held-out position and the table (n-gram: empty)
    heldout_tokens: jax.Array | None = None  # int32 [chunks, rows, L]
    heldout_weight: jax.Array | None = None  # float32 [chunks, rows]
    truth_ctx: jax.Array | None = None  # int32 [chunks, rows, L]
    truth_table: jax.Array | None = None  # float32 [C_source, V]


def _chunked(a: np.ndarray, rows: int) -> np.ndarray:
    """[N, ...] -> [ceil(N / rows), rows, ...], zero-padded."""
    n = -(-len(a) // rows)
    out = np.zeros((n * rows, *a.shape[1:]), a.dtype)
    out[: len(a)] = a
    return out.reshape(n, rows, *a.shape[1:])


def make_world(spec: GroupSpec, source: Source, heldout_NxL: np.ndarray) -> World:
    """Held-out (context, token) counts and the truth tables for a group."""
    if not spec.counts:
        return _neural_world(spec, source, heldout_NxL)
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


def _neural_world(spec: GroupSpec, source: Source, heldout_NxL: np.ndarray) -> World:
    V = spec.vocab_size
    rows = min(len(heldout_NxL), spec.heldout_chunk)
    tokens = _chunked(np.asarray(heldout_NxL, np.int32), rows)
    weight = _chunked(np.ones(len(heldout_NxL), np.float32), rows)
    if spec.has_truth:  # the exact P(next | prefix) of every held-out position
        table = bos_table(source.stationary, source.transitions, source.markov_order).astype(np.float32)
        ctx = np.asarray(ngram.context_ids(jnp.asarray(tokens.reshape(-1, spec.seq_len)), source.table_order, V))
        ctx = ctx.reshape(tokens.shape)
    else:
        table, ctx = np.zeros((0, V), np.float32), np.zeros(tokens.shape[:2] + (0,), np.int32)
    empty = jnp.zeros((0,), jnp.float32)
    return World(
        source.device_arrays(), jnp.zeros((0, V), jnp.float32), jnp.zeros((0,), jnp.int32), empty, jnp.zeros((0, V), jnp.float32),
        jnp.asarray(tokens), jnp.asarray(weight), jnp.asarray(ctx, jnp.int32), jnp.asarray(table),
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
    _sample_metrics(spec, out, sample, params.k, counted if spec.order == 2 else None)
    out["real_tokens"], out["train_tokens"] = real_tokens, train_tokens
    state = corpus.admit(spec.policy, state, sample, params.k, counted)
    return state, out


def _sample_metrics(spec, out, sample, k, bigram_counts=None):
    """distinct_2 and unique_seq of S_g's first k rows; distinct_2 reads the
    sample's bigram counts when sampling already made them."""
    if spec.seq_len >= 2:
        if bigram_counts is not None:
            out["distinct_2"] = metrics.distinct_2_from_counts(bigram_counts, k, spec.seq_len)
        else:
            out["distinct_2"] = metrics.distinct_2(sample, k, spec.vocab_size)
    out["unique_seq"] = metrics.unique_sequences(sample, k)


def _neural_train(spec, params: CellParams, key, fetch, n, previous):
    """M_g: fresh parameters (or the previous generation's, under init:
    continue) trained for model.steps AdamW steps on T_g."""
    arch, tr = spec.arch, spec.training
    if previous:
        p = jax.tree.unflatten(jax.tree.structure(_param_struct(arch)), list(previous))
    else:
        p = transformer.init(arch, jax.random.fold_in(key, INIT))
    tx = transformer.optimizer(params.learning_rate, params.weight_decay, tr.steps, tr.warmup, tr.schedule, params.grad_clip)
    return transformer.train(arch, tx, p, jax.random.fold_in(key, TRAIN), fetch, n, tr.steps, tr.batch_size)


def _neural_heldout(spec, world, p) -> dict:
    """Held-out metrics of a transformer: means over the H x L held-out positions."""
    truth = spec.has_truth

    def chunk(args):
        tokens, weight, ctx = args
        sums = transformer.position_sums(spec.arch, p, tokens, world.truth_table[ctx] if truth else None)
        return {name: jnp.sum(v * weight) for name, v in sums.items()}

    sums = jax.lax.map(chunk, (world.heldout_tokens, world.heldout_weight, world.truth_ctx))
    positions = jnp.sum(world.heldout_weight) * spec.seq_len
    mean = {name: jnp.sum(v) / positions for name, v in sums.items()}
    out = {"heldout_nll": mean["nll"]}
    if truth:
        out.update(kl_true=mean["kl"], tv_true=mean["tv"], sq_true=mean["sq"])
    out["entropy"] = mean["entropy"]
    return out


def _neural_finish(spec, world, params, state, key, p, losses, real_tokens, train_tokens):
    """Trained transformer -> metrics -> sample S_g -> admit."""
    out = _neural_heldout(spec, world, p)
    tail = max(1, spec.training.steps // 10)
    out["train_loss"] = jnp.mean(losses[-tail:])
    out["loss_nonfinite"] = jnp.logical_not(jnp.all(jnp.isfinite(losses))).astype(jnp.int32)
    sample = transformer.sample(spec.arch, p, jax.random.fold_in(key, SAMPLE), spec.gen_capacity,
                                params.temperature, params.top_k, params.top_p)
    _sample_metrics(spec, out, sample, params.k)
    out["real_tokens"], out["train_tokens"] = real_tokens, train_tokens
    state = corpus.admit(spec.policy, state, sample, params.k)
    if spec.carries_model:
        state = state._replace(model=tuple(jax.tree.leaves(p)))
    return state, out


def _neural_init(spec, world, params, real, key):
    state = corpus.init_state(spec.policy, real, 0, spec.vocab_size, spec.capacity, spec.dtype, counts=False)
    p, losses = _neural_train(spec, params, key, lambda idx: real[idx], jnp.int32(spec.real_sequences), ())
    tokens = jnp.int32(spec.real_sequences * spec.seq_len)
    return _neural_finish(spec, world, params, state, key, p, losses, tokens, tokens)


def cell_init(spec: GroupSpec, source: Source, world: World, params: CellParams):
    """Generation 0: draw R, train M_0 on it, sample S_0. Returns (state, metrics)."""
    real = source.sample(world.source, jax.random.wrap_key_data(params.real_key), spec.real_sequences, spec.seq_len)
    key = jax.random.fold_in(jax.random.wrap_key_data(params.trajectory_key), 0)
    if not spec.counts:
        return _neural_init(spec, world, params, real, key)
    state = corpus.init_state(spec.policy, real, spec.order, spec.vocab_size, spec.capacity, spec.dtype)
    if spec.policy == "accumulate":
        counts = state.counts
    else:
        counts = ngram.fit_counts(real, jnp.ones(spec.real_sequences, jnp.int32), spec.order, spec.vocab_size)
    tokens = jnp.int32(spec.real_sequences * spec.seq_len)
    return _finish(spec, source, world, params, state, key, counts, tokens, tokens)


def cell_step(spec: GroupSpec, source: Source, world: World, state, generation, params: CellParams):
    """Generation g >= 1: train M_g on T_g from the corpus, metrics, sample, admit."""
    key = jax.random.fold_in(jax.random.wrap_key_data(params.trajectory_key), generation)

    def fresh(k, n):
        return source.sample(world.source, k, n, spec.seq_len)

    if not spec.counts:
        fetch, n, real_tokens, train_tokens = corpus.training_rows(
            spec.policy, state, key, params.real_count, spec.train_sequences, spec.real_sequences, fresh
        )
        p, losses = _neural_train(spec, params, key, fetch, n, state.model)
        return _neural_finish(spec, world, params, state, key, p, losses, real_tokens, train_tokens)
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

        self.pass_cells = None  # all of a device's cells at once
        if not spec.counts and devices[0].platform == "cpu":
            self.pass_cells = max(1, CPU_PASS_SEQUENCES // spec.training.batch_size)
        over = self.over_cells

        def init(world, params):
            return over(lambda w, _, p: cell_init(spec, source, w, p))(world, None, params)

        def step(world, state, g, params):
            return over(lambda w, g, sp: cell_step(spec, source, w, sp[0], g, sp[1]))(world, g, (state, params))

        self._init = jax.jit(batched(init, (P(), P("cells"))))
        self._step = jax.jit(batched(step, (P(), P("cells"), P(), P("cells"))), donate_argnums=(1,))

    def over_cells(self, one):
        """one(world, g, cell) of a single cell -> the same over a device's
        cells (the leaves of `cell` carry the cells axis): one vmap, or with
        `pass_cells` a lax.map over passes of that many cells (vmapped within
        a pass of more than one)."""
        together = jax.vmap(one, in_axes=(None, None, 0))
        k = self.pass_cells

        def over(world, g, cells):
            n = jax.tree.leaves(cells)[0].shape[0]
            if k == 1:
                return jax.lax.map(lambda c: one(world, g, c), cells)
            if k is None or n <= k or n % k:
                return together(world, g, cells)
            # explicit shapes: lax.map(batch_size=) cannot reshape the empty buffers
            split = jax.tree.map(lambda a: a.reshape(n // k, k, *a.shape[1:]), cells)
            out = jax.lax.map(lambda c: together(world, g, c), split)
            return jax.tree.map(lambda a: a.reshape(n, *a.shape[2:]), out)

        return over

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
