"""What a run shows on a terminal: a rich progress bar over cell-generations,
summaries on stdout, warnings on stderr (or above the bar)."""

from __future__ import annotations

import sys

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


class _Rate(ProgressColumn):
    def render(self, task):
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} cell-gen/s" if speed else "-- cell-gen/s", style="cyan")


class ConsoleReporter:
    """The CLI's `orchestrate.Reporter`: with `quiet`, only outcomes and warnings."""

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
