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
    with open(HERE / "RESULTS.md", "a") as f:
        for row in rows:
            f.write("| " + " | ".join([result["date"], name, result["machine"], *row]) + " |\n")
