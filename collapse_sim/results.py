"""Metrics on disk: Parquet parts written incrementally, read back as one DataFrame.

A run directory holds ``metrics/part-NNNNN.parquet`` files. Each part is
written to a temporary name and renamed into place, so a part is either whole
or absent, whatever interrupts the run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

METRICS_DIR = "metrics"


class MetricsWriter:
    """Buffers metric rows and flushes them to numbered Parquet parts.

    A part is written when `rows_per_part` rows are buffered, when `seconds`
    have passed since the last flush, or on `close`.
    """

    def __init__(self, run_dir: str | Path, rows_per_part: int = 200_000, seconds: float = 30.0):
        self.dir = Path(run_dir) / METRICS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows_per_part, self.seconds = rows_per_part, seconds
        self._tables: list[pa.Table] = []
        self._rows = 0
        self._last = time.monotonic()
        existing = sorted(self.dir.glob("part-*.parquet"))
        self._next = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        self.rows_written = 0

    def add(self, columns: dict) -> None:
        table = pa.table(columns)
        self._tables.append(table)
        self._rows += table.num_rows
        if self._rows >= self.rows_per_part or time.monotonic() - self._last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        if not self._tables:
            return
        table = pa.concat_tables(self._tables, promote_options="default")
        path = self.dir / f"part-{self._next:05d}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        self._next += 1
        self.rows_written += table.num_rows
        self._tables, self._rows, self._last = [], 0, time.monotonic()

    def close(self) -> None:
        self.flush()


def load_metrics(run_dir: str | Path) -> pd.DataFrame:
    """All metric rows of a run, one per cell per generation, sorted by (cell, generation)."""
    parts = sorted((Path(run_dir) / METRICS_DIR).glob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"{run_dir}: no metrics found (expected {METRICS_DIR}/part-*.parquet)")
    frames = [pq.read_table(p).to_pandas() for p in parts]
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return df.sort_values(["cell", "generation"], kind="stable").reset_index(drop=True)
