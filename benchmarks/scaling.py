"""Throughput against cells, devices and processes: whole `collapse-sim run` commands.

    python benchmarks/scaling.py            # 1, 16, 256 cells (4096 with --full)
    python benchmarks/scaling.py --quick    # a smoke version

Setting: the bigram configuration of ngram_throughput.py (V = 64 order-1
markov source, N = 4096 sequences of L = 64 tokens per cell per
generation, `replace`), run as real `collapse-sim run` processes with
forced XLA CPU devices, and as two processes on the loopback interface
(`--distributed`), each with its own devices.

A layout's throughput is that of its generation loop, compiled: every
process of the layout (a real Python process, `collapse_sim.run` through
the library, joined by `distributed.connect` when there are two) runs the
config twice in a row; the second run reuses the compiled programs of the
first (in-process program reuse), so its loop seconds in run.json (the
loop and its final checkpoint; not the import, the planning or the
end-of-run figures) are the steady state. Throughput = cells x (G + 1) /
those seconds. Medians over `--repeats` launches.

Prints a table, writes benchmarks/results/scaling.json and appends rows to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from record import record  # noqa: E402

CONFIG = """\
name: scaling
seed: 0
replicates: {cells}
generations: {generations}
source: {{kind: markov, vocab_size: 64, order: 1, seed: 0}}
real: {{sequences: {n}, seq_len: 64, heldout: 256}}
model: {{order: 2, smoothing: 0.01}}
generate: {{sequences: {n}}}
corpus: {{policy: replace}}
checkpoint: {{every: 0, keep: 1}}
"""

# (processes, devices per process)
LAYOUTS = [(1, 1), (1, 2), (1, 4), (2, 1), (2, 2)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(cfg: str, out: str, processes: int, index: int, port: int) -> None:
    """One process of a layout: the config twice, the second timed."""
    from collapse_sim import distributed, orchestrate

    procs = distributed.Processes()
    if processes > 1:
        procs = distributed.connect(distributed.Launch(f"127.0.0.1:{port}", processes, index))
    orchestrate.run(cfg, out=f"{out}/warm", processes=procs)
    orchestrate.run(cfg, out=f"{out}/timed", processes=procs)


def launch(cfg: Path, out: Path, processes: int, devices: int, cache: str) -> float:
    """Loop seconds of the timed run of one layout (all its processes started together)."""
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_COMPILATION_CACHE_DIR=cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    port = free_port()
    cmds = [
        [sys.executable, __file__, "--worker", str(cfg), str(out), str(processes), str(i), str(port)]
        for i in range(processes)
    ]
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in cmds]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmds[0])}: exit {p.returncode}: {err.decode()[-2000:]}")
    return float(json.loads((out / "timed" / "run.json").read_text())["seconds"])


def measure(cells: int, n: int, layout, generations: int, repeats: int, work: Path, cache: str) -> dict:
    processes, devices = layout
    cfg = work / f"c{cells}.yaml"
    cfg.write_text(CONFIG.format(cells=cells, n=n, generations=generations))
    rates = [
        cells * (generations + 1) / launch(cfg, work / f"{cells}-{processes}x{devices}-{r}", processes, devices, cache)
        for r in range(repeats)
    ]
    return {"cells": cells, "processes": processes, "devices": devices, "cell_gens_per_s": float(np.median(rates))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 256 sequences, 1 and 16 cells, 1 repeat")
    ap.add_argument("--full", action="store_true", help="also 4096 cells (long on 2 cores)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--generations", type=int, default=4, help="G of the timed runs")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        cfg, out, processes, index, port = args.worker
        worker(cfg, out, int(processes), int(index), int(port))
        return
    n = 256 if args.quick else 4096
    sizes = [1, 16] if args.quick else [1, 16, 256] + ([4096] if args.full else [])
    repeats = 1 if args.quick else args.repeats
    rows = []
    with tempfile.TemporaryDirectory(prefix="collapse-sim-scaling-") as tmp:
        work = Path(tmp)
        cache = str(work / "jax-cache")
        for cells in sizes:
            for layout in LAYOUTS:
                t = time.perf_counter()
                row = measure(cells, n, layout, args.generations, repeats, work, cache)
                rows.append(row)
                print(
                    f"{cells:>6} cells  {layout[0]} process(es) x {layout[1]} device(s): "
                    f"{row['cell_gens_per_s']:>10.1f} cell-gen/s   ({time.perf_counter() - t:.0f} s)",
                    flush=True,
                )

    def rate(cells, p, d):
        return next(r["cell_gens_per_s"] for r in rows if (r["cells"], r["processes"], r["devices"]) == (cells, p, d))

    print()
    head = f"{'cells':>6} " + " ".join(f"{f'{p}p x {d}d':>10}" for p, d in LAYOUTS) + f" {'2p1d/1p2d':>10}"
    print(head)
    for cells in sizes:
        ratio = rate(cells, 2, 1) / rate(cells, 1, 2)
        print(f"{cells:>6} " + " ".join(f"{rate(cells, p, d):>10.1f}" for p, d in LAYOUTS) + f" {ratio:>10.2f}")
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "setting": {"V": 64, "N": n, "L": 64, "policy": "replace", "generations": args.generations},
        "quick": args.quick,
        "rows": rows,
    }
    cells = max(sizes)
    record(
        "scaling" + ("-quick" if args.quick else ""),
        result,
        [
            f"bigram V=64 N={n} L=64, {cells} cells",
            " / ".join(f"{p}p×{d}d {rate(cells, p, d):.0f}" for p, d in LAYOUTS) + " cell-gen/s",
            f"2 processes × 1 device = {rate(cells, 2, 1) / rate(cells, 1, 2):.2f}× 1 process × 2 devices",
        ],
    )


if __name__ == "__main__":
    main()
