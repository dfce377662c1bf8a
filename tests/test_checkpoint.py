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
import time
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


# ---------------------------------------------------------------- processes that die


# the CLI in a new process; argv[1] caps the size of any file it writes (0: no cap)
LAUNCH = """
import resource, signal, sys
limit = int(sys.argv[1])
if limit:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the cap fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from collapse_sim.cli import main
sys.exit(main(sys.argv[2:]))
"""


def cli_process(*args, file_size_limit: int = 0) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLLAPSE_SIM_FLUSH_SECONDS="0")
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCH, str(file_size_limit), *map(str, args)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate, timeout=120.0, poll=0.002):
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        if predicate():
            return True
        time.sleep(poll)
    return False


def saving(out: Path) -> bool:
    root = out / "checkpoints"
    return root.is_dir() and any(".orbax-checkpoint-tmp" in p.name for p in root.iterdir())


GROW = """\
name: grow
seed: 5
replicates: 4
generations: 8
source: {kind: markov, vocab_size: 20, order: 1, seed: 2}
real: {sequences: 100, seq_len: 32, heldout: 20}
model: {order: 2, smoothing: 0.01}
generate: {sequences: 3000}
corpus: {policy: accumulate_subsample, train_sequences: 100}
checkpoint: {every: 2, keep: 3}
"""


@pytest.mark.e2e
def test_a_failed_checkpoint_write_stops_cleanly_and_keeps_the_previous(tmp_path):
    """A checkpoint that cannot be written (files over a size limit here, as on
    a full disk) stops the run with one line and exit 2; the checkpoint before
    it is intact and a resume finishes the run exactly."""
    cfg = write(tmp_path, GROW)
    ref = tmp_path / "ref"
    assert run_cli("run", cfg, "--out", ref, "--quiet") == 0
    out = tmp_path / "run"
    # checkpoints at generations 2 and 4 fit under 1.2 MB per file; generation 6's does not
    p = cli_process("run", cfg, "--out", out, "--quiet", file_size_limit=1_200_000)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2, err
    line = err.strip().splitlines()[-1]
    assert "cannot write checkpoint" in line and "File too large" in line and f"collapse-sim resume {out}" in line, err
    assert "Traceback" not in err
    step, meta, _, bad = checkpoint.newest_usable(out)
    assert not bad and meta["generation_min"] == 4, (step, meta and meta["cells_at"], bad)
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    assert run_cli("resume", out, "--quiet") == 0
    assert_same_metrics(out, ref)


@pytest.mark.e2e
def test_second_sigterm_exits_at_once_and_the_previous_checkpoint_is_intact(tmp_path):
    """The first SIGTERM starts an orderly stop (finish the generation, save);
    a second, sent as soon as the first is acknowledged, exits at once,
    abandoning that save: the checkpoint before it still verifies."""
    cfg = write(
        tmp_path, GROW.replace("generations: 8", "generations: 40").replace("sequences: 3000", "sequences: 20000")
    )
    out = tmp_path / "run"
    p = cli_process("run", cfg, "--out", out, "--quiet")
    assert wait_for(lambda: len(checkpoint.step_dirs(out)) >= 2, poll=0.005), p.communicate()
    before = checkpoint.step_dirs(out)
    p.send_signal(signal.SIGTERM)
    lines = []
    while not any("finishing the current generation" in line for line in lines):
        lines.append(p.stderr.readline())
        assert lines[-1], lines  # the process must still be there to acknowledge
    p.send_signal(signal.SIGTERM)
    rest = p.communicate(timeout=60)[1]
    err = "".join(lines) + rest
    assert p.returncode == 143, err
    assert "again: exiting now" in err and "checkpoint" in err and "saved" not in rest, err
    step, meta, _, bad = checkpoint.newest_usable(out)
    assert step is not None and step >= max(before) and not bad  # the last complete checkpoint verifies
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"


@pytest.mark.e2e
def test_sigkill_anywhere_then_resume_is_bit_identical(tmp_path):
    """SIGKILL during compute, during a checkpoint write (an orbax temporary
    directory is present when the process dies) and right at start; after
    each, resume; the final metrics equal an uninterrupted run's."""
    cfg = write(tmp_path, GROW.replace("generations: 8", "generations: 16").replace("every: 2", "every: 1"))
    ref = tmp_path / "ref"
    assert run_cli("run", cfg, "--out", ref, "--quiet") == 0
    out = tmp_path / "run"
    kills = []

    def start():
        return cli_process(*(("run", cfg, "--out", out) if not out.exists() else ("resume", out)), "--quiet")

    # 1: at start, while compiling
    p = start()
    assert wait_for(lambda: (out / "run.json").exists())
    p.kill(), p.wait()
    kills.append("start")
    # 2: during compute, past a checkpoint, with metric parts written after it
    p = start()
    assert wait_for(lambda: len(checkpoint.step_dirs(out)) >= 2 and len(results.part_files(out)) >= 8, poll=0.01)
    p.kill(), p.wait()
    kills.append("compute")
    # 3: mid-save, verified by the temporary directory the kill leaves behind
    for _ in range(8):
        p = start()
        wait_for(lambda p=p: saving(out) or p.poll() is not None, poll=0.0005)
        p.kill(), p.wait()
        if saving(out):
            kills.append("mid-save")
            break
    assert "mid-save" in kills
    assert json.loads((out / "run.json").read_text())["status"] == "running"  # nobody said goodbye
    assert run_cli("resume", out, "--quiet") == 0
    assert_same_metrics(out, ref)
    assert not saving(out)  # the partial save was cleaned up


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
