"""Cost per generation over a long horizon: does it grow with the corpus?

    python benchmarks/long_horizon.py             # 2000 generations, k = 1, 10, 100
    python benchmarks/long_horizon.py --quick     # 300 generations

Setting (issue #12): 16 cells of a bigram model on a 16-token markov world,
`accumulate_subsample`, N0 = m = 1000, L = 32, one run per k (so each has the
corpus buffer its own k needs). Each run goes through the library
(`collapse_sim.run`) with a reporter that stamps the time at which every
generation's rows arrive; the throughput of a window of generations
[a, b) is 16 x (b - a) / (time at b - time at a). The target: the last
window within 1.5x of the first (the first window starts at generation 1,
after compiling).

Prints a table, writes benchmarks/results/long_horizon.json and appends a
row per k to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from collapse_sim.process import configure_host_devices  # noqa: E402

configure_host_devices()

from record import record  # noqa: E402

import collapse_sim  # noqa: E402
from collapse_sim.progress import Reporter  # noqa: E402

CONFIG = """\
name: long-horizon
seed: 0
replicates: 16
generations: {generations}
source: {{kind: markov, vocab_size: 16, order: 1, seed: 0}}
real: {{sequences: 1000, seq_len: 32, heldout: 200}}
model: {{order: 2, smoothing: 0.01}}
generate: {{sequences: {k}}}
corpus: {{policy: accumulate_subsample, train_sequences: 1000}}
checkpoint: {{every: 0, keep: 1}}
"""


class Stamps(Reporter):
    """The time each generation's rows of all cells have arrived."""

    def __init__(self):
        self.cells, self.done, self.at = 0, {}, {}

    def start(self, total, cells, generations):
        self.cells = cells

    def advance(self, n, generation, **where):
        self.done[generation] = self.done.get(generation, 0) + n
        if self.done[generation] == self.cells:
            self.at[generation] = time.perf_counter()


def windows(generations: int) -> list[tuple[int, int]]:
    w = max(10, generations // 10)
    return [(1, w), (generations // 2 - w // 2, generations // 2 + w // 2), (generations - w, generations)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--generations", type=int, default=2000)
    ap.add_argument("--ks", default="1,10,100")
    ap.add_argument("--label", default="", help="a note for RESULTS.md (e.g. the sampler measured)")
    args = ap.parse_args()
    G = 300 if args.quick else args.generations
    ks = [int(k) for k in args.ks.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="collapse-sim-long-") as tmp:
        for k in ks:
            cfg = Path(tmp) / f"k{k}.yaml"
            cfg.write_text(CONFIG.format(generations=G, k=k))
            stamps = Stamps()
            t0 = time.perf_counter()
            collapse_sim.run(cfg, out=Path(tmp) / f"run-k{k}", reporter=stamps)
            total = time.perf_counter() - t0
            rates = [(a, b, 16 * (b - a) / (stamps.at[b] - stamps.at[a])) for a, b in windows(G)]
            rows.append({"k": k, "windows": rates, "total_s": total, "ratio_first_last": rates[0][2] / rates[-1][2]})
            print(
                f"k = {k:>4}: "
                + "  ".join(f"gens {a}-{b}: {r:8.0f} cell-gen/s" for a, b, r in rates)
                + f"  first/last {rates[0][2] / rates[-1][2]:.2f}  (whole run {total:.1f} s)",
                flush=True,
            )
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "setting": {"cells": 16, "V": 16, "N0": 1000, "m": 1000, "L": 32, "generations": G, "label": args.label},
        "rows": rows,
    }
    record(
        "long_horizon" + ("-quick" if args.quick else ""),
        result,
        *[
            [
                f"accumulate_subsample k={r['k']}, 16 cells, G={G}{' ' + args.label if args.label else ''}",
                " / ".join(f"{a}-{b}: {x:.0f}" for a, b, x in r["windows"]) + " cell-gen/s",
                f"first/last window {r['ratio_first_last']:.2f}×; whole run {r['total_s']:.1f} s",
            ]
            for r in rows
        ],
    )


if __name__ == "__main__":
    main()
