"""Checkpoints, resume, extension, inspect, and the faults of issue 3.

Runs here go through the real CLI: in-process where a signal to ourselves or a
damaged file is enough, in a subprocess where the process must die (SIGKILL,
a second SIGTERM, a file-size limit that makes a checkpoint write fail). Every
resumed run is compared with an uninterrupted one, bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from collapse_sim import checkpoint, load_metrics, results, rundir
from tests.helpers import ALL, TWO, SignalAfter, assert_same_metrics, run_cli, tree_state, write

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- stop and resume


@pytest.mark.parametrize("n, sig", [(7, signal.SIGTERM), (23, signal.SIGINT)])
def test_signal_saves_and_resume_equals_uninterrupted(tmp_path, reference, monkeypatch, capsys, n, sig):
    """SIGTERM/Ctrl-C mid-run: the current generation finishes, a checkpoint is
    saved, the exit says how to resume; resume gives the uninterrupted result
    (every policy, including cells stopped at different generations)."""
    out = tmp_path / "run"
    SignalAfter(monkeypatch, n, sig)
    assert run_cli("run", write(tmp_path, ALL), "--out", out, "--quiet") == 128 + sig
    err = capsys.readouterr().err
    assert f"collapse-sim resume {out}" in err and "checkpoint" in err
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "interrupted"
    step, meta, _, bad = checkpoint.newest_usable(out)
    assert not bad and meta["reason"] == "stopped" and meta["generation_min"] < 9
    monkeypatch.undo()
    assert run_cli("resume", out, "--quiet") == 0
    assert_same_metrics(out, reference["all"])
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_rows_written_after_the_checkpoint_are_not_duplicated(tmp_path, reference, monkeypatch):
    """Parts flushed after the newest checkpoint (here: every batch of rows is a
    part) are dropped on resume, and their rows recomputed."""
    monkeypatch.setenv(results.FLUSH_ENV, "0")
    out = tmp_path / "run"
    SignalAfter(monkeypatch, 12)
    assert run_cli("run", write(tmp_path, TWO), "--out", out, "--quiet") == 143
    # simulate the rows a killed process had written past its checkpoint
    meta = checkpoint.newest_usable(out)[1]
    extra = load_metrics(out).head(5)
    results.MetricsWriter(out, seconds=0).add({k: extra[k].to_numpy() for k in extra.columns})
    assert len(results.part_files(out)) == len(meta["metrics"]["parts"]) + 1
    assert run_cli("resume", out, "--quiet") == 0
    assert_same_metrics(out, reference["two"])


def test_extend_a_finished_run_equals_a_longer_run(tmp_path, reference, capsys):
    out = tmp_path / "run"
    assert (
        run_cli("run", write(tmp_path, TWO.replace("generations: 9", "generations: 4")), "--out", out, "--quiet") == 0
    )
    assert run_cli("resume", out, "--generations", 9, "--quiet") == 0
    assert_same_metrics(out, reference["two"])  # accumulate_subsample's buffer grew from 5 to 10 generations
    assert json.loads((out / "run.json").read_text())["generations"] == 9
    assert "generations: 9" in (out / "config.yaml").read_text()
    capsys.readouterr()
    assert run_cli("resume", out) == 0
    assert "already complete" in capsys.readouterr().out
    assert run_cli("resume", out, "--generations", 5) == 2
    assert "can only extend" in capsys.readouterr().err


@pytest.mark.e2e
def test_resume_on_another_number_of_devices(tmp_path, reference):
    """Cells are independent: a run made on 2 devices and extended by a
    process with 1 device gives the metrics of an uninterrupted 2-device run,
    bit for bit (elastic resume within one process)."""
    out = tmp_path / "run"
    assert (
        run_cli("run", write(tmp_path, TWO.replace("generations: 9", "generations: 4")), "--out", out, "--quiet") == 0
    )
    flags = os.environ["XLA_FLAGS"].replace("device_count=2", "device_count=1")
    assert "device_count=1" in flags
    prog = "import sys; from collapse_sim.cli import main; sys.exit(main(sys.argv[1:]))"
    env = dict(os.environ, XLA_FLAGS=flags, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run(
        [sys.executable, "-c", prog, "resume", str(out), "--generations", "9", "--quiet"], env=env, capture_output=True
    )
    assert done.returncode == 0, done.stderr
    assert_same_metrics(out, reference["two"])


def test_extend_an_interrupted_run(tmp_path, reference, monkeypatch):
    out = tmp_path / "run"
    SignalAfter(monkeypatch, 6)
    assert (
        run_cli("run", write(tmp_path, TWO.replace("generations: 9", "generations: 5")), "--out", out, "--quiet") == 143
    )
    monkeypatch.undo()
    assert run_cli("resume", out, "--generations", 9, "--quiet") == 0
    assert_same_metrics(out, reference["two"])


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path, reference):
    out = tmp_path / "run"
    assert run_cli("run", write(tmp_path, TWO), "--out", out, "--quiet") == 0
    # as if killed before any checkpoint: no checkpoints, some parts, status running
    for step in checkpoint.step_dirs(out):
        shutil.rmtree(out / "checkpoints" / str(step))
    info = json.loads((out / "run.json").read_text())
    rundir.write_json(out / "run.json", dict(info, status="running"))
    assert run_cli("resume", out, "--quiet") == 0
    assert_same_metrics(out, reference["two"])


# ---------------------------------------------------------------- the reference run's bookkeeping
# (here, beside the other readers of the session's reference runs, so the
# suite's workers make them once)


def test_real_fraction_bookkeeping(reference):
    """real_fraction is T_g's real share from integer token counts, for every
    policy (the shared ALL run: N0 = 40, k = 30, m = 20, rho = 0.25)."""
    n0, k, m = 40, 30, 20
    df = load_metrics(reference["all"])
    for policy, sub in df.groupby("corpus.policy"):
        g = sub.generation.to_numpy()
        rf = sub.real_fraction.to_numpy()
        assert (rf[g == 0] == 1.0).all()
        later = rf[g > 0]
        if policy == "replace":
            assert (later == 0).all()
        elif policy == "accumulate":
            np.testing.assert_array_equal(later, n0 / (n0 + g[g > 0] * k))
        elif policy in ("mix", "fresh"):
            assert (later == round(0.25 * m) / m).all()  # 5 / 20
        else:
            assert np.allclose(later * m, np.round(later * m)) and later.min() >= 0  # whole sequences of R out of m
            assert 0 < later.mean() < 1


# ---------------------------------------------------------------- damaged checkpoints


def _data_files(step_dir: Path) -> list[Path]:
    return sorted(
        (p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
        key=lambda p: -p.stat().st_size,
    )


def garble(step_dir: Path) -> None:
    f = _data_files(step_dir)[0]
    b = bytearray(f.read_bytes())
    for i in range(len(b) // 2, min(len(b), len(b) // 2 + 64)):
        b[i] ^= 0x5A
    f.write_bytes(bytes(b))


def delete_data(step_dir: Path) -> None:
    _data_files(step_dir)[0].unlink()


def truncate_meta(step_dir: Path) -> None:
    p = step_dir / "meta" / "metadata"
    p.write_bytes(p.read_bytes()[:40])


@pytest.mark.parametrize("damage", [garble, delete_data, truncate_meta])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, reference, capsys, damage):
    out = tmp_path / "run"
    assert run_cli("run", write(tmp_path, TWO), "--out", out, "--quiet") == 0
    steps = checkpoint.step_dirs(out)
    assert len(steps) == 2  # keep: 2
    damage(out / "checkpoints" / str(steps[-1]))
    capsys.readouterr()
    assert run_cli("resume", out, "--quiet") == 0
    err = capsys.readouterr().err
    assert f"checkpoint {steps[-1]} is unusable" in err, err
    assert (out / checkpoint.UNUSABLE_DIR).is_dir()  # set aside, not deleted
    assert_same_metrics(out, reference["two"])


def test_no_usable_checkpoint_exits_2_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("run", write(tmp_path, TWO), "--out", out, "--quiet") == 0
    for step in checkpoint.step_dirs(out):
        garble(out / "checkpoints" / str(step))
    before = tree_state(out)
    capsys.readouterr()
    assert run_cli("resume", out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no usable checkpoint" in err and "nothing was changed" in err
    assert all(f"checkpoint {s}: " in err for s in checkpoint.step_dirs(out)), err
    assert tree_state(out) == before


# ---------------------------------------------------------------- bad input


def test_edited_config_is_refused_naming_the_key(tmp_path, capsys):
    out = tmp_path / "run"
    mp = pytest.MonkeyPatch()
    SignalAfter(mp, 5)
    assert run_cli("run", write(tmp_path, TWO), "--out", out, "--quiet") == 143
    mp.undo()
    original = (out / "config.yaml").read_text()
    before = tree_state(out)
    for edit, key in (("sequences: 40", "real.sequences"), ("heldout: 30", "real.heldout"), ("seed: 3", "seed")):
        assert edit in original
        new = {"sequences: 40": "sequences: 41", "heldout: 30": "heldout: 31", "seed: 3": "seed: 4"}[edit]
        (out / "config.yaml").write_text(original.replace(edit, new, 1))
        capsys.readouterr()
        assert run_cli("resume", out) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"config.yaml: {key}: changed" in err, err
    (out / "config.yaml").write_text(original.replace("generations: 9", "generations: 12"))
    assert run_cli("resume", out) == 2
    assert "--generations 12" in capsys.readouterr().err
    (out / "config.yaml").write_text(original)
    assert tree_state(out) == before
    # keys that do not shape results may change
    (out / "config.yaml").write_text(original.replace("every: 3", "every: 4"))
    assert run_cli("resume", out, "--quiet") == 0


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda d: None, "no such directory"),
        (lambda d: d.mkdir(), "not a collapse-sim run directory"),
        (lambda d: (d.mkdir(), (d / "run.json").write_text("{not json")), "unreadable"),
        (
            lambda d: (
                d.mkdir(),
                (d / "run.json").write_text('{"format": 1, "name": "x", "cells": 1, "generations": 3}'),
            ),
            "format 1",
        ),
        (lambda d: (d.mkdir(), (d / "run.json").write_text('{"format": 99}')), "format 99"),
    ],
)
def test_not_a_run_directory(tmp_path, capsys, make, expect):
    d = tmp_path / "x"
    make(d)
    for verb in ("resume", "inspect"):
        assert run_cli(verb, d) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expect in err, err


def test_loading_a_run_evaluates_nothing(tmp_path, capsys):
    """A crafted config.yaml cannot run code: it is read with a safe loader."""
    out = tmp_path / "run"
    assert (
        run_cli("run", write(tmp_path, TWO.replace("generations: 9", "generations: 2")), "--out", out, "--quiet") == 0
    )
    marker = tmp_path / "pwned"
    (out / "config.yaml").write_text(
        f"name: !!python/object/apply:os.system ['touch {marker}']\n" + (out / "config.yaml").read_text()
    )
    capsys.readouterr()
    assert run_cli("resume", out, "--generations", 3) == 2
    assert run_cli("inspect", out) == 0  # inspect reports the config as unreadable and goes on
    assert not marker.exists()
    assert "not valid YAML" in capsys.readouterr().err


def test_a_run_in_use_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        run_cli("run", write(tmp_path, TWO.replace("generations: 9", "generations: 2")), "--out", out, "--quiet") == 0
    )
    lock = rundir.RunLock(out)
    lock.acquire()
    try:
        assert rundir.held_by(out) == str(os.getpid())
        assert run_cli("resume", out, "--generations", 3) == 2
        assert "in use by another collapse-sim process" in capsys.readouterr().err
    finally:
        lock.release()


def test_checkpoint_arrays_roundtrip_and_checksums(tmp_path):
    """The array layer alone: zero-size arrays, dtypes, a checksum that catches one flipped bit."""
    rng = np.random.default_rng(0)
    groups = [
        {
            "a": rng.integers(0, 255, (50, 7), dtype=np.uint8),
            "empty": np.zeros((3, 0, 4), np.uint16),
            "f": rng.standard_normal(9).astype(np.float32),
        }
    ]
    (tmp_path / "metrics").mkdir()
    ck = checkpoint.Checkpointer(tmp_path, keep=2)
    ck.save(groups, {"metrics": {"parts": [], "rows": 0}})
    ck.close()
    meta, back = checkpoint.restore(tmp_path, 1)
    for k, v in groups[0].items():
        np.testing.assert_array_equal(back[0][k], v)
        assert back[0][k].dtype == v.dtype
    flipped = groups[0]["a"].copy()
    flipped[3, 3] ^= 1
    assert checkpoint.crc32(flipped) != meta["arrays"][0]["a"]["crc32"]


def test_checkpoint_seconds_is_a_floor_between_block_checkpoints(tmp_path, reference):
    """checkpoint.seconds: a block's checkpoint waits for that much run time
    since the last (the end always saves); 0 saves every block. Same results
    either way."""
    seldom = write(tmp_path, TWO.replace("seconds: 0", "seconds: 3600"))
    assert run_cli("run", seldom, "--out", tmp_path / "seldom", "--quiet") == 0
    steps = checkpoint.step_dirs(tmp_path / "seldom")
    metas = [checkpoint.read_meta(tmp_path / "seldom" / "checkpoints" / str(s)) for s in steps]
    assert [(m["reason"], m["generation_min"]) for m in metas] == [("end", 9)]  # blocks at 3 and 6 skipped
    assert checkpoint.step_dirs(reference["two"]) == [2, 3]  # seconds: 0 -> 3 saves (3, 6, 9), newest 2 kept
    assert_same_metrics(reference["two"], tmp_path / "seldom")


def test_a_stop_saves_whatever_the_floor(tmp_path, monkeypatch):
    """A stop (and the end) checkpoints even inside the floor; a block does not."""
    from collapse_sim import loop, saving
    from collapse_sim.distributed import Processes

    saved = []

    class Ckpt:
        processes = Processes()

        def save(self, snapshot, meta):
            saved.append(meta["reason"])

    class Writer:
        def flush(self):
            pass

        def manifest(self):
            return {"parts": []}

    class Plan:
        class config:
            generations = 9

            class checkpoint:
                seconds = 3600

    monkeypatch.setattr(loop, "snapshot", lambda plan, chunks: {})
    monkeypatch.setattr(loop, "cells_at", lambda chunks: {})
    chunk = loop.Chunk(0, 0, 1, generation=3)
    save = saving.saver(Ckpt(), Writer(), Plan(), {})
    assert save([chunk], "every") is False and saved == []
    assert save([chunk], "stopped") is True and saved == ["stopped"]
    assert save([chunk], "end") is False and saved == ["stopped", "end"]
    Plan.config.checkpoint.seconds = 0
    assert saving.saver(Ckpt(), Writer(), Plan(), {})([chunk], "every") is False and saved[-1] == "every"
