"""SIGINT and SIGTERM during a run: the first stops it after a checkpoint, a second at once."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from collapse_sim.rundir import RUN_FILE, write_json


class Interrupted(Exception):
    """A signal stopped the run; a checkpoint of every cell was saved."""

    def __init__(self, message: str, signum: int, run_dir: Path):
        super().__init__(message)
        self.signum, self.run_dir = signum, run_dir


class Stopper:
    """SIGINT/SIGTERM: the first asks the run to finish its generation, save a
    checkpoint and exit; a second exits at once (the previous checkpoint is
    whole: a save cut short never replaces it)."""

    NAMES = {signal.SIGINT: "interrupt (Ctrl-C)", signal.SIGTERM: "SIGTERM"}

    def __init__(self, out: Path, info: dict | None):
        """`info`: run.json's contents, written as "interrupted" on a second
        signal (None: another process writes run.json)."""
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
            print(
                f"\ncollapse-sim: {self.NAMES[signum]}: finishing the current generation, then saving a checkpoint "
                "(signal again to exit at once)",
                file=sys.stderr,
                flush=True,
            )
            return
        print(
            f"\ncollapse-sim: {self.NAMES[signum]} again: exiting now; the last complete checkpoint is intact. "
            f"Continue with: collapse-sim resume {self.out}",
            file=sys.stderr,
            flush=True,
        )
        try:
            if self.info is not None:
                write_json(self.out / RUN_FILE, dict(self.info, status="interrupted"))
        finally:
            os._exit(128 + signum)
