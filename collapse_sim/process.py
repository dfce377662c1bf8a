"""Process-wide settings, installed by the CLI and the orchestration (never on import).

- `configure_host_devices`: one XLA CPU device per core (before JAX starts; the CLI).
- `import_soon`: modules the end of a run needs, imported while it runs.
- `seconds_since_start`: this process's age (the start-up time a run records).
- `configure_compilation_cache`: JAX's persistent compilation cache on disk.
- `configure_logging_and_hooks`: orbax's logs quieted and tensorstore's
  closed-loop echoes dropped, so a failed save is reported in one line.
- `use_cpu_collectives`: gloo for CPU devices across processes (distributed runs).
"""

from __future__ import annotations

import logging
import os
import sys


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


def import_soon(*modules: str) -> None:
    """Import modules in a background thread (the figures' matplotlib while
    the generations run, which wait in XLA with the GIL released), so the
    end of a run does not wait for them. Failures are left to the import
    that needs the module."""
    import importlib
    import threading

    def load() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the real import reports it
                return

    threading.Thread(target=load, name="collapse-sim-imports", daemon=True).start()


def seconds_since_start() -> float | None:
    """Seconds since this process started (Linux's /proc), None elsewhere."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as f:
            return float(f.read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def configure_compilation_cache() -> None:
    """Keep compiled programs on disk, so a resume or a repeat of a config
    skips the backend compile.

    JAX's persistent cache, under $XDG_CACHE_HOME/collapse_sim/jax (or
    ~/.cache/...), every program however quick to compile; beside it,
    jax-programs/ holds each group's init and step ready to load without
    tracing (`collapse_sim.compiled`). About 2 MiB per config in all. A
    JAX_COMPILATION_CACHE_DIR the user set wins (the programs go beside it),
    and JAX_COMPILATION_CACHE_DIR= (empty) turns both off. (No size cap:
    JAX's cap needs the filelock package.)
    """
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    jax.config.update("jax_compilation_cache_dir", os.path.join(base, "collapse_sim", "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # the set-up's small programs too


def use_cpu_collectives() -> None:
    """Cross-process collectives of CPU devices through gloo (orbax's
    barriers of a multi-process checkpoint run on every device); before the
    backends start."""
    import jax

    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:  # pragma: no cover - a JAX without the option
        pass


def is_closed_loop_echo(exc_type, exc, tb) -> bool:
    """The error tensorstore prints when a write it was running for orbax ends
    after orbax's event loop has closed: a failed save (a full disk) closes
    the loop while its sibling writes are still in flight, and each one's
    completion callback then fails in `loop.call_soon_threadsafe`."""
    if exc_type is not RuntimeError or str(exc) != "Event loop is closed":
        return False
    return tb is not None and tb.tb_frame.f_code.co_name == "call_soon_threadsafe"


def silence_closed_loop_echoes() -> None:
    """tensorstore reports an exception raised in its completion callback as
    unraisable (`sys.unraisablehook`): after a failed save that is a bare
    traceback on stderr for each interrupted write, though the save's own error
    is already reported in one line. Drop exactly those; everything else
    reaches the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "_collapse_sim", False):
        return

    def hook(unraisable):
        if not is_closed_loop_echo(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback):
            previous(unraisable)

    hook._collapse_sim = True
    sys.unraisablehook = hook


def configure_logging_and_hooks() -> None:
    """orbax logs every save at INFO and failures with a traceback; a run
    reports failures itself, in one line."""
    for name in ("absl", "orbax", "orbax.checkpoint"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    silence_closed_loop_echoes()
