"""Metrics on disk: Parquet parts written incrementally, read back as one DataFrame.

A run directory holds ``metrics/part-NNNNN.parquet`` files (in a run of
several processes, process i writes ``part-p<i>-NNNNN.parquet``, so no two
processes write the same name). Each part is written to a temporary name and
renamed into place, so a part is either whole or absent, whatever interrupts
the run.
"""

from __future__ import annotations

import os
import re
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import pandas as pd

METRICS_DIR = "metrics"
PART_RE = re.compile(r"part-(?:p(\d+)-)?(\d{5,})\.parquet")
FLUSH_ENV = "COLLAPSE_SIM_FLUSH_SECONDS"


def flush_seconds() -> float:
    """Seconds between flushes of buffered rows (default 30); the environment
    may shorten it to watch a run closely (the fault tests write parts
    between checkpoints with it)."""
    return float(os.environ.get(FLUSH_ENV, "30"))


def column_value(value):
    """A swept value as a Parquet scalar: lists (source.probs) become their YAML text."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(f"{v:g}" for v in value) + "]"
    return value


def metric_rows(spec, cells, generation: int, out: dict, sweep_keys: list[str]) -> dict:
    """Columns of one generation's rows (DESIGN §6) for the real cells of a
    chunk (`plan.Cell`s); `out`: the step's metrics of the padded batch."""
    n = len(cells)
    cols: dict = {
        "cell": np.array([c.index for c in cells], np.int64),
        "replicate": np.array([c.replicate for c in cells], np.int64),
        "generation": np.full(n, generation, np.int64),
    }
    for key in sweep_keys:
        cols[key] = [column_value(dict(c.point.values)[key]) for c in cells]
    host = {k: np.asarray(v)[:n] for k, v in out.items()}
    ints = (*spec.family.int_metrics, "admitted")
    for name in spec.metric_names():
        if name in ("real_tokens", "train_tokens"):
            continue
        cols[name] = host[name].astype(np.int64 if name in ints else np.float64)
    with np.errstate(invalid="ignore"):  # an empty T_g (a filter admitted nothing under replace): NaN
        cols["real_fraction"] = host["real_tokens"].astype(np.float64) / host["train_tokens"].astype(np.float64)
    return cols


def file_crc32(path: Path) -> str:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


class MetricsWriter:
    """Buffers metric rows and flushes them to numbered Parquet parts.

    A part is written when `rows_per_part` rows are buffered, when `seconds`
    have passed since the last flush, or on `flush`/`close`. `parts` is the
    manifest of the parts already in the run (a checkpoint's, on resume);
    `manifest()` extends it with every part this writer wrote. `prefix`
    names this process's parts ("p1-" for process 1 of a distributed run).
    """

    def __init__(
        self,
        run_dir: str | Path,
        rows_per_part: int = 200_000,
        seconds: float | None = None,
        parts: list | None = None,
        prefix: str = "",
    ):
        self.dir = Path(run_dir) / METRICS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows_per_part = rows_per_part
        self.seconds = flush_seconds() if seconds is None else seconds
        self._tables: list[pa.Table] = []
        self._rows = 0
        self._last = time.monotonic()
        self.parts = list(parts or [])
        self.prefix = prefix
        process = prefix[1:-1] if prefix else None  # "p1-" -> "1"
        numbers = [
            int(m.group(2)) for p in self.dir.iterdir() if (m := PART_RE.fullmatch(p.name)) and m.group(1) == process
        ]
        self._next = max(numbers) + 1 if numbers else 0

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
        path = self.dir / f"part-{self.prefix}{self._next:05d}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        self.parts.append(
            {"name": path.name, "rows": table.num_rows, "bytes": path.stat().st_size, "crc32": file_crc32(path)}
        )
        self._next += 1
        self._tables, self._rows, self._last = [], 0, time.monotonic()

    def manifest(self) -> dict:
        """The parts written so far (call after `flush` for a complete list)."""
        return {"parts": list(self.parts), "rows": sum(p["rows"] for p in self.parts)}

    def close(self) -> None:
        self.flush()


def part_files(run_dir: str | Path) -> list[Path]:
    d = Path(run_dir) / METRICS_DIR
    return sorted(p for p in d.iterdir() if PART_RE.fullmatch(p.name)) if d.is_dir() else []


def part_rows(path: Path) -> int:
    """Rows of a part from its footer, without reading the data."""
    return pq.ParquetFile(path).metadata.num_rows


def prune(run_dir: str | Path, manifest: dict) -> tuple[int, int]:
    """Remove parts not in `manifest` (written after its checkpoint; resume
    recomputes their rows) and half-written temporaries. Returns (parts, rows) removed."""
    keep = {p["name"] for p in manifest["parts"]}
    parts = rows = 0
    for path in part_files(run_dir):
        if path.name not in keep:
            try:
                rows += part_rows(path)
            except Exception:
                pass
            path.unlink()
            parts += 1
    d = Path(run_dir) / METRICS_DIR
    if d.is_dir():
        for tmp in d.glob("*.parquet.tmp"):
            tmp.unlink()
    return parts, rows


def load_metrics(run_dir: str | Path) -> pd.DataFrame:
    """All metric rows of a run, one per cell per generation, sorted by (cell, generation)."""
    import pandas as pd  # not at import: a run needs it only at its end

    parts = part_files(run_dir)
    if not parts:
        raise FileNotFoundError(f"{run_dir}: no metrics found (expected {METRICS_DIR}/part-*.parquet)")
    frames = [pq.read_table(p).to_pandas() for p in parts]
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return df.sort_values(["cell", "generation"], kind="stable").reset_index(drop=True)
