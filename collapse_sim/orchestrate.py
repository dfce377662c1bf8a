"""A run from start to finish: the library API under the CLI.

`run` plans a config and runs it into a new run directory; `resume`
continues one from its newest usable checkpoint (or extends it). Both hold
the run directory's lock, save checkpoints as the loop reaches them, stop on
SIGINT/SIGTERM after saving, and write the end-of-run plots and summary.
What a run tells its user goes through a `Reporter` (the CLI's prints and
progress bar; the library's default says nothing but warnings).

Errors: `ConfigError` / `UserError` for what the user must fix (the CLI's
exit 2), `Interrupted` when a signal stopped the run after a checkpoint
(exit 128 + signal).

With several processes (`distributed.connect`) every process calls the same
function; each runs its share of the cells and writes its own metric parts,
process 0 alone writes run.json, config.yaml and the end-of-run files, and
what they must agree on (the run directory, each checkpoint, a stop) goes
through `distributed.Processes`.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from pathlib import Path

from collapse_sim import checkpoint, compiled, loop, process, results, rundir, saving
from collapse_sim import config as cfgmod
from collapse_sim import plan as planmod
from collapse_sim.config import Config, ConfigError
from collapse_sim.distributed import Processes, shared_run_dir
from collapse_sim.preview import describe
from collapse_sim.progress import ConsoleReporter, Diverged, Reporter, SharedProgress
from collapse_sim.rundir import CONFIG_FILE, FORMAT_VERSION, RUN_FILE, UserError, default_out, write_json
from collapse_sim.signals import Interrupted, Stopper

# what the end of a run imports: the table and figures (pandas, matplotlib)
FINISH_MODULES = ("collapse_sim.reporting", "matplotlib.figure", "matplotlib.backends.backend_agg", "matplotlib.ticker")


def _execute(
    out: Path,
    cfg: Config,
    plan: planmod.Plan,
    info: dict,
    reporter: Reporter,
    chunks=None,
    parts=None,
    processes: Processes | None = None,
) -> None:
    """Run (or continue) a planned run in `out`: checkpoints, signals, metrics,
    then the figures and summary. The run directory's lock is held by the
    caller (process 0's). `chunks`: this process's share."""
    procs = processes or Processes()
    G = cfg.generations
    chunks = chunks if chunks is not None else loop.initial_chunks(plan, plan.n_devices, procs)
    remaining = sum(procs.gather("remaining", sum((c.stop - c.start) * (G - c.generation) for c in chunks)))
    try:
        writer = results.MetricsWriter(out, parts=parts, prefix=f"p{procs.index}-" if procs.many else "")
        ckpt = checkpoint.Checkpointer(out, cfg.checkpoint.keep, procs)
    except (checkpoint.SaveError, OSError) as e:
        raise UserError(saving.write_problem(out, e)) from None
    save = saving.saver(ckpt, writer, plan, info["fingerprint"])
    if procs.many:
        reporter = shared = SharedProgress(reporter if procs.primary else Reporter(), procs)
        save_block = save

        def save(chunks, reason: str) -> bool:
            shared.flush()
            return save_block(chunks, reason)

    diverged = Diverged(reporter, plan.sweep_keys)

    warm = [procs.primary]

    def emit(cols: dict) -> None:
        if warm[0]:  # the first rows: load what the end of the run draws with, while it runs
            warm[0] = False
            process.import_soon(*FINISH_MODULES)
        diverged(cols)
        writer.add(cols)

    def write_info() -> None:
        if procs.primary:
            write_json(out / RUN_FILE, info)

    t0, made = time.perf_counter(), compiled.STATS["seconds"]
    started = process.seconds_since_start()
    info.update(status="running", generations=G)
    write_info()
    stopper = Stopper(out, info if procs.primary else None)
    should_stop = procs.stop_check(stopper.requested)
    reporter.start(remaining, plan.n_cells, G)
    try:
        with stopper:
            done = loop.run_plan(
                plan, emit, reporter.advance, chunks=chunks, save=save, should_stop=should_stop, processes=procs
            )
            reporter.close()
            ckpt.close()  # the last save is on disk before we say anything
        writer.close()
    except BaseException as e:
        reporter.close()
        saving.finish_quietly(ckpt, writer)
        disk = isinstance(e, (checkpoint.SaveError, OSError))
        info.update(status="failed", **({"error": str(e)} if disk else {}))
        write_info()
        if disk:
            raise UserError(
                f"{saving.write_problem(out, e)}. Fix it, then continue with: collapse-sim resume {out}"
            ) from None
        raise
    seconds = time.perf_counter() - t0
    info["seconds"] = round(info.get("seconds", 0) + seconds, 3)
    made = compiled.STATS["seconds"] - made
    # where this session's time went (docs/architecture.md "Start-up and finish")
    info["timings"] = {
        "start_s": None if started is None else round(started, 3),
        "programs_s": round(made, 3),
        "generations_s": round(seconds - made, 3),
    }
    if not done:
        info.update(status="interrupted", generation=ckpt.last_meta["generation_min"])
        write_info()
        raise Interrupted(
            f"collapse-sim: stopped with {rundir.at_text(ckpt.last_meta['cells_at'])}; checkpoint {ckpt.last_saved} "
            f"saved. Continue with: collapse-sim resume {out}",
            stopper.signum,
            out,
        )
    info.update(status="complete", generation=G, finished=datetime.now().isoformat(timespec="seconds"))
    info.pop("error", None)
    write_info()
    if procs.primary:
        t1 = time.perf_counter()
        _finish(out, cfg, plan, info["timings"], reporter)
        info["timings"]["finish_s"] = round(time.perf_counter() - t1, 3)
        write_info()


def _finish(out: Path, cfg: Config, plan: planmod.Plan, timings: dict, reporter: Reporter) -> None:
    """The end of a complete run: a warning for diverged cells, the figures and the summary table."""
    df = results.load_metrics(out)
    if "loss_nonfinite" in df:
        bad = df.loc[df["loss_nonfinite"] == 1, "cell"].nunique()
        if bad:
            reporter.warn(
                f"collapse-sim: warning: {bad:,} of {plan.n_cells:,} cells had a non-finite training loss "
                "(rows with loss_nonfinite = 1)"
            )
    from collapse_sim import reporting

    table, figures = reporting.write_run_files(out, cfg, df)  # the figures and table of `collapse-sim report`
    reporter.info(reporting.printed(table))
    t = timings
    start = "" if t["start_s"] is None else f"start-up {t['start_s']:.1f} s, "
    reporter.info(
        f"{len(df):,} metric rows; {start}programs {t['programs_s']:.1f} s, generations {t['generations_s']:.1f} s; "
        f"plots {', '.join(map(str, figures))}"
    )
    reporter.notice(f"run directory: {out}")


def _prepare() -> None:
    process.configure_compilation_cache()
    process.configure_logging_and_hooks()


def run(
    config: str | Path | Config,
    overrides=(),
    out: str | Path | None = None,
    quiet: bool = True,
    reporter: Reporter | None = None,
    processes: Processes | None = None,
) -> Path:
    """Run every cell of a config (a YAML path, or a `Config`) to generation G
    in a new run directory (`out`, default runs/<name>-<timestamp>/, which
    must be new or empty); returns its path. `overrides`: ``key.path=value``
    strings, as the CLI's --set. `quiet=False` shows a progress bar and the
    summary (with `reporter` unset). `processes`: this process's place in a
    distributed run (`distributed.connect`); every process calls `run`."""
    procs = processes or Processes()
    where = "<config>" if isinstance(config, Config) else str(config)
    cfg = procs.all_ok("config", lambda: cfgmod.resolve(config, list(overrides)))
    procs.same("config-text", cfgmod.dump(cfg), "the resolved config (file and --set)")
    out = Path(
        procs.broadcast("out", str(out if out is not None else default_out(cfg.name)) if procs.primary else None)
    )
    procs.agree("out-check", lambda: rundir.check_new_run_dir(out))
    reporter = reporter or _default_reporter(quiet)
    _prepare()
    plan = procs.all_ok("plan", lambda: planmod.make_plan(cfg, where))
    loop.fit_to_share(plan, procs)
    lock = rundir.RunLock(out)
    procs.agree("run-dir", lambda: (rundir.make_run_dir(out), lock.acquire()))
    try:
        shared_run_dir(out, procs, made=True)
        info = {
            "format": FORMAT_VERSION,
            "status": "running",
            "name": cfg.name,
            "cells": plan.n_cells,
            "generations": cfg.generations,
            "sweep_keys": plan.sweep_keys,
            "devices": plan.n_devices * procs.count,
            "processes": procs.count,
            "started": datetime.now().isoformat(timespec="seconds"),
            "fingerprint": rundir.fingerprint(cfg, [g.source.digest for g in plan.groups]),
        }
        if procs.primary:
            rundir.write_text(out / CONFIG_FILE, cfgmod.dump(cfg))
            write_json(out / RUN_FILE, info)
            saves = "checkpoints " + cfg.checkpoint.cadence()
            reporter.info(f"collapse-sim: {cfg.name}: {describe(cfg, plan, procs.count)}, {saves} -> {out}")
        _execute(out, cfg, plan, info, reporter, processes=procs)
    finally:
        lock.release()
    return out


def resume(
    run_dir: str | Path,
    generations: int | None = None,
    quiet: bool = True,
    reporter: Reporter | None = None,
    processes: Processes | None = None,
) -> Path:
    """Continue a run from its newest usable checkpoint to its G, or extend it
    to `generations`; returns its path. Results equal those of a run never
    interrupted (DESIGN §7.3), on any number of processes (`processes`, as
    for `run`) and devices."""
    procs = processes or Processes()
    out = Path(run_dir)
    procs.same("resume-target", [str(out), generations], "RUN_DIR or --generations")
    info = procs.all_ok("run-dir", lambda: rundir.read_info(out))
    reporter = reporter or _default_reporter(quiet)
    lock = rundir.RunLock(out)
    procs.agree("lock", lock.acquire)
    try:
        shared_run_dir(out, procs, made=False)
        _resume(out, info, generations, reporter, procs)
    finally:
        lock.release()
    return out


def _resume(out: Path, info: dict, generations: int | None, reporter: Reporter, procs: Processes) -> None:
    _prepare()
    ready = procs.all_ok("resume", lambda: _resumable(out, info, generations, reporter, procs))
    if ready is None:
        return
    cfg, plan, step, meta, chunks, unusable = ready
    # from here on the run directory changes (process 0 changes it; the others wait)
    manifest = meta["metrics"] if meta else {"parts": [], "rows": 0}
    if procs.primary:
        for s, why in unusable:
            dest = checkpoint.set_aside(out, s)
            reporter.warn(f"collapse-sim: checkpoint {s} is unusable ({why}); moved to {dest}")
        n_parts, n_rows = results.prune(out, manifest)
        info.update(processes=procs.count, devices=plan.n_devices * procs.count)  # this session's
        if target_changed := cfg.generations != info["generations"]:
            info["generations"] = cfg.generations
        write_json(out / RUN_FILE, info)
        if target_changed:
            rundir.write_text(out / CONFIG_FILE, cfgmod.dump(cfg))
        frm = (
            f"checkpoint {step} ({rundir.at_text(meta['cells_at'])})" if step else "the start (no checkpoint was saved)"
        )
        reporter.info(
            f"collapse-sim: resuming {info['name']} from {frm} to generation {cfg.generations}: "
            f"{describe(cfg, plan, procs.count)}"
            + (f"; dropped {n_rows:,} metric rows written after it (recomputed)" if n_parts else "")
        )
    info.update(processes=procs.count, devices=plan.n_devices * procs.count, generations=cfg.generations)
    procs.barrier("resume-ready")
    _execute(out, cfg, plan, info, reporter, chunks=chunks, parts=manifest["parts"], processes=procs)


def _resumable(out: Path, info: dict, generations: int | None, reporter: Reporter, procs: Processes):
    """What a resume continues from, checked before anything changes:
    (config, plan, step, meta, this process's chunks, unusable newer steps),
    or None when there is nothing to do."""
    where = str(out / CONFIG_FILE)
    cfg = cfgmod.load(out / CONFIG_FILE)
    if cfg.generations != info["generations"]:
        raise ConfigError(
            where,
            "generations",
            f"changed from {info['generations']} to {cfg.generations} in the "
            f"file; extend a run with: collapse-sim resume {out} --generations {cfg.generations}",
        )
    target = info["generations"] if generations is None else generations
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
        raise UserError(
            f"--generations {target}: the run has already done {done_max} generations; "
            f"--generations can only extend a run"
        )

    cfg = dataclasses.replace(cfg, generations=target)
    try:
        plan = planmod.make_plan(cfg, where)
    except ConfigError as e:
        if e.key == "generations" and generations is not None:
            raise ConfigError("--generations", "", e.message) from None
        raise
    loop.fit_to_share(plan, procs)
    now_fp = rundir.fingerprint(cfg, [g.source.digest for g in plan.groups])
    if not isinstance(saved_fp, dict):
        raise UserError(f"{out / RUN_FILE}: fingerprint: missing; cannot tell whether config.yaml was changed")
    diff = rundir.changed_key(saved_fp, now_fp)
    if diff is not None:
        key, old, new = diff
        what = (
            "the source's content changed since the run started"
            if key == "source.content"
            else f"changed from {old!r} to {new!r} since the run started"
        )
        raise ConfigError(
            where,
            key,
            f"{what}; a resumed run keeps every key that shapes its results "
            "(only --generations may change). Start a new run for a new config",
        )
    if step is not None and done >= target and not unusable:
        if procs.primary:
            reporter.notice(
                f"{out}: already complete at generation {target}; nothing to do "
                f"(extend it with: collapse-sim resume {out} --generations N)"
            )
        return None
    try:
        chunks = loop.restored_chunks(plan, groups, plan.n_devices, procs) if groups is not None else None
    except loop.Mismatch as e:
        raise UserError(f"{out}: checkpoint {step} does not fit this run ({e}); nothing was changed") from None
    return cfg, plan, step, meta, chunks, unusable


def _default_reporter(quiet: bool) -> Reporter:
    return Reporter() if quiet else ConsoleReporter(quiet=False)
