"""Whole processes side by side: `collapse-sim run` of a config against a
peer script, alternately, as a user meets them (start-up, imports, compiling
or loading programs, writing files all included). Shared by the
--whole-process modes of ngram_throughput.py and transformer_throughput.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from compare_runs import importable


def alternate(
    config: str, peer: Callable[[Path, int], list[list[str]]], repeats: int, code: Path | None = None
) -> dict:
    """Time `collapse-sim run CONFIG --quiet` and the peer's processes (run
    together, e.g. one per core) in turn, `repeats` times, after one run that
    warms the caches. peer(tmp, r) gives the peer's command lines.

    The engine runs from a scratch directory, so the working directory never
    shadows the installed package; with `code` (another checkout, e.g. a git
    worktree of an older commit) it imports that checkout's collapse_sim and
    kernels, copied as installed (`compare_runs.importable`).

    Returns the wall times, the paired ratios peer / engine, and from each
    engine run's run.json the seconds spent in its generations, so that
    `outside` = wall - generations is the time a run spends outside its
    generation loop (start-up, programs, the end-of-run files, exit)."""
    engine, peers, outside, timings = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="collapse-sim-whole-") as tmp:
        cfg = Path(tmp) / "whole.yaml"
        cfg.write_text(config)
        cli = [sys.executable, "-m", "collapse_sim.cli", "run", str(cfg), "--quiet"]
        env = dict(os.environ)
        if code is not None:
            site = str(importable(code, Path(tmp)))
            env["PYTHONPATH"] = os.pathsep.join([site, *filter(None, [env.get("PYTHONPATH")])])
        run = dict(check=True, capture_output=True, cwd=tmp, env=env)
        subprocess.run([*cli, "--out", f"{tmp}/warm"], **run)
        for r in range(repeats):
            t = time.perf_counter()
            subprocess.run([*cli, "--out", f"{tmp}/run{r}"], **run)
            engine.append(time.perf_counter() - t)
            timing = json.loads((Path(tmp) / f"run{r}" / "run.json").read_text()).get("timings", {})
            timings.append(timing)
            outside.append(engine[-1] - timing.get("generations_s", float("nan")))
            t = time.perf_counter()
            procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL) for cmd in peer(Path(tmp), r)]
            assert all(p.wait() == 0 for p in procs), "the peer script failed"
            peers.append(time.perf_counter() - t)
    return {
        "engine_s": engine,
        "peer_s": peers,
        "outside_loop_s": outside,
        "timings": timings,
        "speedup": float(np.median([p / e for e, p in zip(engine, peers)])),
        "engine_median_s": float(np.median(engine)),
        "peer_median_s": float(np.median(peers)),
        "outside_median_s": float(np.median(outside)),
    }
