"""A second `collapse_sim.run` of the same config in one Python process, against the first.

The first run traces and compiles every group's programs (with an empty
persistent compilation cache, as on a new machine); the second finds them in
the process's program cache (`engine.programs`) and traces nothing. Each
repeat is a fresh process; medians over the repeats.

    python benchmarks/program_reuse.py [--config configs/quickstart.yaml] [--set KEY=VALUE ...] [--repeats 3]

Prints a table, writes benchmarks/results/program_reuse.json and a row of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from record import record

ROOT = Path(__file__).resolve().parent.parent
# a small quickstart: 2 policies x 2 k x 4 replicates, 10 generations
SMALL = [
    "replicates=4",
    "generations=10",
    "sweep.corpus.policy=[replace, accumulate_subsample]",
    "sweep.generate.sequences=[100, 400]",
]

CHILD = """
import json, sys, tempfile, time
t0 = time.perf_counter()
import collapse_sim
from collapse_sim import engine
config, sets = sys.argv[1], json.loads(sys.argv[2])
times = []
for i in range(2):
    out = tempfile.mkdtemp() + "/run"
    t = time.perf_counter()
    collapse_sim.run(config, sets, out=out)
    times.append(time.perf_counter() - t)
info = engine.programs.cache_info()
print(json.dumps({"first": times[0], "second": times[1], "programs_made": info.misses, "programs_reused": info.hits}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    ap.add_argument("--set", action="append", default=None, metavar="KEY=VALUE")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    sets = a.set if a.set is not None else SMALL
    rows = []
    for _ in range(a.repeats):
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache)
            p = subprocess.run(
                [sys.executable, "-c", CHILD, a.config, json.dumps(sets)],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"first {r['first']:6.2f} s   second {r['second']:6.2f} s   ratio {r['second'] / r['first']:.3f}   "
            f"programs made {r['programs_made']}, reused {r['programs_reused']}",
            flush=True,
        )
    first = statistics.median(r["first"] for r in rows)
    second = statistics.median(r["second"] for r in rows)
    ratio = statistics.median(r["second"] / r["first"] for r in rows)
    print(
        f"\n| config | first run (s) | second run (s) | second / first |\n|---|---|---|---|\n"
        f"| {Path(a.config).name} {' '.join(sets)} | {first:.2f} | {second:.2f} | {ratio:.3f} |"
    )
    machine = f"{platform.machine()}, cpu, {os.cpu_count()} core(s)"
    result = {
        "date": date.today().isoformat(),
        "machine": machine,
        "config": a.config,
        "sets": sets,
        "runs": rows,
        "median_first_s": first,
        "median_second_s": second,
        "median_ratio": ratio,
    }
    made = rows[0]["programs_made"]
    record(
        "program_reuse",
        result,
        [
            f"{Path(a.config).name}, {' '.join(sets)}",
            f"second run {second:.2f} s",
            f"{ratio:.3f}x the first run ({first:.2f} s)",
            f"one process, empty persistent cache; {made} programs made, reused by the "
            f"second run; median of {a.repeats}",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
