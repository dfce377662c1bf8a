"""The parent of a distributed run's worker.

When a process of a distributed run dies, JAX's runtime notices its missing
heartbeats (or the coordinator's closed connection) and ends every other
process with an abort and a C++ stack dump. `collapse-sim ... --distributed`
therefore runs the work in a child process and watches it: the child's
stderr passes through, less the runtime's log lines, and an abort for a lost
process becomes one line naming the process, with exit code 2. Signals to
the parent reach the child once (a terminal's Ctrl-C reaches both; the
parent forwards only what the child did not get itself).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

WORKER_ENV = "COLLAPSE_SIM_WORKER"
_RUNTIME_LINE = re.compile(r"^(?:[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s|\[Gloo\]|\*\*\* |\s+@\s+0x|\s*$)")
_RUNTIME_ERROR = re.compile(r"^[EF]\d{4} \d\d:\d\d:\d\d\.\d+\s")
_FATAL = "Terminating process because the JAX distributed service detected fatal errors"
_UNHEALTHY = re.compile(r"tasks are unhealthy \(stopped sending heartbeats\):\s*\n([^\n]*)")
_COORDINATOR_GONE = re.compile(r"PollForError|Connection reset|Socket closed|failed to connect|UNAVAILABLE", re.I)


PEER_TROUBLE = re.compile(r"Gloo|UNAVAILABLE|DEADLINE_EXCEEDED|Connection reset|Socket closed")


def is_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def lost_process(text: str) -> str | None:
    """Which process the runtime's fatal error names as lost, from the
    worker's stderr: "process 1", "the coordinator (process 0)", "a process";
    None when the error is not the runtime's."""
    if _FATAL not in text:
        return None
    for m in _UNHEALTHY.finditer(text):
        names = m.group(1).strip()
        if _RUNTIME_LINE.match(names) or not re.fullmatch(r"[\w:/, ]+", names):
            continue
        ids = re.findall(r"task:(\d+)", names) or re.findall(r"\d+", names)
        if ids:
            return "process " + ", ".join(dict.fromkeys(ids))
    if _COORDINATOR_GONE.search(text):
        return "the coordinator (process 0)"
    return "a process"


def _follow_parent() -> None:
    """In the worker (Linux): SIGTERM when the supervisor dies, so the run
    stops with a checkpoint rather than running on unwatched."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - not Linux
        pass


class _Forward:
    """Hand a signal the parent got to the child, unless the child says
    within a second that it got it too (the same process group)."""

    def __init__(self, child: subprocess.Popen):
        self.child, self.heard = child, threading.Event()

    def __call__(self, signum, frame):
        self.heard.clear()

        def later():
            if not self.heard.wait(1.0) and self.child.poll() is None:
                self.child.send_signal(signum)

        threading.Thread(target=later, daemon=True).start()


def supervise(argv: list[str], run_dir: str | None, heartbeat: int, coordinator: str | None, connect: int) -> int:
    """Run `collapse-sim argv` as the worker; its exit code, or 2 with one
    line when the runtime ended it for a lost process or a coordinator it
    could not reach."""
    env = dict(os.environ, **{WORKER_ENV: "1"})
    child = subprocess.Popen(
        [sys.executable, "-m", "collapse_sim.cli", *argv], stderr=subprocess.PIPE, env=env, preexec_fn=_follow_parent
    )
    forward = _Forward(child)
    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    held: list[str] = []  # the runtime's lines, and everything after its first error
    failing = in_runtime = False
    try:
        for raw in child.stderr:
            line = raw.decode(errors="replace")
            if "finishing the current generation" in line or "again: exiting now" in line:
                forward.heard.set()
            failing = failing or bool(_RUNTIME_ERROR.match(line))
            if _RUNTIME_LINE.match(line) and line.strip():
                in_runtime = True  # a log line of the runtime: its continuation lines follow
            elif line.startswith(("collapse-sim:", "Traceback", "\ncollapse-sim:")):
                in_runtime = False
            if failing or in_runtime or _RUNTIME_LINE.match(line) or line.startswith("collapse-sim: error:"):
                held.append(line)  # an error is shown when the worker ends, unless a lost process explains it
            else:
                sys.stderr.write(line)
                sys.stderr.flush()
        rc = child.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    text = "".join(held)
    if rc != 0 and _FATAL in text and "RegisterTask" in text:  # never joined
        print(
            f"collapse-sim: error: --distributed: cannot reach the coordinator {coordinator or '(from the cluster)'} "
            f"within {connect} s (is process 0 running there, and the address right?)",
            file=sys.stderr,
        )
        return 2
    lost = lost_process(text)
    if rc != 0 and lost is not None:
        where = run_dir or "RUN_DIR"
        print(
            f"collapse-sim: error: {lost} of the distributed run was lost (no heartbeat within {heartbeat} s, or its "
            f"connection closed); this process stopped. The last complete checkpoint is intact; continue with: "
            f"collapse-sim resume {where} --distributed",
            file=sys.stderr,
        )
        return 2
    if rc not in (0, 2, 128 + signal.SIGINT, 128 + signal.SIGTERM):
        sys.stderr.write("".join(held))  # not the runtime's lost-process abort: show everything
    else:
        sys.stderr.write("".join(line for line in held if line.startswith("collapse-sim: error:")))
    return rc if rc >= 0 else 128 - rc
