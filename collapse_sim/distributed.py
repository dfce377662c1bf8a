"""Several processes, one run: JAX's multi-controller runtime.

A distributed run starts one process per host (or per GPU), each with the
same command; `connect` joins them through `jax.distributed.initialize`
(explicit coordinator flags, the COLLAPSE_SIM_* environment variables, or
JAX's own cluster detection: SLURM, Cloud TPU, ...).

Cells are independent, so the processes do not share a mesh for the
simulation: each runs a contiguous share of every group's cells on its own
devices (`share`), with the same compiled programs as a one-process run, so
a cell's results do not depend on the process count. What the processes
must agree on goes through the runtime's key-value store and barriers
(`Processes.gather`, `Processes.barrier`): the run directory, each
checkpoint's contents, the progress of the run. Checkpoints are written
collectively by orbax (`checkpoint.Checkpointer`). `Processes()` is the
one-process case, where every exchange is local.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from collapse_sim.rundir import LOCK_FILE, UserError
from collapse_sim.schema import ConfigError

ENV_COORDINATOR = "COLLAPSE_SIM_COORDINATOR"
ENV_NUM_PROCESSES = "COLLAPSE_SIM_NUM_PROCESSES"
ENV_PROCESS_ID = "COLLAPSE_SIM_PROCESS_ID"
ENV_HEARTBEAT = "COLLAPSE_SIM_HEARTBEAT_SECONDS"  # a lost process is noticed within about this long
ENV_CONNECT = "COLLAPSE_SIM_CONNECT_SECONDS"  # how long to wait for every process to join
HEARTBEAT_SECONDS = 60
CONNECT_SECONDS = 300
WAIT_MS = 24 * 3600 * 1000  # a gather waits for the slowest process's block; a lost one ends it sooner


@dataclass(frozen=True)
class Launch:
    """Where a process stands in a distributed run, before it connects.
    None: left to JAX's cluster detection."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def _int_setting(value, what: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError(f"{what}: expected an integer, got {value!r}") from None


def launch_settings(coordinator=None, num_processes=None, process_id=None, env=None) -> Launch:
    """The flags, else the environment variables, else None (JAX's cluster
    detection). Checks what it can before anything connects."""
    env = os.environ if env is None else env
    coordinator = coordinator or env.get(ENV_COORDINATOR) or None
    n = num_processes if num_processes is not None else _int_setting(env.get(ENV_NUM_PROCESSES), ENV_NUM_PROCESSES)
    i = process_id if process_id is not None else _int_setting(env.get(ENV_PROCESS_ID), ENV_PROCESS_ID)
    if coordinator is not None:
        host, sep, port = coordinator.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(f"--coordinator: expected HOST:PORT, got {coordinator!r}")
    if n is not None and n < 1:
        raise UserError(f"--num-processes: must be >= 1, got {n}")
    if i is not None and (i < 0 or (n is not None and i >= n)):
        raise UserError(f"--process-id: must be in [0, {n}) , got {i}" if n else f"--process-id: must be >= 0, got {i}")
    given = [x is not None for x in (coordinator, n, i)]
    if any(given) and not all(given) and not _cluster_detected(env):
        missing = [name for name, g in zip(("--coordinator", "--num-processes", "--process-id"), given) if not g]
        raise UserError(
            f"--distributed: {', '.join(missing)} not given and no cluster detected; give all three "
            f"(or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID})"
        )
    return Launch(coordinator, n, i)


def _cluster_detected(env) -> bool:
    """A scheduler JAX can read the missing values from (SLURM, Open MPI, TPU)."""
    return any(
        k in env
        for k in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")
    )


def _seconds(name: str, default: int) -> int:
    value = _int_setting(os.environ.get(name), name)
    return default if value is None else max(1, value)


def connect_seconds() -> int:
    """How long a process waits for every other to join."""
    return _seconds(ENV_CONNECT, CONNECT_SECONDS)


def heartbeat_seconds() -> int:
    """How long the runtime waits for a silent process before it ends the run."""
    return _seconds(ENV_HEARTBEAT, HEARTBEAT_SECONDS)


@dataclass
class Processes:
    """The processes of a run, and the exchanges between them.

    Every process calls `gather` and `barrier` in the same order with the
    same names; the one-process case (the default) exchanges nothing.
    """

    count: int = 1
    index: int = 0
    client: object = field(default=None, repr=False)  # jax's DistributedRuntimeClient when count > 1
    _seq: int = field(default=0, repr=False)

    @property
    def primary(self) -> bool:
        return self.index == 0

    @property
    def many(self) -> bool:
        return self.count > 1

    def _key(self, name: str) -> str:
        self._seq += 1
        return f"collapse_sim/{self._seq}/{name}"

    def gather(self, name: str, value):
        """Every process's `value` (JSON-able), in process order."""
        if not self.many:
            return [value]
        key = self._key(name)
        self.client.key_value_set(f"{key}/{self.index}", json.dumps(value))
        return [json.loads(self.client.blocking_key_value_get(f"{key}/{i}", WAIT_MS)) for i in range(self.count)]

    def broadcast(self, name: str, value=None):
        """Process 0's `value`, on every process."""
        if not self.many:
            return value
        key = self._key(name)
        if self.primary:
            self.client.key_value_set(key, json.dumps(value))
            return value
        return json.loads(self.client.blocking_key_value_get(key, WAIT_MS))

    def barrier(self, name: str) -> None:
        if self.many:
            self.client.wait_at_barrier(self._key(name), WAIT_MS)

    def agree(self, name: str, fn):
        """Run fn() on process 0 and give its result to every process; a
        `UserError` it raises is raised on every process."""
        if not self.many:
            return fn()
        result, error = None, None
        if self.primary:
            try:
                result = fn()
            except UserError as e:
                error = str(e)
        result, error = self.broadcast(name, [result, error])
        if error is not None:
            raise UserError(error)
        return result

    def all_ok(self, name: str, fn):
        """fn() on every process; when it raises a user's error on any of
        them, every process raises it (naming the process), so none is left
        waiting for the others."""
        try:
            result, error = fn(), None
        except (UserError, ConfigError) as e:
            if not self.many:
                raise
            result, error = None, e
        if self.many:
            errors = self.gather(name, None if error is None else str(error))
            first = next(((i, e) for i, e in enumerate(errors) if e is not None), None)
            if first is not None:
                if error is not None:
                    raise error
                raise UserError(f"process {first[0]}: {first[1]}")
        return result

    def same(self, name: str, value, what: str) -> None:
        """Refuse, on every process, a `value` that differs from process 0's."""
        if not self.many:
            return
        values = self.gather(name, value)
        odd = [i for i, v in enumerate(values) if v != values[0]]
        if odd:
            raise UserError(
                f"--distributed: {what} of process(es) {', '.join(map(str, odd))} differs from process 0's; "
                "start every process with the same command"
            )

    def stop_check(self, requested):
        """A `should_stop` for the loop: this process's own request (a
        signal), shared with the others through the runtime, or theirs
        (polled at most once a second)."""
        if not self.many:
            return requested
        key, told, seen = "collapse_sim/stop", [False], [False, 0.0]

        def should_stop() -> bool:
            if requested() and not told[0]:
                self.client.key_value_set(key, str(self.index), allow_overwrite=True)
                told[0] = True
            now = time.monotonic()
            if not seen[0] and now - seen[1] >= 1.0:
                seen[1] = now
                try:
                    self.client.key_value_try_get(key)
                    seen[0] = True
                except Exception:  # not set
                    pass
            return told[0] or seen[0]

        return should_stop

    def add_progress(self, n: int) -> None:
        """Count n cell-generations done into the run's shared counter."""
        if self.many:
            self.client.key_value_increment("collapse_sim/progress", n)

    def progress(self) -> int | None:
        """Cell-generations done by every process so far (None: not shared)."""
        if not self.many:
            return None
        try:
            return int(self.client.key_value_try_get("collapse_sim/progress"))
        except Exception:
            return 0


def share(n: int, processes: Processes) -> tuple[int, int]:
    """The contiguous range of n items process `index` runs: balanced, in
    process order (a checkpoint's pieces concatenate to the whole)."""
    lo = n * processes.index // processes.count
    hi = n * (processes.index + 1) // processes.count
    return lo, hi


SHARED_FILE = ".collapse-sim-shared"


def shared_run_dir(out: Path, processes: Processes, made: bool) -> None:
    """Check that every process sees the run directory process 0 holds: a
    token process 0 writes there must read back on every other. On failure
    every process raises one line, and a directory `run` just made (empty
    but for the lock) is removed again."""
    if not processes.many:
        return
    token = processes.broadcast("shared-token", secrets.token_hex(8) if processes.primary else None)
    marker = out / SHARED_FILE
    if processes.primary:
        marker.write_text(token)
    processes.barrier("shared-written")
    try:
        seen = processes.primary or marker.read_text() == token
    except OSError:
        seen = False
    blind = [i for i, ok in enumerate(processes.gather("shared-seen", seen)) if not ok]
    if processes.primary:
        marker.unlink()
        if blind and made:
            (out / LOCK_FILE).unlink(missing_ok=True)
            if not any(out.iterdir()):
                out.rmdir()
    if blind:
        who = ", ".join(map(str, blind))
        raise UserError(
            f"{out}: the run directory is not shared: process(es) {who} cannot see what process 0 wrote there; "
            "give --out (or RUN_DIR) on a filesystem every process shares"
        )


def connect(launch: Launch) -> Processes:
    """Join the run's other processes (JAX's runtime); the one-line
    `UserError` when that cannot be done."""
    import jax

    from collapse_sim import process

    process.use_cpu_collectives()
    heartbeat = heartbeat_seconds()
    try:
        jax.distributed.initialize(
            launch.coordinator,
            launch.num_processes,
            launch.process_id,
            initialization_timeout=connect_seconds(),
            heartbeat_timeout_seconds=heartbeat,
            shutdown_timeout_seconds=max(30, heartbeat),
        )
    except ValueError as e:  # JAX: nothing to go on (no flags, no cluster detected)
        raise UserError(
            f"--distributed: {str(e).splitlines()[0]} (give --coordinator, --num-processes and --process-id, "
            f"or run under a cluster scheduler JAX detects)"
        ) from None
    except Exception as e:
        where = launch.coordinator or "the coordinator"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--distributed: cannot reach {where} within {connect_seconds()} s ({first[:160]})") from None
    from jax._src import distributed as jax_distributed  # the runtime's client: no public accessor yet

    _quiet_first_collective()
    return Processes(jax.process_count(), jax.process_index(), jax_distributed.global_state.client)


def _quiet_first_collective() -> None:
    """Connect the devices' collectives now, with gloo's chatter filtered:
    gloo prints "[Gloo] Rank i is connected ..." to the C++ stdout for each
    connection it makes, at any time (see `gloo_chatter`). Python's `sys.stdout` moves to a
    duplicate of the original descriptor (a terminal stays a terminal for
    the progress bar); descriptor 1 becomes a pipe whose lines a thread
    passes on, less gloo's."""
    from jax.experimental import multihost_utils

    sys.stdout.flush()
    original = os.dup(1)
    read, write = os.pipe()
    os.dup2(write, 1)
    os.close(write)
    sys.stdout = open(original, "w", buffering=1, closefd=False)

    def forward() -> None:
        with open(read, "rb", buffering=0) as native:
            for line in native:
                if not gloo_chatter(line):
                    os.write(original, line)

    threading.Thread(target=forward, daemon=True, name="collapse_sim-stdout").start()
    multihost_utils.sync_global_devices("collapse_sim: connect")


_GLOO_PIECES = (b"[Gloo]", b" is connected to ", b"peer ranks")
_DEBRIS = re.compile(rb"[\s\d.:]*")


def gloo_chatter(line: bytes) -> bool:
    """Whether a line of native stdout is (a piece of) gloo's connection
    message. Its threads write the message in pieces (`std::cout << ...`)
    unlocked, so two connections can interleave: "[Gloo] Rank 1 is connected
    to [Gloo] Rank 1 ... : 1\n" then "1 peer ranks. ... : 1\n", or a bare
    "\n" or "1\n". Any line with a piece of the message, or with nothing but
    digits, blanks and the message's punctuation, is dropped."""
    return any(p in line for p in _GLOO_PIECES) or _DEBRIS.fullmatch(line) is not None
