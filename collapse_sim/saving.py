"""The `save` callback of a run and what a failed one leaves.

`saver` makes `loop.run_plan`'s save: it flushes the metric rows and
checkpoints every group's state with the metrics manifest and the config
fingerprint, merged over the processes, no oftener than checkpoint.seconds
allows. `write_problem` words a failed write in one line;
`finish_quietly` closes the checkpointer and writer after a failure
without letting their errors hide the first one.
"""

from __future__ import annotations

import time
from pathlib import Path

from collapse_sim import checkpoint, loop, results
from collapse_sim import plan as planmod


def saver(ckpt: checkpoint.Checkpointer, writer: results.MetricsWriter, plan: planmod.Plan, fingerprint: dict):
    """The `save` callback of `loop.run_plan`: flush the metric rows, then
    checkpoint every group's state with the metrics manifest and the config
    fingerprint (every process's, merged). Returns whether the run stops.

    A block's checkpoint (reason "every") is skipped while less than
    checkpoint.seconds of run time have passed since the last one, on
    process 0's clock (the processes decide together; a stop or the end
    always saves): every checkpoint rewrites each cell's whole corpus, and
    a fast run checkpointing every few seconds spends most of its time, and
    nearly all its system time, writing them."""
    procs = ckpt.processes
    floor, last = plan.config.checkpoint.seconds, [time.monotonic()]

    def save(chunks, reason: str) -> bool:
        if floor:
            asked = procs.gather("save-due", [reason, time.monotonic() - last[0]])
            if all(r == "every" for r, _ in asked) and asked[0][1] < floor:
                return False
        writer.flush()
        mine = {
            "stopped": reason == "stopped",
            "gens": [c.generation for c in chunks],
            "cells_at": loop.cells_at(chunks),
            "parts": writer.manifest()["parts"],
        }
        every = procs.gather("save", mine)
        gens = [g for p in every for g in p["gens"]]
        stopped = any(p["stopped"] for p in every)
        parts = {part["name"]: part for p in every for part in p["parts"]}
        at: dict[str, int] = {}
        for p in every:
            for g, n in p["cells_at"].items():
                at[g] = at.get(g, 0) + n
        meta = {
            "reason": "stopped" if stopped else reason,
            "generation_min": min(gens),
            "generation_max": max(gens),
            "generations": plan.config.generations,
            "cells_at": dict(sorted(at.items(), key=lambda kv: -int(kv[0]))),
            "fingerprint": fingerprint,
            "metrics": {"parts": list(parts.values()), "rows": sum(p["rows"] for p in parts.values())},
        }
        ckpt.save(loop.snapshot(plan, chunks), meta)
        last[0] = time.monotonic()
        return stopped

    return save


def write_problem(out: Path, e: Exception) -> str:
    """One line for a failed write: a checkpoint's own message, or the OS error."""
    return str(e) if not isinstance(e, OSError) else f"{out}: cannot write ({e.strerror or e})"


def finish_quietly(ckpt, writer) -> None:
    """After a failure: let a save in flight finish (or fail) and keep what rows we can."""
    for close in (ckpt.close, writer.close):
        try:
            close()
        except Exception:
            pass
