"""Shared by the tests: small plans run in-process, the CLI in-process, and
the configs of the checkpoint and resume tests."""

import hashlib
import os
import signal
from pathlib import Path

import jax
import pandas as pd

from collapse_sim import cli, config, load_metrics, loop, results
from collapse_sim import plan as planmod


def run_rows(cfg, devices=None, keep=None, chunk=None) -> pd.DataFrame:
    """Metrics of a config as a DataFrame sorted by (cell, generation).

    keep(cell) -> bool filters the cells that run; chunk overrides the chunk size.
    """
    devices = devices or jax.local_devices()
    plan = planmod.make_plan(cfg, "test.yaml", devices)
    for g in plan.groups:
        if keep is not None:
            g.cells = [c for c in g.cells if keep(c)]
        if chunk is not None:
            g.chunk_size = chunk
    plan.groups = [g for g in plan.groups if g.cells]
    frames = []
    loop.run_plan(plan, lambda cols: frames.append(pd.DataFrame(cols)), devices=devices)
    return pd.concat(frames).sort_values(["cell", "generation"]).reset_index(drop=True)


def load(overrides, path=None):
    return config.load(path, overrides)


BASE = """\
name: ck
seed: 3
replicates: 3
generations: 9
source: {kind: markov, vocab_size: 5, order: 1, seed: 1}
real: {sequences: 40, seq_len: 8, heldout: 30}
model: {order: 2, smoothing: 0.01}
generate: {sequences: 30}
corpus: {policy: replace, train_sequences: 20, real_fraction: 0.25}
checkpoint: {every: 3, keep: 2, seconds: 0}
"""
TWO = BASE + "sweep: {corpus.policy: [replace, accumulate_subsample]}\n"
ALL = BASE + "sweep: {corpus.policy: [replace, accumulate, accumulate_subsample, mix, fresh]}\n"


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run_cli(*args) -> int:
    return cli.main([str(a) for a in args])


def assert_same_metrics(a: Path, b: Path) -> None:
    x, y = load_metrics(a), load_metrics(b)
    assert not x.duplicated(["cell", "generation"]).any()
    pd.testing.assert_frame_equal(x, y)


def tree_state(path: Path) -> dict:
    """Every file under path with the SHA-256 of its bytes."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


class SignalAfter:
    """Send a real signal to this process after the n-th batch of metric rows."""

    def __init__(self, monkeypatch, n: int, sig=signal.SIGTERM):
        self.calls, self.n, self.sig = 0, n, sig
        add = results.MetricsWriter.add

        def counting(writer, cols):
            add(writer, cols)
            self.calls += 1
            if self.calls == self.n:
                os.kill(os.getpid(), self.sig)

        monkeypatch.setattr(results.MetricsWriter, "add", counting)


# a small quickstart (the built-in text): 2 policies x 2 k x 2 replicates, generations 0..4
SMALL = [
    "replicates=2",
    "generations=4",
    "checkpoint.every=2",
    "checkpoint.seconds=0",
    "real.sequences=60",
    "real.seq_len=8",
    "real.heldout=20",
    "corpus.train_sequences=40",
    "sweep.corpus.policy=[replace, accumulate_subsample]",
    "sweep.generate.sequences=[20, 50]",
]
