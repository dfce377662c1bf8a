"""Where benchmarks put what they measured: results/<name>.json and a row of RESULTS.md."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def record(name: str, result: dict, *rows: list[str]) -> None:
    """Write results/<name>.json and append `| date | name | machine | ...row |`
    to RESULTS.md for each row."""
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"| {' | '.join([result['date'], name, result['machine'], *row])} |" for row in rows]
    path = HERE / "RESULTS.md"
    text = path.read_text().splitlines()
    # the rows go at the end of the file's first table (the notes below it hold tables of their own)
    first = next((i for i, line in enumerate(text) if line.startswith("|")), len(text))
    last = first
    while last + 1 < len(text) and text[last + 1].startswith("|"):
        last += 1
    path.write_text("\n".join(text[: last + 1] + lines + text[last + 1 :]) + "\n")
