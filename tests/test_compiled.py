"""The disk cache of compiled programs (collapse_sim.compiled): a program a
new process needs comes from disk without tracing and gives bit-identical
results; what cannot be described or loaded is compiled as before; the key
changes with whatever changes the program."""

from __future__ import annotations

import pickle

import jax
import numpy as np
import pytest

from collapse_sim import compiled, engine, keys
from collapse_sim import plan as planmod
from collapse_sim.engine import GroupRunner, make_world
from collapse_sim.loop import padded
from tests.families.test_interface import MARKOV, TRANSFORMER
from tests.helpers import load


@pytest.fixture
def cache(tmp_path, monkeypatch):
    where = tmp_path / "programs"
    monkeypatch.setattr(compiled, "cache_dir", lambda: where)
    return where


def _group(overrides=()):
    cfg = load(MARKOV + ["model.order=2", "model.smoothing=0.1", *overrides])
    return planmod.make_plan(cfg, "t", jax.local_devices()).groups[0]


def _run(group, generations: int = 3) -> list:
    """Host copies of every output of init and the steps, through programs
    made anew (nothing in memory: what they run comes from disk or the compiler)."""
    runner = GroupRunner(group.spec, make_world(group.spec, group.source, group.heldout))
    runner.programs = engine.programs.__wrapped__(group.spec, tuple(jax.local_devices()))
    cells = padded(group.cells, group.chunk_size, runner.n_devices)
    params = runner.put(keys.cell_params(cells, group.source.digest, group.spec.family.traced))
    state, out = runner.init(params)
    seen = [jax.device_get(out)]
    for g in range(1, generations):
        state, out = runner.step(state, g, params)
        seen.append(jax.device_get(out))
    return seen + [jax.device_get(state)]


def _same(a, b) -> None:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True)


def _stats():
    return dict(compiled.STATS)


def test_a_new_process_loads_the_programs_and_gets_the_same_bits(cache):
    group = _group()
    before = _stats()
    first = _run(group)
    made = _stats()
    assert (made["compiled"] - before["compiled"], made["loaded"] - before["loaded"]) == (2, 0)
    assert sorted(p.name.split("-")[0] for p in cache.glob("*.bin")) == ["init", "step"]
    second = _run(group)
    after = _stats()
    assert (after["compiled"] - made["compiled"], after["loaded"] - made["loaded"]) == (0, 2)
    _same(first, second)


def test_a_damaged_entry_is_compiled_again(cache):
    group = _group(["seed=11"])
    first = _run(group, 2)
    for path in cache.glob("*.bin"):
        path.write_bytes(b"not a program")
    before = _stats()
    second = _run(group, 2)
    assert _stats()["compiled"] - before["compiled"] == 2
    _same(first, second)
    for path in cache.glob("*.bin"):  # and written whole again
        assert len(pickle.loads(path.read_bytes())) == 3


def test_without_a_cache_directory_programs_compile_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(compiled, "cache_dir", lambda: None)
    before = _stats()
    _run(_group(["seed=12"]), 2)
    assert _stats()["compiled"] - before["compiled"] == 2 and _stats()["loaded"] == before["loaded"]


def test_the_key_follows_the_spec_the_shapes_the_flags_and_the_code(cache, monkeypatch):
    a, b = _group(), _group(["model.order=3"])
    devices = tuple(jax.local_devices())
    pa = compiled.Program("step", None, a.spec, devices)
    sig = compiled._signature((np.zeros((4, 3), np.int32), {"x": np.float32(1)}))
    path = pa._path(sig)
    assert path == compiled.Program("step", None, _group().spec, devices)._path(sig)  # the same spec, made again
    assert path != compiled.Program("step", None, b.spec, devices)._path(sig)
    assert path != compiled.Program("init", None, a.spec, devices)._path(sig)
    assert path != pa._path(compiled._signature((np.zeros((4, 3), np.float32), {"x": np.float32(1)})))
    assert path != compiled.Program("step", None, a.spec, devices[:1])._path(sig)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=true")
    assert path != pa._path(sig)
    monkeypatch.undo()
    monkeypatch.setattr(compiled, "cache_dir", lambda: cache)
    compiled.code_digest.cache_clear()
    monkeypatch.setattr(compiled, "code_digest", lambda: "another version")
    assert path != pa._path(sig)


def test_specs_have_stable_descriptions_and_odd_values_have_none():
    for overrides in ([], TRANSFORMER):
        text = compiled.describe(_group(overrides).spec)
        assert " at 0x" not in text and text == compiled.describe(_group(overrides).spec)
    assert compiled.describe(_group().spec) != compiled.describe(_group(TRANSFORMER).spec)
    with pytest.raises(compiled.Undescribable):
        compiled.describe(object())
    odd = compiled.Program("step", None, object(), tuple(jax.local_devices()))
    assert odd.ident is None and odd._path(compiled._signature((np.zeros(1),))) is None
