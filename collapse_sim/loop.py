"""The generation loop: every chunk of every group through its generations.

`run_plan` advances the run in blocks: every chunk runs to the next multiple
of checkpoint.every (or G), then the caller's `save` sees every cell there.
Chunk states stay on the devices between blocks when all of them fit in half
the memory budget, else they go to the host. `snapshot` and `restored_chunks`
turn chunks into a checkpoint's per-group host arrays and back, for any
chunking (a cell's results do not depend on its batch, DESIGN §7.1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from collapse_sim import corpus, keys
from collapse_sim.distributed import Processes, share
from collapse_sim.engine import GroupRunner, make_world
from collapse_sim.plan import Plan, memory_budget
from collapse_sim.results import metric_rows


class Mismatch(ValueError):
    """A checkpoint's arrays do not fit this plan."""


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
    on the host between blocks, None before generation 0; `params` its
    per-cell values on the devices, once made.
    """

    group: int
    start: int
    stop: int
    generation: int = -1
    state: Any = None
    params: Any = None


def padded(cells: list, chunk: int, n_devices: int) -> list:
    """A chunk's cells padded to its compiled batch with copies of its last cell."""
    return cells + [cells[-1]] * (batch_size(chunk, n_devices) - len(cells))


def fit_to_share(plan: Plan, processes: Processes) -> None:
    """Cap each group's chunk size at this process's share of its cells
    (rounded up to the devices): a batch padded past the share would compute
    copies. Nothing changes with one process (a chunk never exceeds the group)."""
    nd = plan.n_devices
    for group in plan.groups:
        lo, hi = share(len(group.cells), processes)
        group.chunk_size = max(nd, min(group.chunk_size, -(-(hi - lo) // nd) * nd))


def initial_chunks(plan: Plan, n_devices: int, processes: Processes | None = None) -> list[Chunk]:
    """The chunks of this process's share of every group's cells (all of them with one process)."""
    chunks = []
    for gi, group in enumerate(plan.groups):
        size = batch_size(group.chunk_size, n_devices)
        lo, hi = share(len(group.cells), processes or Processes())
        chunks += [Chunk(gi, s, min(s + size, hi)) for s in range(lo, hi, size)]
    return chunks


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    """Pad a batch to `size` cells with copies of its last cell."""
    if len(a) == size:
        return a
    return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)])


def _check_arrays(gi: int, group, arrays: dict[str, np.ndarray]) -> None:
    """The checkpoint's arrays of a group are those its state has: the same
    names, and per cell the same shapes and dtypes (the synth buffer is
    packed, so only its row length counts)."""
    shapes = group.spec.state_shapes()
    want = {
        "real": shapes.real,
        "n_synth": shapes.n_synth,
        "counts": shapes.counts,
        "synth_rows": ((shapes.synth[0][1],), shapes.synth[1]),
        **{corpus.MODEL_PREFIX + name: sd for name, sd in shapes.model.items()},
    }
    have = {name: (a.shape[1:], a.dtype) for name, a in arrays.items() if name not in ("cell", "generation")}
    if set(have) != set(want):
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        raise Mismatch(
            f"group {gi}: the checkpoint's arrays differ from the run's"
            + (f" (missing {', '.join(missing)})" if missing else "")
            + (f" (unexpected {', '.join(extra)})" if extra else "")
        )
    for name, (shape, dtype) in want.items():
        if have[name] != (tuple(shape), np.dtype(dtype)):
            raise Mismatch(
                f"group {gi}: checkpoint array {name} holds cells of {have[name][0]} {have[name][1]}, "
                f"the run's are {tuple(shape)} {np.dtype(dtype)}"
            )


def restored_chunks(
    plan: Plan, groups: list[dict[str, np.ndarray]], n_devices: int, processes: Processes | None = None
) -> list[Chunk]:
    """Chunks of this process's share of the cells from a checkpoint's group
    arrays (`snapshot`, every cell of the run), for this plan.

    The chunking may differ from the saved run's (another device or process
    count, another memory budget, a longer run): a cell's result does not
    depend on its batch (DESIGN §7.1). Cells of a group at different
    generations (a run stopped by a signal) go into different chunks.
    `Mismatch` when the arrays are not this plan's (names, shapes, cells).
    """
    if len(groups) != len(plan.groups):
        raise Mismatch(f"the checkpoint holds {len(groups)} groups, the plan {len(plan.groups)}")
    chunks = []
    for gi, (group, arrays) in enumerate(zip(plan.groups, groups)):
        cells = np.array([c.index for c in group.cells], np.int64)
        if not np.array_equal(arrays["cell"], cells):
            raise Mismatch(f"group {gi}: the checkpoint's cells differ from the plan's")
        _check_arrays(gi, group, arrays)
        gens = arrays["generation"]
        state = corpus.from_host(
            {k: v for k, v in arrays.items() if k not in ("cell", "generation")}, group.spec.corpus.capacity
        )
        size = batch_size(group.chunk_size, n_devices)
        start, end = share(len(cells), processes or Processes())
        while start < end:
            stop = start + 1
            while stop < end and stop - start < size and gens[stop] == gens[start]:
                stop += 1
            chunk = Chunk(gi, start, stop, int(gens[start]))
            if chunk.generation >= 0:
                chunk.state = jax.tree.map(lambda a, s=start, e=stop, n=size: _pad(a[s:e], n), state)
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
        if have >= n and out:
            break
        out.append(p[: n - have])
        have += len(out[-1])
    return out


def snapshot(plan: Plan, chunks: list[Chunk]) -> list[dict[str, np.ndarray]]:
    """Every group's cells that `chunks` hold (all of them, or a process's
    share) as host arrays: cell index, last generation done, and the packed
    corpus state (`corpus.to_host`). Cells not started hold zeros."""
    out = []
    for gi, group in enumerate(plan.groups):
        parts, gens, cells = [], [], []
        mine = [c for c in chunks if c.group == gi]
        for c in mine or [Chunk(gi, 0, 0)]:  # a process may hold none of a group's cells
            n = c.stop - c.start
            # a chunk not started holds zeros; an empty synth buffer packs to no rows
            state = corpus.zeros(group.spec.state_shapes(capacity=0), n) if c.state is None else c.state
            views = corpus.CorpusState(
                *(_host_parts(a, n) for a in state[:4]), {name: _host_parts(a, n) for name, a in state.model.items()}
            )
            parts.append(corpus.to_host(views))
            gens.append(np.full(n, c.generation, np.int32))
            cells += [cell.index for cell in group.cells[c.start : c.stop]]
        arrays = {"cell": np.array(cells, np.int64), "generation": np.concatenate(gens)}
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


class _Loop:
    """One call of `run_plan`: the runners of its groups and the chunks."""

    def __init__(self, plan: Plan, chunks: list[Chunk], devices: list, emit, advance, should_stop):
        self.plan, self.chunks, self.devices = plan, chunks, devices
        self.emit, self.advance, self.should_stop = emit, advance, should_stop
        self.runners: dict[int, GroupRunner] = {}
        self.per_group = {gi: [c for c in chunks if c.group == gi] for gi in range(len(plan.groups))}
        self.resident = (
            len(chunks) == 1
            or sum(
                batch_size(plan.groups[c.group].chunk_size, len(devices)) * plan.groups[c.group].spec.state_bytes()
                for c in chunks
            )
            <= memory_budget(devices[0]) * len(devices) // 2
        )

    def runner(self, gi: int) -> GroupRunner:
        if gi not in self.runners:
            group = self.plan.groups[gi]
            world = make_world(group.spec, group.source, group.heldout)
            self.runners[gi] = GroupRunner(group.spec, world, self.devices)
        return self.runners[gi]

    def rows(self, c: Chunk, generation: int, out: dict) -> None:
        group = self.plan.groups[c.group]
        cells = group.cells[c.start : c.stop]
        self.emit(metric_rows(group.spec, cells, generation, out, self.plan.sweep_keys))
        mine = self.per_group[c.group]
        self.advance(
            len(cells),
            generation=generation,
            group=c.group + 1,
            groups=len(self.plan.groups),
            chunk=mine.index(c) + 1,
            chunks=len(mine),
        )

    def run_chunk(self, c: Chunk, target: int) -> bool:
        """Run chunk c to `target`; False if stopped early."""
        group, runner = self.plan.groups[c.group], self.runner(c.group)
        if c.params is None:
            cells = padded(group.cells[c.start : c.stop], group.chunk_size, runner.n_devices)
            c.params = runner.put(keys.cell_params(cells, group.source.digest, group.spec.family.traced))
        if c.generation < 0:
            state, out = runner.init(c.params)
        else:
            state, out = runner.step(runner.put(c.state), c.generation + 1, c.params)
        c.state, g = None, c.generation + 1
        stopped = False
        while g < target:
            if self.should_stop():
                stopped = True
                break
            state, out_next = runner.step(state, g + 1, c.params)  # dispatched; runs while we write
            self.rows(c, g, out)
            g, out = g + 1, out_next
        self.rows(c, g, out)
        c.generation = g
        c.state = state if self.resident else jax.device_get(state)
        return not stopped


def run_plan(
    plan: Plan,
    emit: Callable[[dict], None],
    advance: Callable[..., None] = lambda n, **where: None,
    devices=None,
    chunks: list[Chunk] | None = None,
    save: Callable[[list[Chunk], str], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    processes: Processes | None = None,
) -> bool:
    """Run every cell of the chunks (the plan's, or a process's share) up to
    generation G; True when all got there.

    The run advances in blocks: every chunk runs to the next multiple of
    checkpoint.every (or G), then save(chunks, reason) is called with every
    cell at that generation; with several processes the blocks are the same
    on all (the next stop after the lowest generation of any) and `save` is
    collective. should_stop() is polled between generations; when it turns
    true the chunk running finishes its generation, save(chunks, "stopped")
    is called and run_plan returns False. A `save` that returns True stops
    the run too (another process stopped).

    emit(columns) receives each chunk's rows of each generation;
    advance(n, group=, groups=, chunk=, chunks=, generation=) is called as
    each generation of a chunk of n cells completes. `chunks` resumes from
    a checkpoint (`restored_chunks`).
    """
    devices = list(devices if devices is not None else jax.local_devices())
    chunks = chunks if chunks is not None else initial_chunks(plan, len(devices))
    G, every = plan.config.generations, plan.config.checkpoint.every
    loop = _Loop(plan, chunks, devices, emit, advance, should_stop)
    processes = processes or Processes()
    while True:
        lowest = min(processes.gather("lowest", min((c.generation for c in chunks if c.generation < G), default=G)))
        if lowest >= G:
            return True
        target = next_stop(lowest, every, G)
        stopped = False
        for c in chunks:
            if c.generation < target and (should_stop() or not loop.run_chunk(c, target)):
                stopped = True
                break
        reason = "stopped" if stopped else "end" if target == G else "every"
        if save is not None and save(chunks, reason):  # a collective save: did any process stop?
            stopped = True
        if stopped:
            return False
