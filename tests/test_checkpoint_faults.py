"""Checkpoints when the process itself dies or fails: SIGKILL at any moment,
a second SIGTERM, a checkpoint write the disk refuses. Each run is a real
`collapse-sim` process; every resumed run is compared with an uninterrupted
one, bit for bit. (A file of its own, so the suite's two workers share the
checkpoint tests evenly.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collapse_sim import checkpoint, results
from tests.helpers import assert_same_metrics, run_cli, write

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- processes that die


# the CLI in a new process; argv[1] caps the size of any file it writes (0: no cap)
LAUNCH = """
import resource, signal, sys
limit = int(sys.argv[1])
if limit:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the cap fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from collapse_sim.cli import entry
sys.argv[1:] = sys.argv[2:]
entry()  # as the console script: main(), then a quick exit
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
checkpoint: {every: 2, keep: 3, seconds: 0}
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
