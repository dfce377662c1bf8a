"""The plan of a run: sweep grid x replicates -> cells -> groups -> chunk sizes.

`make_plan` resolves a config into groups of cells that share static shapes
(each compiled once), checks that a cell fits in a device's memory budget
(by the family's estimate, `Family.memory_parts`), and draws each group's
held-out set. Nothing here runs a generation (that is `loop`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import jax
import numpy as np

from collapse_sim import config as cfgmod
from collapse_sim import families, filters, keys
from collapse_sim.config import Config, ConfigError, SweepPoint
from collapse_sim.corpus import CorpusSpec
from collapse_sim.families.base import GroupSpec
from collapse_sim.rundir import format_bytes
from collapse_sim.sources import Source, build_source

INT32_MAX = 2**31 - 1
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
        return self.config.sweep_keys


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
    parts = spec.family.memory_parts(spec)
    fs, cs = spec.filter, spec.corpus
    if fs.active:  # candidates, scores, their ranking and the admitted copy
        rows, L = spec.sample_rows, spec.seq_len
        part = 4 * L * 3 * rows + 32 * rows + 4 * L * cs.gen_capacity
        if fs.kind == "dedup":  # hashes and sort keys of every corpus row
            part += 24 * (cs.real_sequences + cs.capacity) + 4 * L * (cs.real_sequences + cs.capacity)
        if fs.kind == "reference":
            part += 4 * 3 * (spec.vocab_size + 1) ** (fs.reference_order - 1) * spec.vocab_size
            part += 4 * L * 3 * fs.reference_sequences
        parts["generate.filter.oversample"] = part
    return parts


def cell_bytes(spec: GroupSpec) -> int:
    return sum(cell_parts(spec).values())


def group_spec(point: SweepPoint, source: Source, gen_capacity: int, truncates: bool = True) -> GroupSpec:
    """The static spec of a sweep point's group (`gen_capacity`: the largest k in
    it; `truncates`: whether any of its cells samples with top-k or top-p)."""
    c = point.config
    fam = families.get(c.model.kind)
    model = fam.model_spec(c.model, source.vocab_size, c.real.seq_len)
    fs = filters.filter_spec(c.generate, fam.reference_order(model))
    cs = CorpusSpec.for_run(
        c.corpus.policy,
        c.real.sequences,
        c.real.seq_len,
        gen_capacity,
        c.corpus.train_sequences,
        c.generations,
        source.vocab_size,
        fam.count_rows(model),
        fs.keeps_tokens,
    )
    return GroupSpec(fam, model, cs, source.sampler, source.has_truth, fs, truncates)


def _check(where: str, spec: GroupSpec, generations: int, platform: str) -> None:
    spec.family.check(spec, where, platform)
    cs = spec.corpus
    if cs.rule.keeps_all:
        tokens = (cs.real_sequences + (generations + 1) * cs.gen_capacity) * cs.seq_len
        if tokens > INT32_MAX:
            raise ConfigError(
                where,
                "generations",
                f"{cs.policy} would hold {tokens} tokens per cell after "
                f"{generations} generations; the limit is 2**31 - 1",
            )


def _chunk_size(where: str, spec: GroupSpec, n_cells: int, budget: int, devices: list) -> int:
    parts = cell_parts(spec)
    per_cell = sum(parts.values())
    if 2 * per_cell > budget:  # a batch holds at least two cells per device
        key = max(parts, key=parts.get)
        what = spec.family.explain_part(spec, key) or f"{format_bytes(parts[key])} of it for {key}"
        raise ConfigError(
            where,
            key,
            f"one cell needs about {format_bytes(per_cell)} ({what}); two cells per "
            f"device do not fit in the {format_bytes(budget)} a device can give",
        )
    nd = len(devices)
    chunk = min(budget // per_cell * nd, -(-n_cells // nd) * nd)  # the budget is per device
    cap = spec.family.cells_per_device(spec, devices[0].platform)
    if cap is not None:
        chunk = min(chunk, cap * nd)
    return max(nd, chunk // nd * nd)


def make_plan(cfg: Config, where: str, devices=None, budget: int | None = None) -> Plan:
    """Resolve a config into groups of cells; ConfigError if something cannot run.

    budget: bytes a device may give (default: `memory_budget` of the first device)."""
    devices = list(devices if devices is not None else jax.local_devices())
    points = cfgmod.sweep_points(cfg)
    if len(points) * cfg.replicates > MAX_CELLS:
        key = "replicates" if cfg.replicates > MAX_CELLS // max(1, len(points)) else "sweep"
        raise ConfigError(
            where,
            key,
            f"{len(points)} sweep points x {cfg.replicates} replicates = "
            f"{len(points) * cfg.replicates:,} cells; the limit is {MAX_CELLS:,} per run",
        )
    sources: dict = {}
    by_key: dict = {}
    for point in points:
        c = point.config
        skey = (c.source, c.real.seq_len)
        if skey not in sources:
            sources[skey] = build_source(c.source, c.real.seq_len, where)
        source = sources[skey]
        gkey = (group_spec(point, source, 0), source.digest, c.real.heldout)
        by_key.setdefault(gkey, (source, []))[1].append(point)
    groups = []
    budget = memory_budget(devices[0]) if budget is None else budget
    for (_, _, heldout_n), (source, pts) in by_key.items():
        truncates = any(p.config.generate.top_k > 0 or p.config.generate.top_p < 1 for p in pts)
        spec = group_spec(pts[0], source, max(p.config.generate.sequences for p in pts), truncates)
        _check(where, spec, cfg.generations, devices[0].platform)
        cells = [Cell(p.index * cfg.replicates + r, r, p) for p in pts for r in range(cfg.replicates)]
        chunk = _chunk_size(where, spec, len(cells), budget, devices)
        if heldout_n * spec.seq_len * 4 > budget // 4:
            raise ConfigError(
                where,
                "real.heldout",
                f"{heldout_n:,} held-out sequences of {spec.seq_len} tokens "
                f"need {format_bytes(heldout_n * spec.seq_len * 4)}; the limit is "
                f"{format_bytes(budget // 4)}",
            )
        heldout = source.heldout(keys.heldout_key(source.digest, spec.seq_len, heldout_n), heldout_n, spec.seq_len)
        groups.append(Group(spec, source, heldout, cells, chunk))
    return Plan(cfg, points, groups, len(devices))
