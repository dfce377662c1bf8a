"""One generation step for a group of cells: train -> metrics -> sample -> admit.

`cell_init` (generation 0, trained on R) and `cell_step` (generation g >= 1)
work on one cell through the family interface (`families.base.Family`) and
the corpus policies (`corpus`), never asking which family they hold.
`GroupRunner` runs them over a chunk of cells: vmapped, the cells axis
sharded across the devices with shard_map, jitted with the corpus state
donated. The compiled programs are made once per process for a group's
static spec and devices (`programs`), so a second run of the same shapes
does not trace again, and kept on disk (`compiled`), so a new process does
not trace them either.

Random streams (DESIGN §7.1, `collapse_sim.keys`): each cell carries two key
datas made on the host from stable hashes; inside, the generation's key is
fold_in(trajectory, g) and each purpose folds in its own constant.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from collapse_sim import corpus, filters
from collapse_sim.compiled import Program
from collapse_sim.families.base import Counted, GroupSpec
from collapse_sim.kernels import metrics
from collapse_sim.keys import SAMPLE, CellParams


class World(NamedTuple):
    """Arrays every cell of a group shares (replicated, not batched)."""

    source: dict  # Source.device_arrays()
    model: object  # the family's world (held-out set, truth)
    filter: filters.FilterWorld  # what the filter scores against


def make_world(spec: GroupSpec, source, heldout_NxL: np.ndarray) -> World:
    return World(
        source.device_arrays(), spec.family.world(spec, source, heldout_NxL), filters.world(spec.filter, source)
    )


def _count_fn(spec: GroupSpec):
    return (lambda tokens, weight: spec.family.count(spec, tokens, weight)) if spec.corpus.counting else None


def sample_metrics(spec: GroupSpec, sample_NxL, k, counted: Counted | None = None) -> dict:
    """distinct_2 and unique_seq of S_g's first k rows; they read the
    sample's bigram counts and sequence hashes when sampling already made
    them (then, under a corpus kept as counts, nothing reads the tokens and
    XLA never writes them out)."""
    out = {}
    bigrams = spec.family.bigram_counts(spec, counted)
    if spec.seq_len >= 2:
        if bigrams is not None:
            out["distinct_2"] = metrics.distinct_2_from_counts(bigrams, k, spec.seq_len)
        else:
            out["distinct_2"] = metrics.distinct_2(sample_NxL, k, spec.vocab_size)
    out["unique_seq"] = metrics.unique_sequences(sample_NxL, k, counted.hashes if counted is not None else None)
    return out


def _generation(spec: GroupSpec, world: World, cell: CellParams, state, key, tset, carried):
    """Train M_g on T_g -> its metrics -> sample S_g (through the filter) -> admit.
    Returns (state, metrics)."""
    fam, cs = spec.family, spec.corpus
    model, fit = fam.train(spec, key, cell, tset, carried)
    out = fam.model_metrics(spec, world.model, model, fit)
    if spec.filter.active:
        rows = spec.filter.candidates(cs.gen_capacity)
        candidates, _ = fam.sample(spec, model, jax.random.fold_in(key, SAMPLE), rows, cell, None)
        sample, admitted, accept = filters.admit(spec, world, cell, state, model, key, candidates)
        weight = (jnp.arange(cs.gen_capacity) < admitted).astype(jnp.int32)
        counts = fam.count(spec, sample, weight) if cs.as_counts else None
        out.update(sample_metrics(spec, sample, admitted))
    else:
        # where the corpus lives as counts, S_g is counted while it is sampled
        weight = (jnp.arange(cs.gen_capacity) < cell.k).astype(jnp.int32) if cs.as_counts else None
        sample, counted = fam.sample(spec, model, jax.random.fold_in(key, SAMPLE), cs.gen_capacity, cell, weight)
        counts = counted.counts if counted is not None else None
        admitted, accept = cell.k, jnp.float32(1.0)
        out.update(sample_metrics(spec, sample, cell.k, counted))
    out["real_tokens"], out["train_tokens"] = tset.real_tokens, tset.train_tokens
    out["accept_rate"], out["admitted"] = accept, admitted
    state = corpus.admit(cs, state, sample, admitted, counts)
    return state._replace(model=fam.carry(spec, model)), out


def cell_init(spec: GroupSpec, world: World, cell: CellParams):
    """Generation 0: draw R, train M_0 on it, sample S_0. Returns (state, metrics)."""
    cs = spec.corpus
    real = spec.sampler.sample(world.source, jax.random.wrap_key_data(cell.real_key), cs.real_sequences, cs.seq_len)
    key = jax.random.fold_in(jax.random.wrap_key_data(cell.trajectory_key), 0)
    count = _count_fn(spec)
    state = corpus.init_state(cs, real, count)
    tset = corpus.first_training_set(cs, state, real, count)
    return _generation(spec, world, cell, state, key, tset, None)


def cell_step(spec: GroupSpec, world: World, state, generation, cell: CellParams, synth_range=None):
    """Generation g >= 1: train M_g on T_g from the corpus, metrics, sample,
    admit. `synth_range`: the batch's lowest and highest n_synth (unbatched;
    it lets the sampler skip work no cell needs, never changing a draw)."""
    key = jax.random.fold_in(jax.random.wrap_key_data(cell.trajectory_key), generation)

    def fresh(k, n):
        return spec.sampler.sample(world.source, k, n, spec.seq_len)

    tset = corpus.training_set(spec.corpus, state, key, cell.real_count, fresh, _count_fn(spec), synth_range)
    return _generation(spec, world, cell, state, key, tset, state.model)


def over_cells(one, pass_cells: int | None):
    """one(world, g, cell) of a single cell -> the same over a device's cells
    (the leaves of `cell` carry the cells axis): one vmap, or with
    `pass_cells` a lax.map over passes of that many cells (vmapped within a
    pass of more than one; a vmap of one cell is slower than none)."""
    together = jax.vmap(one, in_axes=(None, None, 0))
    k = pass_cells

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


class Programs(NamedTuple):
    mesh: Mesh
    init: Program  # (world, params) -> (state, metrics)
    step: Program  # (world, state, g, params) -> (state, metrics); state donated


@lru_cache(maxsize=64)
def programs(spec: GroupSpec, devices: tuple) -> Programs:
    """The compiled init and step of a group on `devices`, made once per
    process for each (spec, devices); each compiles once per signature, or
    comes from the disk cache of compiled programs without tracing
    (`collapse_sim.compiled`)."""
    mesh = Mesh(np.array(devices), ("cells",))
    pass_cells = spec.family.pass_cells(spec, devices[0].platform)

    def batched(fn, in_specs):
        return _shard_map_nonempty(fn, mesh, in_specs)

    def init(world, params):
        return over_cells(lambda w, _, p: cell_init(spec, w, p), pass_cells)(world, None, params)

    def step(world, state, g, params):
        at = (g, (jnp.min(state.n_synth), jnp.max(state.n_synth)))  # this device's cells' corpus sizes
        one = lambda w, at, sp: cell_step(spec, w, sp[0], at[0], sp[1], at[1])  # noqa: E731
        return over_cells(one, pass_cells)(world, at, (state, params))

    # every output along the cells axis, zero-size buffers included (XLA would
    # otherwise replicate those, and a state put back on the devices between
    # blocks would then trace the step again)
    cells = NamedSharding(mesh, P("cells"))
    return Programs(
        mesh,
        Program("init", jax.jit(batched(init, (P(), P("cells"))), out_shardings=cells), spec, devices),
        Program(
            "step",
            jax.jit(batched(step, (P(), P("cells"), P(), P("cells"))), out_shardings=cells, donate_argnums=(1,)),
            spec,
            devices,
        ),
    )


def _shard_map_nonempty(fn, mesh: Mesh, in_specs: tuple):
    """fn over the cells axis with shard_map (outputs along it), its
    zero-size array arguments (the buffers a corpus policy does not use)
    kept out of the shard_map: each device's body makes its own, of the
    local shape. jaxlib 0.11.2 crashes (a segmentation fault in Shardy's
    canonicaliser) compiling a shard_map over two or more devices that
    takes a zero-size operand and uses it. Nothing is computed differently."""
    n = mesh.shape["cells"]

    def call(*args):
        flat, tree = jax.tree.flatten(args)
        specs = [spec for arg, spec in zip(args, in_specs, strict=True) for _ in jax.tree.leaves(arg)]
        kept = [x.size > 0 for x in flat]
        local = [  # (shape, dtype) each device sees
            ((x.shape[0] // n, *x.shape[1:]) if spec == P("cells") else x.shape, x.dtype)
            for x, spec in zip(flat, specs)
        ]

        def body(inputs):
            rest = iter(inputs)
            leaves = [next(rest) if keep else jnp.zeros(*sd) for keep, sd in zip(kept, local)]
            return fn(*jax.tree.unflatten(tree, leaves))

        inputs = [x for x, keep in zip(flat, kept) if keep]
        in_spec = [spec for spec, keep in zip(specs, kept) if keep]
        return jax.shard_map(body, mesh=mesh, in_specs=(in_spec,), out_specs=P("cells"), check_vma=False)(inputs)

    return call


class GroupRunner:
    """Batched, device-sharded init and step for one group's chunks."""

    def __init__(self, spec: GroupSpec, world: World, devices=None):
        if not jax.config.jax_threefry_partitionable:
            # row j of a draw must depend only on (key, j), or a cell's sample
            # would depend on the capacity of its group (DESIGN §7.1)
            raise RuntimeError(
                "collapse_sim needs jax_threefry_partitionable=True (the JAX default); unset JAX_THREEFRY_PARTITIONABLE"
            )
        self.spec = spec
        devices = tuple(devices if devices is not None else jax.local_devices())
        self.n_devices = len(devices)
        self.programs = programs(spec, devices)
        self.cells = NamedSharding(self.programs.mesh, P("cells"))
        self.world = jax.device_put(world, NamedSharding(self.programs.mesh, P()))

    def put(self, tree):
        """A batch's per-cell arrays (params or corpus state, host or device) on this runner's devices."""
        return jax.device_put(tree, self.cells)

    def init(self, params: CellParams):
        """(state, metrics) of generation 0 for a chunk of cells."""
        return self.programs.init(self.world, params)

    def step(self, state, generation: int, params: CellParams):
        """(state, metrics) of generation g >= 1; `state` is donated."""
        return self.programs.step(self.world, state, jax.device_put(np.int32(generation)), params)
