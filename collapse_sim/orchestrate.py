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
"""

from __future__ import annotations

import dataclasses
import re
import time
from datetime import datetime
from pathlib import Path

from collapse_sim import checkpoint, loop, process, reporting, results, rundir
from collapse_sim import config as cfgmod
from collapse_sim import plan as planmod
from collapse_sim.config import Config, ConfigError
from collapse_sim.preview import describe
from collapse_sim.progress import ConsoleReporter, Diverged, Reporter
from collapse_sim.rundir import CONFIG_FILE, FORMAT_VERSION, RUN_FILE, UserError, write_json
from collapse_sim.signals import Interrupted, Stopper


def _saver(ckpt: checkpoint.Checkpointer, writer: results.MetricsWriter, plan: planmod.Plan, fingerprint: dict):
    """The `save` callback of `loop.run_plan`: flush the metric rows, then
    checkpoint every group's state with the metrics manifest and the config
    fingerprint."""

    def save(chunks, reason: str) -> None:
        writer.flush()
        gens = [c.generation for c in chunks]
        meta = {
            "reason": reason,
            "generation_min": min(gens),
            "generation_max": max(gens),
            "generations": plan.config.generations,
            "cells_at": loop.cells_at(chunks),
            "fingerprint": fingerprint,
            "metrics": writer.manifest(),
        }
        ckpt.save(loop.snapshot(plan, chunks), meta)

    return save


def _write_problem(out: Path, e: Exception) -> str:
    """One line for a failed write: a checkpoint's own message, or the OS error."""
    return str(e) if not isinstance(e, OSError) else f"{out}: cannot write ({e.strerror or e})"


def _finish_quietly(ckpt, writer) -> None:
    """After a failure: let a save in flight finish (or fail) and keep what rows we can."""
    for close in (ckpt.close, writer.close):
        try:
            close()
        except Exception:
            pass


def _execute(
    out: Path, cfg: Config, plan: planmod.Plan, info: dict, reporter: Reporter, chunks=None, parts=None
) -> None:
    """Run (or continue) a planned run in `out`: checkpoints, signals, metrics,
    then the figures and summary. The run directory's lock is held by the caller."""
    G = cfg.generations
    chunks = chunks if chunks is not None else loop.initial_chunks(plan, plan.n_devices)
    remaining = sum((c.stop - c.start) * (G - c.generation) for c in chunks)
    try:
        writer = results.MetricsWriter(out, parts=parts)
        ckpt = checkpoint.Checkpointer(out, cfg.checkpoint.keep)
    except (checkpoint.SaveError, OSError) as e:
        raise UserError(_write_problem(out, e)) from None
    save = _saver(ckpt, writer, plan, info["fingerprint"])
    diverged = Diverged(reporter, plan.sweep_keys)

    def emit(cols: dict) -> None:
        diverged(cols)
        writer.add(cols)

    t0 = time.perf_counter()
    info.update(status="running", generations=G)
    write_json(out / RUN_FILE, info)
    stopper = Stopper(out, info)
    reporter.start(remaining, plan.n_cells, G)
    try:
        with stopper:
            done = loop.run_plan(plan, emit, reporter.advance, chunks=chunks, save=save, should_stop=stopper.requested)
            reporter.close()
            ckpt.close()  # the last save is on disk before we say anything
        writer.close()
    except BaseException as e:
        reporter.close()
        _finish_quietly(ckpt, writer)
        disk = isinstance(e, (checkpoint.SaveError, OSError))
        info.update(status="failed", **({"error": str(e)} if disk else {}))
        write_json(out / RUN_FILE, info)
        if disk:
            raise UserError(
                f"{_write_problem(out, e)}. Fix it, then continue with: collapse-sim resume {out}"
            ) from None
        raise
    seconds = time.perf_counter() - t0
    info["seconds"] = round(info.get("seconds", 0) + seconds, 3)
    if not done:
        info.update(status="interrupted", generation=min(c.generation for c in chunks))
        write_json(out / RUN_FILE, info)
        raise Interrupted(
            f"collapse-sim: stopped with {rundir.at_text(loop.cells_at(chunks))}; checkpoint {ckpt.last_saved} "
            f"saved. Continue with: collapse-sim resume {out}",
            stopper.signum,
            out,
        )
    info.update(status="complete", generation=G, finished=datetime.now().isoformat(timespec="seconds"))
    info.pop("error", None)
    write_json(out / RUN_FILE, info)
    _finish(out, cfg, plan, seconds, reporter)


def _finish(out: Path, cfg: Config, plan: planmod.Plan, seconds: float, reporter: Reporter) -> None:
    """The end of a complete run: a warning for diverged cells, the figures and the summary table."""
    df = results.load_metrics(out)
    if "loss_nonfinite" in df:
        bad = df.loc[df["loss_nonfinite"] == 1, "cell"].nunique()
        if bad:
            reporter.warn(
                f"collapse-sim: warning: {bad:,} of {plan.n_cells:,} cells had a non-finite training loss "
                "(rows with loss_nonfinite = 1)"
            )
    table, figures = reporting.write_run_files(out, cfg, df)  # the figures and table of `collapse-sim report`
    reporter.info(reporting.printed(table))
    reporter.info(f"{len(df):,} metric rows; {seconds:.1f} s this session; plots {', '.join(map(str, figures))}")
    reporter.notice(f"run directory: {out}")


def default_out(name: str) -> Path:
    """runs/<name>-<timestamp>/ (a name is never a path)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "run"
    return rundir.stamped_path(Path("runs"), name)


def _check_new_run_dir(out: Path) -> None:
    """Refuse a directory that holds anything: runs are never overwritten."""
    if out.exists():
        if not out.is_dir():
            raise UserError(f"{out}: --out exists and is not a directory")
        if (out / RUN_FILE).exists():
            raise UserError(
                f"{out}: already holds a run; choose another --out (runs are never overwritten), "
                f"or continue it with: collapse-sim resume {out}"
            )
        if any(out.iterdir()):
            raise UserError(f"{out}: --out is a non-empty directory that is not a run; choose an empty or new one")


def _make_run_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create the run directory ({e.strerror or e})") from None


def _prepare() -> None:
    process.configure_compilation_cache()
    process.configure_logging_and_hooks()


def run(
    config: str | Path | Config,
    overrides=(),
    out: str | Path | None = None,
    quiet: bool = True,
    reporter: Reporter | None = None,
) -> Path:
    """Run every cell of a config (a YAML path, or a `Config`) to generation G
    in a new run directory (`out`, default runs/<name>-<timestamp>/, which
    must be new or empty); returns its path. `overrides`: ``key.path=value``
    strings, as the CLI's --set. `quiet=False` shows a progress bar and the
    summary (with `reporter` unset)."""
    where = "<config>" if isinstance(config, Config) else str(config)
    cfg = cfgmod.resolve(config, list(overrides))
    out = Path(out) if out is not None else default_out(cfg.name)
    _check_new_run_dir(out)
    reporter = reporter or _default_reporter(quiet)
    _prepare()
    plan = planmod.make_plan(cfg, where)
    _make_run_dir(out)
    lock = rundir.RunLock(out)
    lock.acquire()
    try:
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
        write_json(out / RUN_FILE, info)
        every = cfg.checkpoint.every
        saves = f"checkpoints every {every} generations" if every else "a checkpoint at the end"
        reporter.info(f"collapse-sim: {cfg.name}: {describe(cfg, plan)}, {saves} -> {out}")
        _execute(out, cfg, plan, info, reporter)
    finally:
        lock.release()
    return out


def resume(
    run_dir: str | Path, generations: int | None = None, quiet: bool = True, reporter: Reporter | None = None
) -> Path:
    """Continue a run from its newest usable checkpoint to its G, or extend it
    to `generations`; returns its path. Results equal those of a run never
    interrupted (DESIGN §7.3)."""
    out = Path(run_dir)
    info = rundir.read_info(out)
    reporter = reporter or _default_reporter(quiet)
    lock = rundir.RunLock(out)
    lock.acquire()
    try:
        _resume(out, info, generations, reporter)
    finally:
        lock.release()
    return out


def _resume(out: Path, info: dict, generations: int | None, reporter: Reporter) -> None:
    _prepare()
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
        reporter.notice(
            f"{out}: already complete at generation {target}; nothing to do "
            f"(extend it with: collapse-sim resume {out} --generations N)"
        )
        return
    try:
        chunks = loop.restored_chunks(plan, groups, plan.n_devices) if groups is not None else None
    except loop.Mismatch as e:
        raise UserError(f"{out}: checkpoint {step} does not fit this run ({e}); nothing was changed") from None

    # from here on the run directory changes
    for s, why in unusable:
        dest = checkpoint.set_aside(out, s)
        reporter.warn(f"collapse-sim: checkpoint {s} is unusable ({why}); moved to {dest}")
    manifest = meta["metrics"] if meta else {"parts": [], "rows": 0}
    n_parts, n_rows = results.prune(out, manifest)
    if target != info["generations"]:
        info["generations"] = target
        write_json(out / RUN_FILE, info)
        rundir.write_text(out / CONFIG_FILE, cfgmod.dump(cfg))
    frm = f"checkpoint {step} ({rundir.at_text(meta['cells_at'])})" if step else "the start (no checkpoint was saved)"
    reporter.info(
        f"collapse-sim: resuming {info['name']} from {frm} to generation {target}: {describe(cfg, plan)}"
        + (f"; dropped {n_rows:,} metric rows written after it (recomputed)" if n_parts else "")
    )
    _execute(out, cfg, plan, info, reporter, chunks=chunks, parts=manifest["parts"])


def _default_reporter(quiet: bool) -> Reporter:
    return Reporter() if quiet else ConsoleReporter(quiet=False)
