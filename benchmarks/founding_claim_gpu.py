"""The founding-claim workload at GPU scale: how long its generation loop takes.

    python benchmarks/founding_claim_gpu.py                  # 1000 replicates x 10000 generations, k = 1, 10, 100
    python benchmarks/founding_claim_gpu.py --quick          # 16 replicates x 200 generations (any machine)

Setting (issue #12): a bigram model on a 16-token markov world,
`accumulate_subsample`, N0 = m = 1000, L = 32; one plan per k (each with
the corpus buffer its k needs: (N0 + (G + 1) k) x 32 tokens per cell, 32 MB
per cell at k = 100). Timed: the generation loop (`loop.run_plan`, compiled
programs, every chunk of every k), metric rows turned into columns but not
written, no checkpoint (a checkpoint of the k = 100 plan alone would be
about 32 GB). Target: under 10 minutes in all on one H200.

Prints a table, writes benchmarks/results/founding_claim_gpu.json and
appends a row per k to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
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

import jax  # noqa: E402
from record import record  # noqa: E402

from collapse_sim import config, loop  # noqa: E402
from collapse_sim import plan as planmod  # noqa: E402

CONFIG = """\
name: founding-claim-gpu
seed: 0
replicates: {replicates}
generations: {generations}
source: {{kind: markov, vocab_size: 16, order: 1, seed: 0}}
real: {{sequences: 1000, seq_len: 32, heldout: 1000}}
model: {{order: 2, smoothing: 0.01}}
generate: {{sequences: {k}}}
corpus: {{policy: accumulate_subsample, train_sequences: 1000}}
"""


class Counter:
    """Counts the metric rows the loop hands out (and keeps none)."""

    n = 0

    def add(self, cols: dict) -> None:
        self.n += len(cols["cell"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--replicates", type=int, default=1000)
    ap.add_argument("--generations", type=int, default=10000)
    ap.add_argument("--ks", default="1,10,100")
    args = ap.parse_args()
    R, G = (16, 200) if args.quick else (args.replicates, args.generations)
    device = jax.devices()[0]
    rows = []
    for k in (int(x) for x in args.ks.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "founding_claim_gpu.yaml"
            path.write_text(CONFIG.format(replicates=R, generations=G, k=k))
            cfg = config.load(path)
        plan = planmod.make_plan(cfg, "founding_claim_gpu.yaml")
        chunks = sum(-(-len(g.cells) // loop.batch_size(g.chunk_size, plan.n_devices)) for g in plan.groups)
        rows_seen = Counter()
        t0 = time.perf_counter()
        loop.run_plan(plan, rows_seen.add)
        seconds = time.perf_counter() - t0
        rows.append({"k": k, "cells": R, "generations": G, "chunks": chunks, "seconds": seconds, "rows": rows_seen.n})
        print(
            f"k = {k:>4}: {R} cells x {G + 1} generations in {chunks} chunk(s): {seconds:8.1f} s "
            f"({R * (G + 1) / seconds:,.0f} cell-gen/s)",
            flush=True,
        )
    total = sum(r["seconds"] for r in rows)
    print(f"all k: {total:.1f} s on {device.device_kind}")
    result = {
        "date": date.today().isoformat(),
        "machine": f"{device.device_kind} ({platform.node()})",
        "rows": rows,
        "total_s": total,
    }
    record(
        "founding_claim_gpu" + ("-quick" if args.quick else ""),
        result,
        *[
            [
                f"founding claim, accumulate_subsample k={r['k']}, {r['cells']} cells x {r['generations']} gens",
                f"{r['seconds']:.1f} s ({r['cells'] * (r['generations'] + 1) / r['seconds']:,.0f} cell-gen/s)",
                f"{r['chunks']} chunk(s); loop only (no metric files, no checkpoint); all k {total:.1f} s",
            ]
            for r in rows
        ],
    )


if __name__ == "__main__":
    main()
