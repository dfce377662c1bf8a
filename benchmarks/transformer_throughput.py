"""Transformer throughput: the engine's cells against PyTorch's per-model loop,
side by side in one run.

    python benchmarks/transformer_throughput.py                    # 64 cells on CPU
    python benchmarks/transformer_throughput.py --quick            # a small smoke version
    python benchmarks/transformer_throughput.py --cells 1024 --dtype bfloat16   # on a GPU (benchmarks/gpu.sh)
    python benchmarks/transformer_throughput.py --whole-process --batches 32   # whole processes (benchmarks/whole.py)
    python benchmarks/transformer_throughput.py --whole-process --code /tmp/base   # timing another checkout

Setting (the defaults): an order-1 markov source over V = 16 tokens, L = 32,
N0 = 1024 real sequences, 256 held-out and k = 256 generated sequences per
cell, `replace`; a transformer with d_model 32, 2 layers, 4 heads, MLP ratio
4, trained for 100 AdamW steps per generation at batch 32 (and again at 64).

Measured (medians over repeats, the two sides timed in turn):
  train        tokens trained per second: the engine's training program
               (init + `steps` AdamW steps, one lax.scan, cells vmapped and
               sharded over the devices) for every cell, chunked as the
               planner chunks them
  generation   cell-generations per second: the engine's whole step (train,
               held-out and truth metrics, sampling k sequences with a KV
               cache, admitting them) for every chunk of cells
  torch        benchmarks/torch_baseline.py in a subprocess (torch is not a
               dependency of collapse_sim: pass --torch-python, or install
               torch==2.13.0 into this interpreter), the same model, optimizer,
               batch and steps, one model at a time, over --torch-cells cells
               (the loop is linear in cells); its per-cell seconds give the
               64-cell figures
  TFLOP/s      training FLOPs per token, 6 x (parameters in matmuls) +
               12 x layers x L x d_model (causal attention computed in full),
               over the training time; on a GPU compared with the chip's
               bf16 dense peak (--peak-tflops)

Prints a table, writes benchmarks/results/transformer_throughput.json (or
--name) and appends a row per batch size to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from collapse_sim.process import configure_host_devices

configure_host_devices()

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P
from record import record

from collapse_sim import config as cfgmod
from collapse_sim import engine, keys, loop
from collapse_sim import plan as planmod
from collapse_sim.corpus import TrainingSet
from collapse_sim.engine import GroupRunner, make_world
from collapse_sim.families import transformer as ftransformer


def setting(a, batch: int) -> list[str]:
    return [
        "source.kind=markov",
        f"source.vocab_size={a.vocab}",
        "source.order=1",
        f"real.sequences={a.real}",
        f"real.seq_len={a.seq_len}",
        f"real.heldout={a.heldout}",
        f"generate.sequences={a.sample}",
        "corpus.policy=replace",
        "generations=2",
        f"replicates={a.cells}",
        "model.kind=transformer",
        f"model.d_model={a.d_model}",
        f"model.layers={a.layers}",
        f"model.heads={a.heads}",
        f"model.mlp_ratio={a.mlp_ratio}",
        f"model.steps={a.steps}",
        f"model.batch_size={batch}",
        f"model.warmup={a.warmup}",
        f"model.dtype={a.dtype}",
    ]


def train_flops_per_token(spec) -> float:
    """6 x (matmul parameters: every 2-D leaf but the position table, which
    is added, not multiplied) + 12 x layers x L x d_model (attention)."""
    arch = spec.model.arch
    leaves = jax.tree_util.tree_leaves_with_path(ftransformer.param_struct(arch))
    matmul = sum(int(np.prod(a.shape)) for path, a in leaves if a.ndim == 2 and path[-1].key != "pos")
    return 6.0 * matmul + 12.0 * arch.layers * arch.seq_len * arch.d_model


class Engine:
    """The engine's compiled programs for every chunk of a planned group."""

    def __init__(self, cfg):
        plan = planmod.make_plan(cfg, "benchmark")
        self.group = group = plan.groups[0]
        self.spec = spec = group.spec
        self.runner = runner = GroupRunner(spec, make_world(spec, group.source, group.heldout))
        size = loop.batch_size(group.chunk_size, runner.n_devices)
        self.chunks = []
        for s in range(0, len(group.cells), size):
            cells = group.cells[s : s + size]
            cells = cells + [cells[-1]] * (size - len(cells))
            self.chunks.append(runner.put(keys.cell_params(cells, group.source.digest, spec.family.traced)))
        self.n_chunks, self.batch = len(self.chunks), size
        self.states = [runner.init(p)[0] for p in self.chunks]  # generation 0 (compiles init)
        self.g = 1

        N0 = spec.corpus.real_sequences
        rows = jax.device_put(jnp.zeros((size, N0, spec.seq_len), jnp.int32), runner.cells)
        n = jnp.int32(N0)

        def train_one(params, rows_NxL):
            key = jax.random.wrap_key_data(params.trajectory_key)
            tset = TrainingSet(None, lambda idx: rows_NxL[idx], n, 0, 0)
            return spec.family.train(spec, key, params, tset, None)[1].losses

        pass_cells = spec.family.pass_cells(spec, runner.programs.mesh.devices.flat[0].platform)
        over = engine.over_cells(lambda _w, _g, cell: train_one(*cell), pass_cells)  # in the engine's passes
        fn = jax.shard_map(
            lambda params, rows: over(None, None, (params, rows)),
            mesh=runner.programs.mesh,
            in_specs=(P("cells"), P("cells")),
            out_specs=P("cells"),
            check_vma=False,
        )
        train = jax.jit(fn)
        self._train = lambda params: train(params, rows)

    def train(self):
        return [self._train(p) for p in self.chunks]

    def generation(self):
        out = []
        for i, p in enumerate(self.chunks):
            self.states[i], metrics = self.runner.step(self.states[i], self.g, p)
            out.append(metrics)
        self.g += 1
        return out, self.states


def timed(fn) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t


def torch_run(a, batch: int) -> dict | None:
    if a.torch_python is None:
        return None
    cmd = [a.torch_python, str(HERE / "torch_baseline.py"), "--cells", str(a.torch_cells), "--batch", str(batch)]
    for k in (
        "vocab",
        "seq_len",
        "d_model",
        "layers",
        "heads",
        "mlp_ratio",
        "steps",
        "warmup",
        "real",
        "heldout",
        "sample",
    ):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(a, k))]
    cmd += ["--device", "cuda" if jax.default_backend() == "gpu" else "cpu", "--dtype", a.dtype]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"torch baseline failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def find_torch(a) -> str | None:
    if a.torch_python:
        return a.torch_python
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True)
    if probe.returncode == 0:
        return sys.executable
    print(
        "torch is not installed here: the PyTorch side is skipped (pip install torch==2.13.0, or pass --torch-python)"
    )
    return None


def whole_process(a) -> None:
    """`collapse-sim run` of --cells transformers (generation 0: train for
    --whole-steps steps, the held-out metrics, sample k) against
    torch_baseline.py training and sampling as many models one at a time,
    both as whole processes, alternately; medians."""
    from whole import alternate

    if not a.torch_python:
        sys.exit("--whole-process needs torch: pass --torch-python or install torch==2.13.0 here")
    batch, S = int(a.batches.split(",")[0]), a.whole_steps
    lines = [s.replace("=", ": ", 1) for s in setting(a, batch) if not s.startswith(("generations", "model.steps"))]
    config = "name: whole\nseed: 0\ngenerations: 0\ncheckpoint.every: 0\n" + f"model.steps: {S}\n" + "\n".join(lines)
    config = _nested(config)
    peer_args = [
        str(HERE / "torch_baseline.py"), "--no-warmup", "--cells", str(a.cells), "--batch", str(batch),
        "--steps", str(S), "--warmup", str(a.warmup), "--real", str(a.real), "--heldout", str(a.heldout),
        "--sample", str(a.sample), "--vocab", str(a.vocab), "--seq-len", str(a.seq_len), "--d-model", str(a.d_model),
        "--layers", str(a.layers), "--heads", str(a.heads), "--mlp-ratio", str(a.mlp_ratio), "--dtype", a.dtype,
    ]  # fmt: skip
    res = alternate(config, lambda tmp, r: [[a.torch_python, *peer_args]], a.repeats, a.code)
    e, p, out = res["engine_median_s"], res["peer_median_s"], res["outside_median_s"]
    print(f"\nwhole processes: {a.cells} transformers, d_model {a.d_model}, batch {batch}, {S} steps, one generation")
    print(f"collapse-sim run: {e:.1f} s (outside its loop {out:.2f} s)   PyTorch per-model loop: {p:.1f} s")
    print(f"engine / PyTorch: {res['speedup']:.2f}x median of {a.repeats} paired repeats (target >= 3x)")
    if a.code is not None:
        print(f"(collapse-sim of {a.code}; not recorded)")
        return
    dev = jax.devices()[0]
    res.update(
        date=date.today().isoformat(),
        machine=f"{platform.machine()}, {dev.platform}, {jax.device_count()} device(s)",
        cells=a.cells,
        batch=batch,
        steps=S,
        d_model=a.d_model,
    )
    record(
        a.name + "_whole_process",
        res,
        [
            f"{a.cells} transformers, d_model {a.d_model}, batch {batch}, {S} steps, generation 0, whole processes",
            f"collapse-sim run {e:.1f} s (outside its loop {out:.2f} s) vs PyTorch per-model loop {p:.1f} s",
            f"{res['speedup']:.2f}x (median of {a.repeats} alternating pairs)",
        ],
    )


def _nested(flat: str) -> str:
    """YAML of dotted `a.b: v` lines, nested."""
    tree: dict = {}
    for line in flat.splitlines():
        key, value = line.split(": ", 1)
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    def dump(node, indent=""):
        return "".join(
            f"{indent}{k}:\n{dump(v, indent + '  ')}" if isinstance(v, dict) else f"{indent}{k}: {v}\n"
            for k, v in node.items()
        )

    return dump(tree)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (
        ("cells", 64),
        ("vocab", 16),
        ("seq-len", 32),
        ("d-model", 32),
        ("layers", 2),
        ("heads", 4),
        ("mlp-ratio", 4),
        ("steps", 100),
        ("warmup", 10),
        ("real", 1024),
        ("heldout", 256),
        ("sample", 256),
        ("repeats", 3),
        ("torch-cells", 4),
    ):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--batches", default="32,64", help="batch sizes to measure, comma-separated")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument(
        "--torch-python", default=None, help="an interpreter with torch (default: this one, if it has torch)"
    )
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="the chip's bf16 dense peak, for the utilisation column"
    )
    p.add_argument("--name", default="transformer_throughput")
    p.add_argument("--quick", action="store_true", help="a small smoke version (8 cells, 20 steps, 1 repeat)")
    p.add_argument(
        "--whole-process",
        action="store_true",
        help="time `collapse-sim run` against the PyTorch per-model loop as whole processes",
    )
    p.add_argument("--whole-steps", type=int, default=300, help="training steps of the whole-process comparison")
    p.add_argument(
        "--code",
        type=Path,
        help="time the collapse-sim of another checkout (a git worktree of an older commit),"
        " imported from a copy laid out as installed; not recorded",
    )
    a = p.parse_args()
    if a.quick:
        a.cells, a.steps, a.repeats, a.torch_cells, a.real, a.heldout, a.sample, a.batches = (
            8,
            20,
            1,
            1,
            256,
            64,
            64,
            "32",
        )
    a.torch_python = find_torch(a)
    if a.whole_process:
        return whole_process(a)

    dev = jax.devices()[0]
    machine = f"{platform.machine()}, {dev.platform}, {jax.device_count()} device(s)"
    if dev.platform == "gpu":
        machine = f"{dev.device_kind}, {jax.device_count()} device(s)"
    results = []
    for batch in [int(b) for b in a.batches.split(",")]:
        cfg = cfgmod.load(None, setting(a, batch))
        t0 = time.perf_counter()
        eng = Engine(cfg)
        timed(eng.train)
        timed(eng.generation)  # compiles the step
        compile_s = time.perf_counter() - t0
        train_t, gen_t, ratio_train, ratio_gen, torch_runs = [], [], [], [], []
        for _ in range(a.repeats):
            train_t.append(timed(eng.train))
            gen_t.append(timed(eng.generation))
            tr = torch_run(a, batch)
            if tr:
                torch_runs.append(tr)
                ratio_train.append(tr["train_s_per_cell"] * a.cells / train_t[-1])
                ratio_gen.append(tr["generation_s_per_cell"] * a.cells / gen_t[-1])
        med = lambda xs: float(np.median(xs)) if xs else None
        tokens = a.cells * a.steps * batch * a.seq_len
        flops = train_flops_per_token(eng.spec) * tokens
        r = {
            "batch": batch,
            "cells": a.cells,
            "chunks": eng.n_chunks,
            "cells_per_chunk": eng.batch,
            "compile_s": compile_s,
            "train_s": med(train_t),
            "generation_s": med(gen_t),
            "tokens_per_s": tokens / med(train_t),
            "cell_gen_per_s": a.cells / med(gen_t),
            "train_tflops": flops / med(train_t) / 1e12,
            "torch_train_s_per_cell": med([t["train_s_per_cell"] for t in torch_runs]),
            "torch_generation_s_per_cell": med([t["generation_s_per_cell"] for t in torch_runs]),
            "torch_cells_timed": a.torch_cells if torch_runs else 0,
            "speedup_train": med(ratio_train),
            "speedup_generation": med(ratio_gen),
        }
        if a.peak_tflops:
            r["peak_fraction"] = r["train_tflops"] / a.peak_tflops
        results.append(r)

    print(
        f"\n{machine}; {a.cells} cells, d_model {a.d_model}, {a.layers} layers, {a.heads} heads, L {a.seq_len}, "
        f"V {a.vocab}, {a.steps} steps, k {a.sample}, {a.dtype}"
    )
    head = (
        f"{'batch':>5} {'engine tok/s':>13} {'cell-gen/s':>10} {'TFLOP/s':>8} {'torch tok/s':>12} "
        f"{'torch cell-gen/s':>16} {'x train':>8} {'x gen':>7}"
    )
    print(head)
    for r in results:
        tt = r["torch_train_s_per_cell"]
        ttok = r["batch"] * a.steps * a.seq_len / tt if tt else float("nan")
        tgen = 1 / r["torch_generation_s_per_cell"] if tt else float("nan")
        fmt = lambda x: f"{x:.2f}x" if x else "--"
        print(
            f"{r['batch']:>5} {r['tokens_per_s']:>13,.0f} {r['cell_gen_per_s']:>10.2f} {r['train_tflops']:>8.3f} "
            f"{ttok:>12,.0f} {tgen:>16.2f} {fmt(r['speedup_train']):>8} {fmt(r['speedup_generation']):>7}"
        )
    out = {
        "date": date.today().isoformat(),
        "machine": machine,
        "jax": jax.__version__,
        "setting": vars(a),
        "results": results,
    }
    if a.quick:
        print("(--quick: not recorded)")
        return
    table = []
    for r in results:
        vs = (
            f"{r['speedup_train']:.2f}x torch per-model loop (train), {r['speedup_generation']:.2f}x (generation)"
            if r["speedup_train"]
            else "torch not measured"
        )
        notes = f"{r['train_tflops']:.3f} TFLOP/s" + (
            f" ({100 * r['peak_fraction']:.1f}% of bf16 peak)" if a.peak_tflops else ""
        )
        notes += (
            f"; torch timed over {r['torch_cells_timed']} cells; {r['chunks']} chunk(s) of {r['cells_per_chunk']}; "
            f"median of {a.repeats}"
        )
        table.append(
            [
                f"{a.cells} cells, d_model {a.d_model}, batch {r['batch']}, {a.steps} steps, L {a.seq_len}, {a.dtype}",
                f"{r['tokens_per_s']:,.0f} tok/s, {r['cell_gen_per_s']:.2f} cell-gen/s",
                vs,
                notes,
            ]
        )
    record(a.name, out, *table)
    print(f"wrote {HERE / 'results' / (a.name + '.json')} and {len(results)} row(s) of {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
