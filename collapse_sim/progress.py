"""What a run tells its user: the `Reporter` interface (the library's default
says nothing but warnings), the CLI's `ConsoleReporter` (a rich progress bar
over cell-generations, summaries on stdout, warnings on stderr or above the
bar), and the watch for cells whose training diverged."""

from __future__ import annotations

import sys
import time

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class Reporter:
    """What a run tells its user. This one says nothing but warnings (stderr)."""

    def start(self, total: int, cells: int, generations: int) -> None:
        """total cell-generations to run, of `cells` cells to generation G."""

    def advance(self, n: int, group: int, groups: int, chunk: int, chunks: int, generation: int) -> None:
        """n cells finished `generation`."""

    def close(self) -> None:
        """The loop is over."""

    def info(self, text: str) -> None:
        """Progress and summaries (the CLI prints them unless --quiet)."""

    def notice(self, text: str) -> None:
        """An outcome worth a line even when quiet (the CLI prints it always)."""

    def warn(self, text: str) -> None:
        print(text, file=sys.stderr)


class SharedProgress(Reporter):
    """A distributed run's progress: every process counts what it finishes
    into the runtime's shared counter (at most twice a second), and process
    0's reporter (`inner`) advances by the run's total; the other processes
    pass a silent `Reporter`."""

    def __init__(self, inner: Reporter, processes, every: float = 0.5):
        self.inner, self.processes, self.every = inner, processes, every
        self.pending, self.shown, self.last = 0, 0, 0.0
        self.where: dict = {}  # the newest position, for the bar's text

    def start(self, total: int, cells: int, generations: int) -> None:
        self.inner.start(total, cells, generations)

    def advance(self, n: int, **where) -> None:
        self.pending, self.where = self.pending + n, where
        now = time.monotonic()
        if now - self.last >= self.every:
            self._sync()
            self.last = now

    def flush(self) -> None:
        """Count what this process finished (before each checkpoint, so that
        the total after the last one is the run's)."""
        if self.pending:
            self.processes.add_progress(self.pending)
            self.pending = 0

    def _sync(self) -> None:
        self.flush()
        if self.processes.primary and self.where:
            total = self.processes.progress() or 0
            if total > self.shown:
                self.inner.advance(total - self.shown, **self.where)
                self.shown = total

    def close(self) -> None:
        self._sync()
        self.inner.close()

    def info(self, text: str) -> None:
        self.inner.info(text)

    def notice(self, text: str) -> None:
        self.inner.notice(text)

    def warn(self, text: str) -> None:
        self.inner.warn(text)


class Diverged:
    """Watches the metric rows for cells whose training loss turned non-finite
    (`loss_nonfinite`, transformers): one warning per cell; the sweep goes on."""

    def __init__(self, reporter: Reporter, sweep_keys: list[str]):
        self.reporter, self.sweep_keys = reporter, sweep_keys
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
            where = ", ".join(
                [f"replicate {int(cols['replicate'][i])}"] + [f"{k}={cols[k][i]}" for k in self.sweep_keys]
            )
            self.reporter.warn(
                f"collapse-sim: warning: cell {cell} ({where}): non-finite training loss at generation "
                f"{int(cols['generation'][i])}; its rows have loss_nonfinite = 1 and NaN model "
                "metrics. The other cells go on."
            )


class _Rate(ProgressColumn):
    def render(self, task):
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} cell-gen/s" if speed else "-- cell-gen/s", style="cyan")


class ConsoleReporter(Reporter):
    """The CLI's reporter: with `quiet`, only outcomes and warnings."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar: Progress | None = None

    def start(self, total: int, cells: int, generations: int) -> None:
        self.cells, self.generations = cells, generations
        if self.quiet:
            return
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _Rate(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        self.task = self.bar.add_task(f"gen 0/{generations} · {cells} cells", total=total)
        self.bar.start()

    def advance(self, n: int, group: int, groups: int, chunk: int, chunks: int, generation: int) -> None:
        if self.bar is None:
            return
        where = f"group {group}/{groups} · " if groups > 1 else ""
        where += f"chunk {chunk}/{chunks} · " if chunks > 1 else ""
        self.bar.update(
            self.task, advance=n, description=f"{where}gen {generation}/{self.generations} · {self.cells} cells"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def info(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    def notice(self, text: str) -> None:
        print(text, flush=True)

    def warn(self, text: str) -> None:
        """A line on stderr that does not break the bar."""
        if self.bar is None:
            print(text, file=sys.stderr)
        else:
            self.bar.console.print(text, markup=False, highlight=False, style="yellow")
