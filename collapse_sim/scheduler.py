"""The outer loop: sweep grid x replicates -> cells -> groups -> chunks -> generations.

`make_plan` resolves a config into groups of cells that share static shapes
(each compiled once) and checks that a cell fits in memory; `run_plan` drives
every chunk of every group through its generations, handing metric rows to a
writer and reporting progress.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from collapse_sim import config as cfgmod, corpus, engine
from collapse_sim.config import Config, ConfigError, SweepPoint
from collapse_sim.engine import CellParams, GroupRunner, GroupSpec, Training, make_world
from collapse_sim.sources import Source, build_source
from kernels import sampling, transformer

INT32_MAX = 2**31 - 1
INT_METRICS = ("support", "loss_nonfinite")
# transformer cells per CPU device in one compiled batch (a chunk); within it
# they go through in passes of a few cells (engine.CPU_PASS_SEQUENCES), so a
# larger chunk is no faster per cell, only coarser for progress, signals and
# checkpoints; more cells run as more chunks
CPU_NEURAL_CELLS = 8
CPU_DTYPES = ("float32",)  # transformer compute dtypes run on CPU devices (bfloat16 is for GPUs and TPUs)
MAX_CELLS = 1 << 22  # cells are planned as Python objects; 4M is hours of work for any group


@dataclass(frozen=True)
class Cell:
    index: int
    replicate: int
    point: SweepPoint


@dataclass
class Group:
    spec: GroupSpec
    source: Source
    heldout: np.ndarray  # int32 [H, L]
    cells: list[Cell]
    chunk_size: int  # cells per compiled batch (a multiple of the device count)


@dataclass
class Plan:
    config: Config
    points: list[SweepPoint]
    groups: list[Group]
    n_devices: int

    @property
    def n_cells(self) -> int:
        return sum(len(g.cells) for g in self.groups)

    @property
    def sweep_keys(self) -> list[str]:
        return [k for k, _ in self.config.sweep]


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def memory_budget(device=None) -> int:
    """Bytes the engine lets itself use on one device."""
    device = device or jax.local_devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"] * 0.6)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # pragma: no cover - non-POSIX
        total = 8 << 30
    n_local = max(1, len(jax.local_devices()))
    return int(total * 0.5 / n_local)


def cell_parts(spec: GroupSpec) -> dict[str, int]:
    """A generous estimate of the device memory one cell needs during a step,
    by the config key that drives each part."""
    if not spec.counts:
        return neural_parts(spec)
    C, V, L = spec.contexts, spec.vocab_size, spec.seq_len
    W = sampling.cdf_width(V)
    item = np.dtype(spec.dtype).itemsize
    real_rows = spec.real_sequences if corpus.keeps_real(spec.policy) else 0
    distinct = 4 * V * V if V * V <= (1 << 22) else 8 * spec.gen_capacity * L
    return {
        "model.order": 4 * (8 * C * V + 2 * C * W) + distinct,  # the table and its derivatives
        # token buffers (the state and its successor) and the selection's scores
        "generations": (item * L * 2 + 12) * spec.capacity,
        "real.sequences": (item * L * 2 + 4 * L * 4 + 12) * real_rows + 4 * L * 4 * spec.real_sequences,
        "generate.sequences": 4 * L * 4 * spec.gen_capacity,  # the sample, its contexts, draws
        "corpus.train_sequences": 4 * L * 4 * spec.train_sequences,
    }


def neural_parts(spec: GroupSpec) -> dict[str, int]:
    """cell_parts of a transformer: parameters, optimizer state, activations
    of a training step, the held-out pass, the KV caches of sampling and the
    token buffers (float32 throughout, so bfloat16 compute is over-estimated)."""
    a, tr = spec.arch, spec.training
    V, L, d, layers = spec.vocab_size, spec.seq_len, a.d_model, a.layers
    W = sampling.cdf_width(V)
    n_params = sum(int(np.prod(shape)) for shape, _ in engine.param_shapes(a))
    item = np.dtype(spec.dtype).itemsize
    # per token and layer: LN, fused QKV, attention output, residuals, the MLP
    # (up and GELU), plus the heads' score and probability rows
    per_token = layers * (d * (9 + 3 * a.mlp_ratio) + 3 * a.heads * L) + 4 * V + 4 * d
    real_rows = spec.real_sequences if corpus.keeps_real(spec.policy, False) else 0
    return {
        # parameters, gradients, updates, both Adam moments, and the carried copy
        "model.d_model": 4 * 7 * n_params,
        # forward activations kept for the backward pass, and their gradients
        "model.batch_size": 4 * 2 * tr.batch_size * L * per_token,
        "real.heldout": 4 * spec.heldout_chunk * L * per_token,
        # KV caches, one position's activations and sampling rows, the sample
        "generate.sequences": spec.gen_capacity * (2 * layers * L * d * 4 + 4 * (per_token + 2 * W) + 4 * L * 3),
        "generations": (item * L * 2 + 12) * spec.capacity,
        "real.sequences": item * L * 2 * real_rows + 4 * L * 2 * spec.real_sequences,
        "corpus.train_sequences": 4 * L * 3 * spec.train_sequences,
    }


def cell_bytes(spec: GroupSpec) -> int:
    return sum(cell_parts(spec).values())


def _check_limits(where: str, spec: GroupSpec) -> None:
    V, n = spec.vocab_size, spec.order
    if spec.counts and (V + 1) ** n > INT32_MAX:
        raise ConfigError(where, "model.order", f"an order-{n} model over {V} tokens has too many contexts to index ((V+1)**order > 2**31)")
    if spec.policy in ("accumulate", "accumulate_subsample"):
        tokens = (spec.real_sequences + (spec.generations + 1) * spec.gen_capacity) * spec.seq_len
        if tokens > INT32_MAX:
            raise ConfigError(where, "generations", f"{spec.policy} would hold {tokens} tokens per cell after {spec.generations} generations; the limit is 2**31 - 1")


def _spec(point: SweepPoint, source: Source, gen_capacity: int) -> GroupSpec:
    c = point.config
    m = c.model
    neural = m.kind == "transformer"
    return GroupSpec(
        family=m.kind,
        arch=transformer.Arch(source.vocab_size, c.real.seq_len, m.d_model, m.layers, m.heads, m.mlp_ratio, m.tie, m.dtype)
        if neural else None,
        training=Training(m.steps, m.batch_size, m.warmup, m.schedule, m.init) if neural else None,
        policy=c.corpus.policy,
        order=m.order if not neural else 0,
        vocab_size=source.vocab_size,
        real_sequences=c.real.sequences,
        seq_len=c.real.seq_len,
        gen_capacity=gen_capacity,
        train_sequences=c.corpus.train_sequences,
        generations=c.generations,
        has_truth=source.has_truth,
    )


def make_plan(cfg: Config, where: str, devices=None) -> Plan:
    """Resolve a config into groups of cells; ConfigError if something cannot run."""
    devices = list(devices if devices is not None else jax.local_devices())
    points = cfgmod.sweep_points(cfg)
    if len(points) * cfg.replicates > MAX_CELLS:
        key = "replicates" if cfg.replicates > MAX_CELLS // max(1, len(points)) else "sweep"
        raise ConfigError(where, key, f"{len(points)} sweep points x {cfg.replicates} replicates = "
                          f"{len(points) * cfg.replicates:,} cells; the limit is {MAX_CELLS:,} per run")
    sources: dict = {}
    by_key: dict = {}
    for point in points:
        c = point.config
        skey = (c.source, c.real.seq_len)
        if skey not in sources:
            sources[skey] = build_source(c.source, c.real.seq_len, where)
        source = sources[skey]
        spec = _spec(point, source, 0)
        gkey = (spec, source.digest, c.real.heldout)
        by_key.setdefault(gkey, (source, []))[1].append(point)
    groups = []
    budget = memory_budget(devices[0])
    for (_, _, heldout_n), (source, pts) in by_key.items():
        spec = _spec(pts[0], source, max(p.config.generate.sequences for p in pts))
        _check_limits(where, spec)
        if spec.arch is not None and spec.arch.dtype not in CPU_DTYPES and devices[0].platform == "cpu":
            raise ConfigError(where, "model.dtype", f"{spec.arch.dtype} compute is for GPUs and TPUs; "
                              "this run has only CPU devices, use float32")
        parts = cell_parts(spec)
        per_cell = sum(parts.values())
        if 2 * per_cell > budget:  # a batch holds at least two cells per device
            key = max(parts, key=parts.get)
            what = (
                f"an order-{spec.order} table over {spec.vocab_size} tokens has {spec.contexts * spec.vocab_size:,} entries"
                if key == "model.order"
                else f"{format_bytes(parts[key])} of it for {key}"
            )
            raise ConfigError(
                where,
                key,
                f"one cell needs about {format_bytes(per_cell)} ({what}); two cells per device "
                f"do not fit in the {format_bytes(budget)} a device can give",
            )
        nd = len(devices)
        n_cells = len(pts) * cfg.replicates
        cells = [Cell(p.index * cfg.replicates + r, r, p) for p in pts for r in range(cfg.replicates)]
        chunk = min(budget // per_cell * nd, -(-n_cells // nd) * nd)  # the budget is per device
        if not spec.counts and devices[0].platform == "cpu":
            chunk = min(chunk, CPU_NEURAL_CELLS * nd)
        chunk = max(nd, chunk // nd * nd)
        if heldout_n * spec.seq_len * 4 > budget // 4:
            raise ConfigError(where, "real.heldout", f"{heldout_n:,} held-out sequences of {spec.seq_len} tokens need "
                              f"{format_bytes(heldout_n * spec.seq_len * 4)}; the limit is {format_bytes(budget // 4)}")
        heldout_key = _heldout_key(source, spec.seq_len, heldout_n)
        heldout = source.heldout(heldout_key, heldout_n, spec.seq_len)
        groups.append(Group(spec, source, heldout, cells, chunk))
    return Plan(cfg, points, groups, len(devices))


def _heldout_key(source: Source, seq_len: int, n: int):
    h0, h1 = cfgmod.stable_hash({"purpose": "heldout", "source": source.digest, "seq_len": seq_len, "n": n})
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(0), h0), h1)


@jax.jit
def _derive_keys(seed_C, h0_C, h1_C, rep_C):
    def one(seed, h0, h1, r):
        k = jax.random.key(seed)
        k = jax.random.fold_in(jax.random.fold_in(k, h0), h1)
        return jax.random.key_data(jax.random.fold_in(k, r))

    return jax.vmap(one)(seed_C, h0_C, h1_C, rep_C)


def cell_params(cells: list[Cell], source: Source) -> CellParams:
    """Host-side per-cell traced values and keys for a list of cells."""
    traj, real, seeds = [], [], []
    for cell in cells:
        c = cell.point.config
        traj.append(cfgmod.stable_hash(cfgmod.trajectory_dict(c, source.digest)))
        real.append(cfgmod.stable_hash({"purpose": "real", "source": source.digest, "sequences": c.real.sequences, "seq_len": c.real.seq_len}))
        seeds.append(c.seed)
    u32 = lambda xs: jnp.asarray(np.asarray(xs, np.uint32))  # noqa: E731
    reps = u32([cell.replicate for cell in cells])
    t, r = np.asarray(traj, np.uint32), np.asarray(real, np.uint32)
    seeds = u32(seeds)
    configs = [cell.point.config for cell in cells]
    return CellParams(
        trajectory_key=_derive_keys(seeds, u32(t[:, 0]), u32(t[:, 1]), reps),
        real_key=_derive_keys(seeds, u32(r[:, 0]), u32(r[:, 1]), reps),
        smoothing=jnp.asarray([c.model.smoothing for c in configs], jnp.float32),
        k=jnp.asarray([c.generate.sequences for c in configs], jnp.int32),
        temperature=jnp.asarray([c.generate.temperature for c in configs], jnp.float32),
        top_k=jnp.asarray([c.generate.top_k for c in configs], jnp.int32),
        top_p=jnp.asarray([c.generate.top_p for c in configs], jnp.float32),
        real_count=jnp.asarray(
            [cfgmod.real_count(c.corpus.real_fraction, c.corpus.train_sequences) for c in configs], jnp.int32
        ),
        learning_rate=jnp.asarray([c.model.learning_rate for c in configs], jnp.float32),
        weight_decay=jnp.asarray([c.model.weight_decay for c in configs], jnp.float32),
        grad_clip=jnp.asarray([c.model.grad_clip for c in configs], jnp.float32),
    )


def column_value(value):
    """A swept value as a Parquet scalar: lists (source.probs) become their YAML text."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(f"{v:g}" for v in value) + "]"
    return value


def metric_rows(spec: GroupSpec, cells: list[Cell], generation: int, out: dict, sweep_keys: list[str]) -> dict:
    """Columns of one generation's rows for the real cells of a chunk."""
    n = len(cells)
    cols: dict = {
        "cell": np.array([c.index for c in cells], np.int64),
        "replicate": np.array([c.replicate for c in cells], np.int64),
        "generation": np.full(n, generation, np.int64),
    }
    for key in sweep_keys:
        cols[key] = [column_value(dict(c.point.values)[key]) for c in cells]
    host = {k: np.asarray(v)[:n] for k, v in out.items()}
    for name in spec.metric_names():
        if name in ("real_tokens", "train_tokens"):
            continue
        cols[name] = host[name].astype(np.int64 if name in INT_METRICS else np.float64)
    cols["real_fraction"] = host["real_tokens"].astype(np.float64) / host["train_tokens"].astype(np.float64)
    return cols


def batch_size(chunk: int, n_devices: int) -> int:
    """Cells per compiled batch: a multiple of the device count, >= 2 per device.

    XLA CPU compiles a batch of one cell per device with the unit axis
    squeezed away, and its vectorised log/exp then differ in the last bit
    from every larger batch; two or more cells per device keep a cell's
    results bit-identical whatever the chunk (DESIGN §7.1). Padding cells
    are copies whose results are dropped.
    """
    per_device = max(2, -(-chunk // n_devices))
    return per_device * n_devices


@dataclass
class Chunk:
    """A contiguous range of a group's cells that runs as one compiled batch.

    `generation` is the last generation completed (-1: not started); `state`
    is the batch's corpus state (padded to the batch size), on the devices or
    on the host between blocks, None before generation 0.
    """

    group: int
    start: int
    stop: int
    generation: int = -1
    state: Any = None


def initial_chunks(plan: Plan, n_devices: int) -> list[Chunk]:
    chunks = []
    for gi, group in enumerate(plan.groups):
        size = batch_size(group.chunk_size, n_devices)
        chunks += [Chunk(gi, s, min(s + size, len(group.cells))) for s in range(0, len(group.cells), size)]
    return chunks


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    """Pad a batch to `size` cells with copies of its last cell."""
    if len(a) == size:
        return a
    return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)])


def restored_chunks(plan: Plan, groups: list[dict[str, np.ndarray]], n_devices: int) -> list[Chunk]:
    """Chunks from a checkpoint's group arrays (`snapshot`), for this plan.

    The chunking may differ from the saved run's (another device count,
    another memory budget, a longer run): a cell's result does not depend on
    its batch (DESIGN §7.1). Cells of a group at different generations (a run
    stopped by a signal) go into different chunks.
    """
    if len(groups) != len(plan.groups):
        raise ValueError(f"the checkpoint holds {len(groups)} groups, the plan {len(plan.groups)}")
    chunks = []
    for gi, (group, arrays) in enumerate(zip(plan.groups, groups)):
        cells = np.array([c.index for c in group.cells], np.int64)
        if not np.array_equal(arrays["cell"], cells):
            raise ValueError(f"group {gi}: the checkpoint's cells differ from the plan's")
        gens = arrays["generation"]
        state = corpus.from_host({k: v for k, v in arrays.items() if k not in ("cell", "generation")}, group.spec.capacity)
        size = batch_size(group.chunk_size, n_devices)
        start = 0
        while start < len(cells):
            stop = start + 1
            while stop < len(cells) and stop - start < size and gens[stop] == gens[start]:
                stop += 1
            chunk = Chunk(gi, start, stop, int(gens[start]))
            if chunk.generation >= 0:
                chunk.state = jax.tree.map(lambda a: _pad(a[start:stop], size), state)
            chunks.append(chunk)
            start = stop
    return chunks


def _host_parts(a, n: int) -> list[np.ndarray]:
    """The first n cells of a batched array as host arrays, one per device
    shard in cell order: views of the device buffers where the backend allows
    (CPU), so nothing is copied until the state is packed."""
    if isinstance(a, jax.Array):
        shards = sorted(a.addressable_shards, key=lambda s: s.index[0].start or 0)
        parts = [np.asarray(s.data) for s in shards]
    else:
        parts = [np.asarray(a)]
    out, have = [], 0
    for p in parts:
        if have >= n:
            break
        out.append(p[: n - have])
        have += len(out[-1])
    return out


def snapshot(plan: Plan, chunks: list[Chunk]) -> list[dict[str, np.ndarray]]:
    """Every group's cells as host arrays: cell index, last generation done,
    and the packed corpus state (`corpus.to_host`). Cells not started hold
    zeros."""
    out = []
    for gi, group in enumerate(plan.groups):
        parts, gens = [], []
        for c in (c for c in chunks if c.group == gi):
            n = c.stop - c.start
            # a chunk not started holds zeros; an empty synth buffer packs to no rows
            state = corpus.zeros(group.spec.state_shapes(capacity=0), n) if c.state is None else c.state
            views = corpus.CorpusState(*(_host_parts(a, n) for a in state[:4]), tuple(_host_parts(a, n) for a in state.model))
            parts.append(corpus.to_host(views))
            gens.append(np.full(n, c.generation, np.int32))
        arrays = {
            "cell": np.array([c.index for c in group.cells], np.int64),
            "generation": np.concatenate(gens),
        }
        for name in parts[0]:
            arrays[name] = np.concatenate([p[name] for p in parts]) if len(parts) > 1 else parts[0][name]
        out.append(arrays)
    return out


def cells_at(chunks: list[Chunk]) -> dict[str, int]:
    """Cells per last completed generation ("-1": not started), newest first,
    keyed by text (JSON)."""
    at: dict[str, int] = {}
    for c in sorted(chunks, key=lambda c: -c.generation):
        at[str(c.generation)] = at.get(str(c.generation), 0) + c.stop - c.start
    return at


def next_stop(done: int, every: int, generations: int) -> int:
    """The next generation at which every cell meets for a checkpoint."""
    if every <= 0:
        return generations
    return min(generations, (max(done, 0) // every + 1) * every)


def state_bytes(spec: GroupSpec) -> int:
    """Bytes of one cell's corpus state (what stays resident between blocks)."""
    shapes = spec.state_shapes()
    return sum(int(np.prod(shape)) * dt.itemsize for shape, dt in (*shapes[:4], *shapes.model))


def run_plan(
    plan: Plan,
    emit: Callable[[dict], None],
    advance: Callable[..., None] = lambda n, **where: None,
    devices=None,
    chunks: list[Chunk] | None = None,
    save: Callable[[list[Chunk], str], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Run every cell of the plan up to generation G; True when all got there.

    The run advances in blocks: every chunk runs to the next multiple of
    checkpoint.every (or G), then save(chunks, reason) is called with every
    cell at that generation. should_stop() is polled between generations; when
    it turns true the chunk running finishes its generation, save(chunks,
    "stopped") is called and run_plan returns False.

    emit(columns) receives each chunk's rows of each generation;
    advance(n, group=, groups=, chunk=, chunks=, generation=) is called as
    each generation of a chunk of n cells completes. `chunks` resumes from
    a checkpoint (`restored_chunks`).
    """
    devices = list(devices if devices is not None else jax.local_devices())
    chunks = chunks if chunks is not None else initial_chunks(plan, len(devices))
    G, every = plan.config.generations, plan.config.checkpoint.every
    resident = len(chunks) == 1 or sum(
        batch_size(plan.groups[c.group].chunk_size, len(devices)) * state_bytes(plan.groups[c.group].spec) for c in chunks
    ) <= memory_budget(devices[0]) * len(devices) // 2
    runners: dict[int, GroupRunner] = {}
    params: dict[int, CellParams] = {}
    per_group = {gi: [c for c in chunks if c.group == gi] for gi in range(len(plan.groups))}

    def runner_for(gi: int) -> GroupRunner:
        if gi not in runners:
            group = plan.groups[gi]
            runners[gi] = GroupRunner(group.spec, group.source, make_world(group.spec, group.source, group.heldout), devices)
        return runners[gi]

    def run_chunk(c: Chunk, target: int) -> bool:
        """Run chunk c to `target`; False if stopped early."""
        group, runner = plan.groups[c.group], runner_for(c.group)
        spec, cells = group.spec, group.cells[c.start : c.stop]
        size = batch_size(group.chunk_size, runner.n_devices)
        if id(c) not in params:
            padded = cells + [cells[-1]] * (size - len(cells))
            params[id(c)] = runner.put_params(cell_params(padded, group.source))
        p = params[id(c)]
        mine = per_group[c.group]
        where = dict(group=c.group + 1, groups=len(plan.groups), chunk=mine.index(c) + 1, chunks=len(mine))
        if c.generation < 0:
            state, out = runner.init(p)
        else:
            state, out = runner.step(runner.put_state(c.state), c.generation + 1, p)
        c.state, g = None, c.generation + 1
        stopped = False
        while g < target:
            if should_stop():
                stopped = True
                break
            state, out_next = runner.step(state, g + 1, p)  # dispatched; runs while we write
            emit(metric_rows(spec, cells, g, out, plan.sweep_keys))
            advance(len(cells), generation=g, **where)
            g, out = g + 1, out_next
        emit(metric_rows(spec, cells, g, out, plan.sweep_keys))
        advance(len(cells), generation=g, **where)
        c.generation = g
        c.state = state if resident else jax.device_get(state)
        return not stopped

    while True:
        behind = [c for c in chunks if c.generation < G]
        if not behind:
            return True
        target = next_stop(min(c.generation for c in behind), every, G)
        for c in chunks:
            if c.generation >= target:
                continue
            if should_stop() or not run_chunk(c, target):
                if save is not None:
                    save(chunks, "stopped")
                return False
        if save is not None:
            save(chunks, "end" if target == G else "every")
