"""`collapse-sim`: run model-collapse experiments from YAML configs.

Exit codes: 0 done, 2 the user's mistake (one line on stderr naming the file
and key), 1 a fault of ours (with a traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path

FORMAT_VERSION = 1
RUN_FILE = "run.json"


def configure_host_devices() -> None:
    """Expose one XLA CPU device per core so cells shard across cores.

    Must run before JAX initialises; respects an XLA_FLAGS the user set.
    """
    if "jax" in sys.modules:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cores = os.cpu_count() or 1
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={max(1, cores)}".strip()


class UserError(Exception):
    """A mistake of the user's that is not in a config (paths, run dirs)."""


def _default_out(name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "run"  # a name is never a path
    out = Path("runs") / f"{name}-{stamp}"
    i = 2
    while out.exists():
        out = Path("runs") / f"{name}-{stamp}-{i}"
        i += 1
    return out


def _check_run_dir(out: Path) -> None:
    """Refuse a directory that holds anything: runs are never overwritten."""
    if out.exists():
        if not out.is_dir():
            raise UserError(f"{out}: --out exists and is not a directory")
        if (out / RUN_FILE).exists():
            raise UserError(f"{out}: already holds a run; choose another --out (runs are never overwritten)")
        if any(out.iterdir()):
            raise UserError(f"{out}: --out is a non-empty directory that is not a run; choose an empty or new one")


def _make_run_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create the run directory ({e.strerror or e})") from None


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


class _Progress:
    """A rich progress bar over cell-generations (no-op when quiet)."""

    def __init__(self, total: int, cells: int, generations: int, quiet: bool):
        self.quiet = quiet
        self.cells, self.generations = cells, generations
        if quiet:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task):
                speed = task.finished_speed or task.speed
                return Text(f"{speed:,.0f} cell-gen/s" if speed else "-- cell-gen/s", style="cyan")

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            Rate(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        self.task = self.bar.add_task(f"gen 0/{generations} · {cells} cells", total=total)
        self.bar.start()

    def advance(self, n: int, group: int, groups: int, chunk: int, chunks: int, generation: int) -> None:
        if self.quiet:
            return
        where = f"group {group}/{groups} · " if groups > 1 else ""
        where += f"chunk {chunk}/{chunks} · " if chunks > 1 else ""
        self.bar.update(self.task, advance=n, description=f"{where}gen {generation}/{self.generations} · {self.cells} cells")

    def close(self) -> None:
        if not self.quiet:
            self.bar.stop()


def cmd_run(args) -> int:
    from collapse_sim import config as cfgmod

    cfg = cfgmod.load(args.config, args.set or [])
    out = Path(args.out) if args.out else _default_out(cfg.name)
    _check_run_dir(out)

    from collapse_sim import report, results, scheduler

    plan = scheduler.make_plan(cfg, args.config)
    _make_run_dir(out)
    (out / "config.yaml").write_text(cfgmod.dump(cfg))
    info = {
        "format": FORMAT_VERSION,
        "status": "running",
        "name": cfg.name,
        "cells": plan.n_cells,
        "generations": cfg.generations,
        "sweep_keys": plan.sweep_keys,
        "devices": plan.n_devices,
        "started": datetime.now().isoformat(timespec="seconds"),
    }
    _write_json(out / RUN_FILE, info)
    if not args.quiet:
        print(f"collapse-sim: {cfg.name}: {plan.n_cells} cells ({len(plan.points)} sweep points x "
              f"{cfg.replicates} replicates) in {len(plan.groups)} group(s), generations 0..{cfg.generations}, "
              f"{plan.n_devices} device(s) -> {out}", flush=True)
    writer = results.MetricsWriter(out)
    progress = _Progress(plan.n_cells * (cfg.generations + 1), plan.n_cells, cfg.generations, args.quiet)
    t0 = time.perf_counter()
    try:
        scheduler.run_plan(plan, writer.add, progress.advance)
    except BaseException as e:
        progress.close()
        writer.close()
        info["status"] = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        _write_json(out / RUN_FILE, info)
        raise
    progress.close()
    writer.close()
    seconds = time.perf_counter() - t0
    info.update(status="complete", seconds=round(seconds, 3), finished=datetime.now().isoformat(timespec="seconds"))
    _write_json(out / RUN_FILE, info)

    df = results.load_metrics(out)
    plot = report.plot_metric(df, plan.sweep_keys, out / "heldout_nll.png", title=f"{cfg.name}: held-out NLL")
    report.plot_panels(df, plan.sweep_keys, out / "metrics.png", title=f"{cfg.name}: every metric, median and 10-90 % band over replicates")
    table = report.summary(df, plan.sweep_keys)
    table.to_csv(out / "summary.csv", index=False)
    if not args.quiet:
        with_pd = table.to_string(index=False, float_format=lambda v: f"{v:.4f}")
        print(with_pd)
        print(f"{len(df):,} metric rows in {seconds:.1f} s; plots {plot}, {out / 'metrics.png'}")
    print(f"run directory: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="collapse-sim",
        description="Simulate model collapse: train and sample many tiny language models in parallel, "
        "generation after generation, and record how far they drift from the real data.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    run = sub.add_parser(
        "run",
        help="run an experiment from a YAML config",
        description="Run every cell (sweep point x replicate) of CONFIG through generations 0..G and write "
        "metrics (Parquet), the resolved config, a summary table and plots (held-out NLL; every metric) to a new run directory.",
    )
    run.add_argument("config", metavar="CONFIG", help="YAML experiment file (see configs/quickstart.yaml)")
    run.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a config key (value parsed as YAML); repeatable")
    run.add_argument("--out", metavar="DIR", help="run directory (default runs/<name>-<timestamp>/); must be new or empty")
    run.add_argument("--quiet", action="store_true", help="no progress bar or summary; print only the run directory")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    configure_host_devices()
    from collapse_sim.config import ConfigError

    try:
        return args.func(args)
    except (ConfigError, UserError) as e:
        print(f"collapse-sim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("collapse-sim: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("collapse-sim: internal error (a fault of ours, not your config); please report it with the traceback above", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
