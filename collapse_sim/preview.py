"""`collapse-sim plan`: what a run would do, without running it.

The groups (their static shapes), cells, chunks and chunk size per group, the
estimated memory per cell by the config key that drives each part and per
compiled batch against a device's budget, the checkpoint size, the compiled
programs and, with `timed`, an estimate of the run's duration measured by
compiling each group and running two generations of one of its chunks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax

from collapse_sim import config as cfgmod
from collapse_sim import keys, loop
from collapse_sim import plan as planmod
from collapse_sim.config import Config
from collapse_sim.engine import GroupRunner, make_world
from collapse_sim.rundir import UserError, format_bytes


def describe(cfg: Config, plan: planmod.Plan, processes: int = 1) -> str:
    """The one-line summary `collapse-sim run` prints before it starts."""
    where = f"{plan.n_devices} device(s)"
    if processes > 1:
        where = f"{processes} processes x {plan.n_devices} device(s)"
    return (
        f"{plan.n_cells} cells ({len(plan.points)} sweep points x {cfg.replicates} replicates) in "
        f"{len(plan.groups)} group(s), generations 0..{cfg.generations}, {where}"
    )


@dataclass
class GroupTiming:
    compile_s: float  # tracing and compiling the init and step programs (what a first run pays)
    generation_s: float  # one generation of one compiled batch, compiled
    estimate_s: float  # the group's run: compile + chunks x (G + 1) generations


def _shapes(group: planmod.Group) -> str:
    cs, fs = group.spec.corpus, group.spec.filter
    parts = [
        f"{group.spec.family.name}",
        f"policy {cs.policy}",
        f"N0={cs.real_sequences}",
        f"L={cs.seq_len}",
        f"V={cs.vocab_size}",
        f"k<={cs.gen_capacity}",
    ]
    if cs.rule.uses_train_sequences:
        parts.append(f"m={cs.train_sequences}")
    if fs.active:
        parts.append(f"filter {fs.kind} x{fs.oversample}")
    parts.append(f"synth buffer {cs.capacity:,} rows" if cs.capacity else "corpus as counts")
    return ", ".join(parts)


def lines(cfg: Config, plan: planmod.Plan, budget: int, timings: list[GroupTiming] | None = None) -> list[str]:
    """The plan as text, one group after another, then the totals."""
    nd = plan.n_devices
    out = [describe(cfg, plan), f"budget per device: {format_bytes(budget)}"]
    checkpoint = 0
    for gi, group in enumerate(plan.groups):
        batch = loop.batch_size(group.chunk_size, nd)
        chunks = -(-len(group.cells) // batch)
        parts = planmod.cell_parts(group.spec)
        per_cell = sum(parts.values())
        per_device = per_cell * (batch // nd)
        checkpoint += group.spec.state_bytes() * len(group.cells)
        out += [
            f"group {gi + 1}: {_shapes(group)}",
            f"  {len(group.cells):,} cells in {chunks} chunk(s) of {batch} ({batch // nd} per device)",
            f"  memory per cell {format_bytes(per_cell)}: "
            + ", ".join(f"{key} {format_bytes(b)}" for key, b in sorted(parts.items(), key=lambda kv: -kv[1])),
            f"  per device per batch {format_bytes(per_device)} of {format_bytes(budget)} "
            f"({100 * per_device / budget:.1f} %)",
        ]
        if timings is not None:
            t = timings[gi]
            out.append(
                f"  time: compile {t.compile_s:.1f} s, {t.generation_s * 1e3:.1f} ms per generation of a batch; "
                f"about {t.estimate_s:.0f} s for the group"
            )
    out += [
        f"compiled programs: {2 * len(plan.groups)} (an init and a step per group)",
        f"checkpoint size: at most {format_bytes(checkpoint)} (every cell's corpus state at the last generation)",
    ]
    if timings is not None:
        total = sum(t.estimate_s for t in timings)
        out.append(f"estimated duration: about {total:.0f} s ({total / 3600:.2f} h) on these devices")
    return out


def time_groups(cfg: Config, plan: planmod.Plan, devices: list) -> list[GroupTiming]:
    """Compile each group and run its first chunk for two generations.

    Every buffer of a cell's state has its full-run capacity from the start
    (accumulate's synth buffer holds (G + 1) k rows at generation 1), and the
    selection and counting read whole buffers, so a generation costs about
    the same at g = 2 as at g = G: the estimate is the second step's time
    times the generations, plus compiling. It counts compute, not the
    writing of metrics and checkpoints."""
    out = []
    for group in plan.groups:
        runner = GroupRunner(group.spec, make_world(group.spec, group.source, group.heldout), devices)
        batch = loop.batch_size(group.chunk_size, len(devices))
        cells = loop.padded(group.cells[:batch], group.chunk_size, len(devices))
        params = runner.put(keys.cell_params(cells, group.source.digest, group.spec.family.traced))
        t0 = time.perf_counter()
        state, m = runner.init(params)
        jax.block_until_ready(m)
        t1 = time.perf_counter()
        state, m = runner.step(state, 1, params)
        jax.block_until_ready(m)
        t2 = time.perf_counter()
        state, m = runner.step(state, 2, params)
        jax.block_until_ready(m)
        t3 = time.perf_counter()
        gen = t3 - t2
        compile_s = max(0.0, (t1 - t0) - gen) + max(0.0, (t2 - t1) - gen)
        chunks = -(-len(group.cells) // batch)
        out.append(GroupTiming(compile_s, gen, compile_s + chunks * (cfg.generations + 1) * gen))
    return out


def preview(config, overrides=(), devices: int | None = None, memory_budget: int | None = None, timed=False):
    """The plan of a config as lines of text (`collapse-sim plan`).

    devices: plan for this many devices of this process's kind (default: its
    own); memory_budget: bytes per device (default: what the device can
    give); timed: measure (on this process's devices) and estimate the
    duration. ConfigError for a config that cannot run, naming the key."""
    cfg = cfgmod.resolve(config, list(overrides))
    local = jax.local_devices()
    if devices is not None and devices < 1:
        raise UserError(f"--devices: must be >= 1, got {devices}")
    if timed and devices not in (None, len(local)):
        raise UserError(f"--time measures on this process's {len(local)} device(s); drop --devices {devices}")
    if memory_budget is not None and memory_budget < 1:
        raise UserError(f"--memory-budget: must be >= 1 byte, got {memory_budget}")
    planned = local if devices is None else [local[0]] * devices
    budget = planmod.memory_budget(local[0]) if memory_budget is None else memory_budget
    where = "<config>" if isinstance(config, Config) else str(config)
    p = planmod.make_plan(cfg, where, planned, budget)
    return lines(cfg, p, budget, time_groups(cfg, p, local) if timed else None)
