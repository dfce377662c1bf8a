"""What checkpointing costs a run: the quickstart with and without checkpoints.

    python benchmarks/checkpoint_overhead.py            # configs/quickstart.yaml, every: 10
    python benchmarks/checkpoint_overhead.py --quick    # a small smoke version

Both modes run the same plan through `loop.run_plan` with the same
metrics writer into a fresh run directory; the only difference is the `save`
callback the CLI uses (`checkpoint.saver`: flush the rows, snapshot every
group's state, hand it to orbax, which writes in the background). One warm-up
run fills the compilation cache first, so neither mode pays for compiling.
Modes alternate (which goes first alternates too), and the overhead is the
median over pairs of (with / without - 1). On a shared machine that ratio is
noisy (runs drift by several percent either way), so the time the run is
*blocked* by checkpointing is measured directly too: the save calls (flush,
snapshot, checksums, handing arrays to orbax) and the final wait for the last
write. What remains of the wall-clock difference is the background write
competing for the cores.

Prints a table, writes benchmarks/results/checkpoint_overhead.json and appends
a row to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from collapse_sim.process import configure_host_devices

configure_host_devices()

import jax
import numpy as np
from record import record

from collapse_sim import checkpoint, loop, orchestrate, results, rundir
from collapse_sim import config as cfgmod
from collapse_sim import plan as planmod
from collapse_sim.rundir import format_bytes


def one_run(plan, run_dir: Path, with_checkpoints: bool) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    writer = results.MetricsWriter(run_dir)
    ckpt, inner, blocking = None, None, []
    t0 = time.perf_counter()
    if with_checkpoints:
        ckpt = checkpoint.Checkpointer(run_dir, plan.config.checkpoint.keep)
        inner = orchestrate._saver(
            ckpt, writer, plan, rundir.fingerprint(plan.config, [g.source.digest for g in plan.groups])
        )

    def timed_save(chunks, reason):
        t = time.perf_counter()
        inner(chunks, reason)
        blocking.append(time.perf_counter() - t)

    assert loop.run_plan(plan, writer.add, save=timed_save if with_checkpoints else None)
    if ckpt is not None:
        t = time.perf_counter()
        ckpt.close()  # the last save is on disk
        blocking.append(time.perf_counter() - t)
    writer.close()
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "saves": len(blocking) - 1 if with_checkpoints else 0,
        "blocking_s": float(sum(blocking)),
        "checkpoint_bytes": checkpoint.size_on_disk(run_dir),
        "kept": len(checkpoint.step_dirs(run_dir)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(HERE.parent / "configs" / "quickstart.yaml"))
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override, as for `collapse-sim run`"
    )
    ap.add_argument("--pairs", type=int, default=5, help="timed (without, with) pairs")
    ap.add_argument(
        "--quick", action="store_true", help="4 replicates, 20 generations, 1 pair (smoke run; not recorded)"
    )
    ap.add_argument("--no-record", action="store_true", help="do not write JSON or RESULTS.md")
    a = ap.parse_args()
    overrides = list(a.set) + (["replicates=4", "generations=20"] if a.quick else [])
    pairs = 1 if a.quick else a.pairs
    cfg = cfgmod.load(a.config, overrides)
    plan = planmod.make_plan(cfg, a.config)
    tmp = Path(tempfile.mkdtemp(prefix="collapse-sim-ckpt-bench-"))
    jax.config.update("jax_compilation_cache_dir", str(tmp / "jax-cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    print(
        f"{cfg.name}: {plan.n_cells} cells, generations 0..{cfg.generations}, checkpoint every {cfg.checkpoint.every} "
        f"(keep {cfg.checkpoint.keep}), {plan.n_devices} device(s); warm-up run ...",
        flush=True,
    )
    try:
        one_run(plan, tmp / "warmup", True)
        runs = {"without": [], "with": []}
        for i in range(pairs):
            order = ("without", "with") if i % 2 == 0 else ("with", "without")
            for mode in order:
                r = one_run(plan, tmp / mode, mode == "with")
                runs[mode].append(r)
                print(
                    f"  pair {i + 1}: {mode:<8} {r['seconds']:7.1f} s"
                    + (
                        f"  ({r['saves']} saves, {r['blocking_s']:.2f} s blocking, "
                        f"{format_bytes(r['checkpoint_bytes'])} kept)"
                        if mode == "with"
                        else ""
                    ),
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = [w["seconds"] / o["seconds"] - 1 for w, o in zip(runs["with"], runs["without"])]
    med = lambda xs: float(np.median(xs))
    res = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {jax.devices()[0].platform}, {len(jax.devices())} device(s)",
        "config": a.config,
        "overrides": overrides,
        "cells": plan.n_cells,
        "generations": cfg.generations,
        "every": cfg.checkpoint.every,
        "pairs": pairs,
        "without_s": med([r["seconds"] for r in runs["without"]]),
        "with_s": med([r["seconds"] for r in runs["with"]]),
        "overhead": med(ratios),
        "overhead_range": [min(ratios), max(ratios)],
        "saves": runs["with"][0]["saves"],
        "blocking_s": med([r["blocking_s"] for r in runs["with"]]),
        "blocked_fraction": med([r["blocking_s"] / r["seconds"] for r in runs["with"]]),
        "checkpoint_bytes_kept": runs["with"][0]["checkpoint_bytes"],
        "runs": runs,
    }
    print()
    print(f"{'':<28}{'seconds':>10}")
    print(f"{'without checkpoints':<28}{res['without_s']:>10.1f}")
    print(f"{'with checkpoints':<28}{res['with_s']:>10.1f}")
    print(
        f"overhead: {res['overhead']:+.1%} median of {pairs} paired runs "
        f"(range {min(ratios):+.1%} to {max(ratios):+.1%})"
        f"   (target < 10%)"
    )
    print(f"blocked by checkpointing: {res['blocked_fraction']:.1%} of the run (median)")
    print(
        f"{res['saves']} saves per run, {res['blocking_s']:.2f} s blocking the run (saves and the final wait); "
        f"{format_bytes(res['checkpoint_bytes_kept'])} on disk for the {cfg.checkpoint.keep} kept"
    )
    if a.quick:
        print("(--quick is a smoke run; the target is for the full quickstart)")
    if not a.no_record and not a.quick:
        record(
            "checkpoint_overhead",
            res,
            [
                f"quickstart, {plan.n_cells} cells, G={cfg.generations}, every {cfg.checkpoint.every}",
                f"{res['with_s']:.1f} s with, {res['without_s']:.1f} s without",
                f"{res['overhead']:+.1%} overhead",
                f"{res['saves']} saves; blocked {res['blocking_s']:.2f} s ({res['blocked_fraction']:.1%}); "
                f"{format_bytes(res['checkpoint_bytes_kept'])} kept; median of {pairs} pairs",
            ],
        )


if __name__ == "__main__":
    main()
