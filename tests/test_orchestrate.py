"""The library API (collapse_sim.run / resume / load_metrics), program reuse
within a process, and what importing the package does (nothing heavy, no
process-wide change)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import collapse_sim
from collapse_sim import engine, rundir
from tests.helpers import SMALL

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same config run twice in this process, and the programs made by each."""
    d = tmp_path_factory.mktemp("api")
    config = ROOT / "configs" / "quickstart.yaml"
    made = []
    outs = []
    for name in ("first", "second"):
        before = engine.programs.cache_info()
        outs.append(collapse_sim.run(config, SMALL, out=d / name))
        after = engine.programs.cache_info()
        made.append((after.misses - before.misses, after.hits - before.hits))
    return outs, made


def test_run_returns_a_complete_run_directory(two_runs):
    (out, _), _ = two_runs
    assert isinstance(out, Path) and json.loads((out / "run.json").read_text())["status"] == "complete"
    df = collapse_sim.load_metrics(out)
    assert len(df) == 2 * 2 * 2 * 5 and set(df["corpus.policy"]) == {"replace", "accumulate_subsample"}
    assert (out / "summary.csv").exists() and (out / "metrics.png").exists()


def test_a_second_run_in_the_process_reuses_every_compiled_program(two_runs):
    """The second run makes no program (the cache is keyed by the group's
    static spec and devices) and its jitted functions trace nothing new; its
    results are the first run's."""
    (first, second), made = two_runs
    assert sum(made[0]) == 2 and made[1] == (0, 2), made  # (programs made, programs reused) for 2 groups
    sizes = {id(p): (len(p.init.ready), len(p.step.ready)) for p in _cached_programs()}
    assert all(s == (1, 1) for s in sizes.values()), sizes  # one executable each, shared by both runs
    pd.testing.assert_frame_equal(collapse_sim.load_metrics(first), collapse_sim.load_metrics(second))


def _cached_programs():
    """The programs the cache holds (functools exposes no listing: rebuild the
    keys of the groups the small config has)."""
    import jax

    from collapse_sim import config
    from collapse_sim import plan as planmod

    cfg = config.resolve(ROOT / "configs" / "quickstart.yaml", SMALL)
    plan = planmod.make_plan(cfg, "t")
    return [engine.programs(g.spec, tuple(jax.local_devices())) for g in plan.groups]


def test_resume_extends_a_run_from_python(two_runs, tmp_path):
    import shutil

    (first, _), _ = two_runs
    out = tmp_path / "extended"
    shutil.copytree(first, out)
    assert collapse_sim.resume(out, generations=6) == out
    df = collapse_sim.load_metrics(out)
    assert sorted(df.generation.unique()) == list(range(7)) and not df.duplicated(["cell", "generation"]).any()
    base = collapse_sim.load_metrics(first)
    pd.testing.assert_frame_equal(df[df.generation <= 4].reset_index(drop=True), base)


def test_run_takes_a_config_object_and_refuses_a_used_directory(two_runs, tmp_path):
    (first, _), _ = two_runs
    cfg = collapse_sim.config.load(first / "config.yaml")
    with pytest.raises(collapse_sim.UserError, match="already holds a run"):
        collapse_sim.run(cfg, out=first)
    with pytest.raises(collapse_sim.ConfigError, match="generations"):
        collapse_sim.run(cfg, ["generations=-1"], out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_an_older_run_directory_names_the_version_that_resumes_it(two_runs, tmp_path):
    import shutil

    (first, _), _ = two_runs
    out = tmp_path / "old"
    shutil.copytree(first, out)
    info = json.loads((out / "run.json").read_text())
    for old, version in ((2, r"0\.1"), (3, r"0\.2")):
        (out / "run.json").write_text(json.dumps(dict(info, format=old)))
        with pytest.raises(rundir.UserError, match=rf"format {old} was written by collapse-sim {version}.*=={version}"):
            collapse_sim.resume(out)


HEAVY = ("jax", "pandas", "pyarrow", "matplotlib", "orbax", "rich")


def _in_fresh_python(code: str) -> str:
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_importing_the_package_and_the_cli_is_light():
    out = _in_fresh_python(
        "import sys, collapse_sim, collapse_sim.cli as c; c.build_parser();"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    assert out == "", f"imported on `import collapse_sim` / --help: {out}"


def test_importing_every_module_changes_nothing_in_the_process():
    """No module sets a logger's level, replaces sys.unraisablehook or
    changes the environment when imported; runs do that (process.py)."""
    code = (
        "import logging, os, sys, pkgutil, importlib, collapse_sim\n"
        "env, hook = dict(os.environ), sys.unraisablehook\n"
        "levels = {n: logging.getLogger(n).level for n in ('absl', 'orbax', 'orbax.checkpoint')}\n"
        "for m in pkgutil.walk_packages(collapse_sim.__path__, 'collapse_sim.'):\n"
        "    importlib.import_module(m.name)\n"
        "assert sys.unraisablehook is hook, 'unraisablehook replaced'\n"
        "assert {n: logging.getLogger(n).level for n in levels} == levels, 'log levels changed'\n"
        "assert dict(os.environ) == env, 'environment changed'\n"
        "print('ok')"
    )
    assert _in_fresh_python(code) == "ok"
