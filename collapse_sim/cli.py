"""`collapse-sim`: run model-collapse experiments from YAML configs.

Verbs: run, resume, inspect. Exit codes: 0 done; 2 something for the user to
fix (one line on stderr naming the file and key: bad input, a damaged run
directory, a full or unwritable disk); 1 a fault of ours (with a traceback);
128 + signal (130 Ctrl-C, 143 SIGTERM) stopped with a checkpoint saved, to be
continued with `collapse-sim resume`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path

from collapse_sim.rundir import CONFIG_FILE, FORMAT_VERSION, RUN_FILE, UserError, stamped_path, write_json as _write_json


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


def configure_compilation_cache() -> None:
    """Keep compiled programs on disk, so a resume or a repeat of a config
    skips most compilation (about 80 % of a small run's time).

    JAX's persistent cache, under $XDG_CACHE_HOME/collapse_sim/jax (or
    ~/.cache/...); an entry is a few hundred KiB, about 1 MiB per config. A
    JAX_COMPILATION_CACHE_DIR the user set wins, and
    JAX_COMPILATION_CACHE_DIR= (empty) turns it off. (No size cap: JAX's cap
    needs the filelock package.)
    """
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    jax.config.update("jax_compilation_cache_dir", os.path.join(base, "collapse_sim", "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def _default_out(name: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "run"  # a name is never a path
    return stamped_path(Path("runs"), name)


def _check_run_dir(out: Path) -> None:
    """Refuse a directory that holds anything: runs are never overwritten."""
    if out.exists():
        if not out.is_dir():
            raise UserError(f"{out}: --out exists and is not a directory")
        if (out / RUN_FILE).exists():
            raise UserError(f"{out}: already holds a run; choose another --out (runs are never overwritten), or continue it with: collapse-sim resume {out}")
        if any(out.iterdir()):
            raise UserError(f"{out}: --out is a non-empty directory that is not a run; choose an empty or new one")


def _make_run_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create the run directory ({e.strerror or e})") from None


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

    def warn(self, text: str) -> None:
        """A line on stderr that does not break the bar."""
        if self.quiet:
            print(text, file=sys.stderr)
        else:
            self.bar.console.print(text, markup=False, highlight=False, style="yellow")


class _Diverged:
    """Watches the metric rows for cells whose training loss turned non-finite
    (`loss_nonfinite`, transformers): one warning per cell; the sweep goes on."""

    def __init__(self, progress: _Progress, sweep_keys: list[str]):
        self.progress, self.sweep_keys = progress, sweep_keys
        self.cells: set[int] = set()

    def __call__(self, cols: dict) -> None:
        flags = cols.get("loss_nonfinite")
        if flags is None or not flags.any():
            return
        for i in flags.nonzero()[0]:
            cell = int(cols["cell"][i])
            if cell in self.cells:
                continue
            self.cells.add(cell)
            where = ", ".join([f"replicate {int(cols['replicate'][i])}"] + [f"{k}={cols[k][i]}" for k in self.sweep_keys])
            self.progress.warn(f"collapse-sim: warning: cell {cell} ({where}): non-finite training loss at generation "
                               f"{int(cols['generation'][i])}; its rows have loss_nonfinite = 1 and NaN model metrics. "
                               "The other cells go on.")


class _Stopper:
    """SIGINT/SIGTERM: the first asks the run to finish its generation, save a
    checkpoint and exit; a second exits at once (the previous checkpoint is
    whole: a save cut short never replaces it)."""

    NAMES = {signal.SIGINT: "interrupt (Ctrl-C)", signal.SIGTERM: "SIGTERM"}

    def __init__(self, out: Path, info: dict):
        self.out, self.info = out, info
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self):
        for sig in self.NAMES:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            print(f"\ncollapse-sim: {self.NAMES[signum]}: finishing the current generation, then saving a checkpoint "
                  "(signal again to exit at once)", file=sys.stderr, flush=True)
            return
        print(f"\ncollapse-sim: {self.NAMES[signum]} again: exiting now; the last complete checkpoint is intact. "
              f"Continue with: collapse-sim resume {self.out}", file=sys.stderr, flush=True)
        try:
            _write_json(self.out / RUN_FILE, dict(self.info, status="interrupted"))
        finally:
            os._exit(128 + signum)


def _describe(cfg, plan) -> str:
    return (f"{plan.n_cells} cells ({len(plan.points)} sweep points x {cfg.replicates} replicates) in "
            f"{len(plan.groups)} group(s), generations 0..{cfg.generations}, {plan.n_devices} device(s)")


def _execute(out: Path, cfg, plan, info: dict, quiet: bool, chunks=None, parts=None) -> int:
    """Run (or continue) a planned run in `out`: checkpoints, signals, metrics,
    then the reports. The run directory's lock is held by the caller."""
    from collapse_sim import checkpoint, report, results, scheduler

    G = cfg.generations
    chunks = chunks if chunks is not None else scheduler.initial_chunks(plan, plan.n_devices)
    remaining = sum((c.stop - c.start) * (G - c.generation) for c in chunks)
    try:
        writer = results.MetricsWriter(out, parts=parts)
        ckpt = checkpoint.Checkpointer(out, cfg.checkpoint.keep)
    except (checkpoint.SaveError, OSError) as e:
        raise UserError(_write_problem(out, e)) from None
    save = checkpoint.saver(ckpt, writer, plan, info["fingerprint"])

    progress = _Progress(remaining, plan.n_cells, G, quiet)
    diverged = _Diverged(progress, plan.sweep_keys)

    def emit(cols: dict) -> None:
        diverged(cols)
        writer.add(cols)

    t0 = time.perf_counter()
    info.update(status="running", generations=G)
    _write_json(out / RUN_FILE, info)
    stopper = _Stopper(out, info)
    try:
        with stopper:
            done = scheduler.run_plan(plan, emit, progress.advance, chunks=chunks, save=save,
                                      should_stop=stopper.requested)
            progress.close()
            ckpt.close()  # the last save is on disk before we say anything
        writer.close()
    except BaseException as e:
        progress.close()
        _finish_quietly(ckpt, writer)
        disk = isinstance(e, (checkpoint.SaveError, OSError))
        info.update(status="failed", **({"error": str(e)} if disk else {}))
        _write_json(out / RUN_FILE, info)
        if disk:
            raise UserError(f"{_write_problem(out, e)}. Fix it, then continue with: collapse-sim resume {out}") from None
        raise
    seconds = time.perf_counter() - t0
    info["seconds"] = round(info.get("seconds", 0) + seconds, 3)
    if not done:
        info.update(status="interrupted", generation=min(c.generation for c in chunks))
        _write_json(out / RUN_FILE, info)
        print(f"collapse-sim: stopped with {_at_text(scheduler.cells_at(chunks))}; checkpoint {ckpt.last_saved} saved. "
              f"Continue with: collapse-sim resume {out}", file=sys.stderr)
        return 128 + stopper.signum
    info.update(status="complete", generation=G, finished=datetime.now().isoformat(timespec="seconds"))
    info.pop("error", None)
    _write_json(out / RUN_FILE, info)

    df = results.load_metrics(out)
    if "loss_nonfinite" in df:
        bad = df.loc[df["loss_nonfinite"] == 1, "cell"].nunique()
        if bad:
            print(f"collapse-sim: warning: {bad:,} of {plan.n_cells:,} cells had a non-finite training loss "
                  "(rows with loss_nonfinite = 1)", file=sys.stderr)
    plot = report.plot_metric(df, plan.sweep_keys, out / "heldout_nll.png", title=f"{cfg.name}: held-out NLL")
    report.plot_panels(df, plan.sweep_keys, out / "metrics.png", title=f"{cfg.name}: every metric, median and 10-90 % band over replicates")
    table = report.summary(df, plan.sweep_keys)
    table.to_csv(out / "summary.csv", index=False)
    if not quiet:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(f"{len(df):,} metric rows; {seconds:.1f} s this session; plots {plot}, {out / 'metrics.png'}")
    print(f"run directory: {out}")
    return 0


def _at_text(at: dict) -> str:
    """'every cell at generation 10' or '12 cells at generation 10, 24 not started'."""
    if len(at) == 1:
        (g, _), = at.items()
        return "no cell started" if g == "-1" else f"every cell at generation {g}"
    return ", ".join(f"{n:,} cells " + ("not started" if g == "-1" else f"at generation {g}") for g, n in at.items())


def _write_problem(out: Path, e: Exception) -> str:
    """One line for a failed write: a checkpoint's own message, or the OS error."""
    return str(e) if not isinstance(e, OSError) else f"{out}: cannot write ({e.strerror or e})"


def _finish_quietly(ckpt, writer) -> None:
    """After a failure: let a save in flight finish (or fail) and keep what rows we can."""
    for close in (ckpt.close, writer.close):
        try:
            close()
        except Exception:  # noqa: BLE001 - the first error is the one reported
            pass


def cmd_run(args) -> int:
    from collapse_sim import config as cfgmod, rundir

    cfg = cfgmod.load(args.config, args.set or [])
    out = Path(args.out) if args.out else _default_out(cfg.name)
    _check_run_dir(out)
    configure_compilation_cache()

    from collapse_sim import scheduler

    plan = scheduler.make_plan(cfg, args.config)
    _make_run_dir(out)
    lock = rundir.RunLock(out)
    lock.acquire()
    rundir.write_text(out / CONFIG_FILE, cfgmod.dump(cfg))
    info = {
        "format": FORMAT_VERSION,
        "status": "running",
        "name": cfg.name,
        "cells": plan.n_cells,
        "generations": cfg.generations,
        "sweep_keys": plan.sweep_keys,
        "devices": plan.n_devices,
        "started": datetime.now().isoformat(timespec="seconds"),
        "fingerprint": rundir.fingerprint(cfg, [g.source.digest for g in plan.groups]),
    }
    _write_json(out / RUN_FILE, info)
    if not args.quiet:
        every = cfg.checkpoint.every
        saves = f"checkpoints every {every} generations" if every else "a checkpoint at the end"
        print(f"collapse-sim: {cfg.name}: {_describe(cfg, plan)}, {saves} -> {out}", flush=True)
    try:
        return _execute(out, cfg, plan, info, args.quiet)
    finally:
        lock.release()


def cmd_resume(args) -> int:
    from collapse_sim import rundir

    out = Path(args.run_dir)
    info = rundir.read_info(out)
    lock = rundir.RunLock(out)
    lock.acquire()
    try:
        return _resume(args, out, info)
    finally:
        lock.release()


def _resume(args, out: Path, info: dict) -> int:
    from collapse_sim import checkpoint, config as cfgmod, results, rundir

    configure_compilation_cache()
    where = str(out / CONFIG_FILE)
    cfg = cfgmod.load(out / CONFIG_FILE)
    if cfg.generations != info["generations"]:
        raise cfgmod.ConfigError(where, "generations", f"changed from {info['generations']} to {cfg.generations} in the file; "
                                 f"extend a run with: collapse-sim resume {out} --generations {cfg.generations}")
    target = info["generations"] if args.generations is None else args.generations
    if target < 0:
        raise UserError(f"--generations: must be >= 0, got {target}")

    step, meta, groups, unusable = checkpoint.newest_usable(out)
    saved_fp = meta["fingerprint"] if meta else info.get("fingerprint")
    if unusable and step is None:
        why = "; ".join(f"checkpoint {s}: {w}" for s, w in unusable)
        raise UserError(f"{out}: no usable checkpoint ({why}); nothing was changed")
    done = meta["generation_min"] if meta else -1
    done_max = meta["generation_max"] if meta else -1
    if target < done_max:
        raise UserError(f"--generations {target}: the run has already done {done_max} generations; "
                        f"--generations can only extend a run")

    from collapse_sim import scheduler

    cfg = dataclasses.replace(cfg, generations=target)
    try:
        plan = scheduler.make_plan(cfg, where)
    except cfgmod.ConfigError as e:
        if e.key == "generations" and args.generations is not None:
            raise cfgmod.ConfigError("--generations", "", e.message) from None
        raise
    now_fp = rundir.fingerprint(cfg, [g.source.digest for g in plan.groups])
    if not isinstance(saved_fp, dict):
        raise UserError(f"{out / RUN_FILE}: fingerprint: missing; cannot tell whether config.yaml was changed")
    diff = rundir.changed_key(saved_fp, now_fp)
    if diff is not None:
        key, old, new = diff
        what = ("the source's content changed since the run started" if key == "source.content"
                else f"changed from {old!r} to {new!r} since the run started")
        raise cfgmod.ConfigError(where, key, f"{what}; a resumed run keeps every key that shapes its results "
                                 "(only --generations may change). Start a new run for a new config")
    if step is not None and done >= target and not unusable:
        print(f"{out}: already complete at generation {target}; nothing to do "
              f"(extend it with: collapse-sim resume {out} --generations N)")
        return 0

    # from here on the run directory changes
    for s, why in unusable:
        dest = checkpoint.set_aside(out, s)
        print(f"collapse-sim: checkpoint {s} is unusable ({why}); moved to {dest}", file=sys.stderr)
    manifest = meta["metrics"] if meta else {"parts": [], "rows": 0}
    n_parts, n_rows = results.prune(out, manifest)
    if target != info["generations"]:
        info["generations"] = target
        _write_json(out / RUN_FILE, info)
        rundir.write_text(out / CONFIG_FILE, cfgmod.dump(cfg))
    chunks = scheduler.restored_chunks(plan, groups, plan.n_devices) if groups is not None else None
    if not args.quiet:
        frm = (f"checkpoint {step} ({_at_text(meta['cells_at'])})" if step
               else "the start (no checkpoint was saved)")
        print(f"collapse-sim: resuming {info['name']} from {frm} to generation {target}: {_describe(cfg, plan)}"
              + (f"; dropped {n_rows:,} metric rows written after it (recomputed)" if n_parts else ""), flush=True)
    return _execute(out, cfg, plan, info, args.quiet, chunks=chunks, parts=manifest["parts"])


def cmd_inspect(args) -> int:
    from collapse_sim import checkpoint, config as cfgmod, results, rundir
    from collapse_sim.scheduler import format_bytes

    out = Path(args.run_dir)
    info = rundir.read_info(out)
    try:
        cfg = cfgmod.load(out / CONFIG_FILE)
        config_line = _config_summary(cfg)
    except cfgmod.ConfigError as e:
        cfg, config_line = None, f"unreadable ({e})"
    holder = rundir.held_by(out)
    status = info.get("status", "?")
    if holder:
        status = f"running now (pid {holder})"
    elif status == "running":
        status = "not running (the process that ran it ended without a word: killed?)"
    listed = checkpoint.list_checkpoints(out)
    lines = [
        ("run", str(out)),
        ("status", status + (f": {info['error']}" if info.get("error") else "")),
        ("config", config_line),
    ]
    if cfg is not None and cfg.sweep:
        lines.append(("sweep", "; ".join(f"{k}: {list(v)}" for k, v in cfg.sweep)))
    lines.append(("cells", f"{info['cells']:,}" + (f" ({cfg.replicates} replicates per sweep point)" if cfg else "")))
    usable = [c for c in listed if c.meta is not None]
    newest = usable[-1].meta if usable else None
    if info.get("status") == "complete":
        done = f"{info['generations']} of {info['generations']} (complete)"
    elif newest:
        done = f"{_at_text(newest.get('cells_at', {}))}, of {info['generations']} (checkpoint {usable[-1].step})"
    else:
        done = f"none saved yet, of {info['generations']}"
    lines.append(("generations", done))
    if cfg is not None:
        every = cfg.checkpoint.every
        lines.append(("checkpoints", (f"every {every} generations" if every else "at the end only") + f", newest {cfg.checkpoint.keep} kept"))
    parts = results.part_files(out)
    rows = 0
    for p in parts:
        try:
            rows += results.part_rows(p)
        except Exception:  # noqa: BLE001
            pass
    covered = newest["metrics"]["rows"] if newest else 0
    extra = rows - covered if newest and info.get("status") != "complete" else 0
    lines.append(("metrics", f"{rows:,} rows in {len(parts)} part(s)"
                  + (f"; {extra:,} written after the newest checkpoint (recomputed on resume)" if extra > 0 else "")))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:<{width}}  {v}")
    if listed:
        print()
        print(f"  {'step':>4}  {'generation':>10}  {'reason':<7}  {'saved':<19}  {'size':>10}")
        for c in listed:
            if c.meta is None:
                print(f"  {c.step:>4}  {'?':>10}  {'':<7}  {'':<19}  {format_bytes(c.bytes):>10}  unusable: {c.problem}")
                continue
            lo, hi = c.meta.get("generation_min"), c.meta.get("generation_max")
            gen, note = (f"{lo}", "") if lo == hi else ("mixed", f"  ({_at_text(c.meta.get('cells_at', {}))})")
            print(f"  {c.step:>4}  {gen:>10}  {str(c.meta.get('reason', '')):<7}  {str(c.meta.get('saved', '')):<19}  {format_bytes(c.bytes):>10}{note}")
        print(f"  {'':>4}  {'':>10}  {'total':<7}  {'':<19}  {format_bytes(sum(c.bytes for c in listed)):>10}")
    aside = out / checkpoint.UNUSABLE_DIR
    if aside.is_dir() and any(aside.iterdir()):
        print(f"set aside as unusable: {', '.join(sorted(p.name for p in aside.iterdir()))} (in {aside})")
    if args.verify:
        bad = 0
        for c in listed:
            try:
                checkpoint.restore(out, c.step)
                print(f"checkpoint {c.step}: verified")
            except checkpoint.Unusable as e:
                bad += 1
                print(f"checkpoint {c.step}: unusable: {e}")
        if bad:
            return 1
    if info.get("status") != "complete" and not holder:
        print(f"continue with: collapse-sim resume {out}")
    return 0


def _config_summary(cfg) -> str:
    src = cfg.source
    if src.kind == "text":
        source = f"text ({src.path or 'built-in'})"
    elif src.kind == "markov":
        source = f"markov (V={src.vocab_size}, order {src.order}, seed {src.seed})"
    else:
        source = f"categorical (V={src.vocab_size})"
    m = cfg.model
    if m.kind == "transformer":
        model = (f"transformer d_model {m.d_model}, layers {m.layers}, heads {m.heads}, steps {m.steps}, "
                 f"batch {m.batch_size}, lr {m.learning_rate:g}, init {m.init}, {m.dtype}")
    else:
        model = f"ngram order {m.order}, smoothing {m.smoothing:g}"
    return (f"{cfg.name}: {source}; {model}; "
            f"N0={cfg.real.sequences}, L={cfg.real.seq_len}, k={cfg.generate.sequences}; policy {cfg.corpus.policy}; seed {cfg.seed}")


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
        "metrics (Parquet), the resolved config, checkpoints, a summary table and plots (held-out NLL; every metric) "
        "to a new run directory. Ctrl-C or SIGTERM saves a checkpoint and exits; `collapse-sim resume` continues.",
    )
    run.add_argument("config", metavar="CONFIG", help="YAML experiment file (see configs/quickstart.yaml)")
    run.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a config key (value parsed as YAML); repeatable")
    run.add_argument("--out", metavar="DIR", help="run directory (default runs/<name>-<timestamp>/); must be new or empty")
    run.add_argument("--quiet", action="store_true", help="no progress bar or summary; print only the run directory")
    run.set_defaults(func=cmd_run)
    resume = sub.add_parser(
        "resume",
        help="continue an interrupted run, or extend a finished one",
        description="Continue RUN_DIR from its newest usable checkpoint to its configured generations (or to "
        "--generations G). The results equal those of a run never interrupted; metric rows written after the "
        "checkpoint are recomputed, not duplicated. A damaged checkpoint is set aside and the previous one used. "
        "RUN_DIR/config.yaml must not have changed in any key that shapes the results.",
    )
    resume.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by `collapse-sim run`")
    resume.add_argument("--generations", type=int, metavar="G", help="run to G generations in total (extends a finished run)")
    resume.add_argument("--quiet", action="store_true", help="no progress bar or summary; print only the run directory")
    resume.set_defaults(func=cmd_resume)
    inspect = sub.add_parser(
        "inspect",
        help="print what a run directory holds",
        description="Print a run's status, config summary, generations done, checkpoints (with sizes) and metric rows. "
        "Reads only; changes nothing.",
    )
    inspect.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by `collapse-sim run`")
    inspect.add_argument("--verify", action="store_true", help="also read every checkpoint back and check its checksums (exit 1 if one is unusable)")
    inspect.set_defaults(func=cmd_inspect)
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
