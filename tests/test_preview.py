"""`collapse-sim plan`: the plan without running, chunking under a budget, the
estimate against XLA's own memory analysis, and bad input."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from collapse_sim import keys, loop
from collapse_sim import plan as planmod
from collapse_sim.engine import GroupRunner, make_world
from tests.helpers import TWO, load, run_cli, write


def test_plan_shows_groups_chunks_memory_and_writes_nothing(tmp_path, capsys):
    path = write(tmp_path, TWO)
    assert run_cli("plan", path) == 0
    out = capsys.readouterr().out
    assert out.startswith("6 cells (2 sweep points x 3 replicates) in 2 group(s), generations 0..9, 2 device(s)")
    assert "group 1: ngram, policy replace" in out and "group 2: ngram, policy accumulate_subsample" in out
    assert "3 cells in 1 chunk(s) of 4 (2 per device)" in out
    assert "compiled programs: 4" in out and "checkpoint size: at most" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_a_small_budget_splits_into_chunks_and_too_small_names_the_key(tmp_path, capsys):
    path = write(tmp_path, TWO)
    cfg = load([], path)
    spec = planmod.make_plan(cfg, "t").groups[1].spec
    per_cell = planmod.cell_bytes(spec)
    assert run_cli("plan", path, "--devices", "1", "--memory-budget", 2 * per_cell + 1, "--set", "replicates=7") == 0
    out = capsys.readouterr().out
    assert "7 cells in 4 chunk(s) of 2 (2 per device)" in out and "1 device(s)" in out
    assert run_cli("plan", path, "--memory-budget", per_cell) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and ": real.sequences: one cell needs" in err and "do not fit" in err, err


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--devices", "0"], "--devices: must be >= 1"),
        (["--devices", "3", "--time"], "--time measures on this process's"),
        (["--memory-budget", "0"], "--memory-budget: must be >= 1"),
        (["--set", "replicates=0"], "replicates"),
    ],
)
def test_bad_plan_arguments(tmp_path, capsys, args, fragment):
    assert run_cli("plan", write(tmp_path, TWO), *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and fragment in err, err


def test_time_estimates_the_duration(tmp_path, capsys):
    path = write(tmp_path, TWO)
    assert run_cli("plan", path, "--time", "--set", "generations=99") == 0
    out = capsys.readouterr().out
    assert out.count("ms per generation of a batch") == 2 and "estimated duration: about" in out


def test_the_estimate_covers_what_xla_allocates_within_a_margin(tmp_path):
    """Per cell, the planner's estimate is at least what the compiled init or
    step needs, whichever needs more (XLA's memory analysis: arguments,
    outputs, temporaries), and at most 8 times it (2.1 and 3.8 when
    measured), for an n-gram corpus kept as counts (replace) and one kept as
    tokens (accumulate_subsample) (the transformer's:
    test_memory_estimate_covers_what_xla_allocates, slow)."""
    cfg = load([], write(tmp_path, TWO))
    plan = planmod.make_plan(cfg, "t", jax.local_devices())
    ratios = {}
    for group in plan.groups:
        runner = GroupRunner(group.spec, make_world(group.spec, group.source, group.heldout))
        cells = loop.padded(group.cells, group.chunk_size, runner.n_devices)
        params = runner.put(keys.cell_params(cells, group.source.digest, group.spec.family.traced))
        state, _ = runner.init(params)
        used = max(
            s.argument_size_in_bytes + s.output_size_in_bytes + s.temp_size_in_bytes
            for s in (
                runner.programs.init.jitted.lower(runner.world, params).compile().memory_analysis(),
                runner.programs.step.jitted.lower(runner.world, state, np.int32(1), params).compile().memory_analysis(),
            )
        )
        ratios[group.spec.corpus.policy] = planmod.cell_bytes(group.spec) / (used / len(cells))
    assert all(1 <= r <= 8 for r in ratios.values()), ratios
