"""N-gram engine throughput against a plain numpy loop, side by side in one run.

    python benchmarks/ngram_throughput.py            # the issue's setting
    python benchmarks/ngram_throughput.py --quick    # a small smoke version
    python benchmarks/ngram_throughput.py --whole-process [--sequences 1024]   # whole processes (benchmarks/whole.py)
    python benchmarks/ngram_throughput.py --whole-process --code /tmp/base      # the same, timing another checkout

Setting: bigram models, V = 64 (an order-1 markov source), N = 4096 sequences
of L = 64 tokens per cell per generation, `replace` policy, 256 cells.

Measured (medians over repeats):
  engine       one full generation step (train -> metrics -> sample -> admit)
               of all cells, compiled, sharded over every CPU core; timed in
               turn with the numpy loop, and the speed-up is the median of
               the paired ratios
  fit          counting N*L tokens per cell (kernels/ngram.fit_counts)
  sample       drawing N*L tokens per cell (kernels/ngram.sample)
  rng bound    jax.random.uniform for as many draws as sampling makes
  numpy loop   the same generation written the way a researcher would: one
               process, a Python loop over replicates, vectorised numpy
               inside (bincount to fit, cumulative-sum search to sample)

Prints a table, writes benchmarks/results/ngram_throughput.json and appends a
row to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
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
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from record import record

from collapse_sim import config as cfgmod
from collapse_sim import keys
from collapse_sim import plan as planmod
from collapse_sim.engine import GroupRunner, make_world
from collapse_sim.kernels import ngram


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def numpy_generation(rng, tokens, heldout, V):
    """One replicate, one generation: fit a bigram by counting, score, sample."""
    N, L = tokens.shape
    prev = np.concatenate([np.full((N, 1), V), tokens[:, :-1]], axis=1)
    counts = np.bincount((prev * V + tokens).ravel(), minlength=(V + 1) * V).reshape(V + 1, V)
    n = counts.sum(1, keepdims=True)
    probs = np.where(n > 0, counts / np.maximum(n, 1), 1.0 / V)
    hprev = np.concatenate([np.full((len(heldout), 1), V), heldout[:, :-1]], axis=1)
    with np.errstate(divide="ignore"):  # held-out NLL, as the engine computes every generation
        nll = -np.log(probs[hprev, heldout]).mean()
    cdf = np.cumsum(probs, axis=1)
    out = np.empty((N, L), np.int64)
    ctx = np.full(N, V)
    for i in range(L):
        u = rng.random(N)
        tok = np.minimum((cdf[ctx] < u[:, None]).sum(1), V - 1)
        out[:, i] = tok
        ctx = tok
    return out, nll


def whole_process(a) -> None:
    """`collapse-sim run` against the numpy peer, both as whole processes
    (start-up, imports, programs, writing included), alternately; medians."""
    import os

    from whole import alternate

    cores = len(os.sched_getaffinity(0))
    C, N, L, V, G = a.cells, a.sequences, a.seq_len, a.vocab, a.generations
    config = (
        f"name: whole\nseed: 0\nreplicates: {C}\ngenerations: {G}\n"
        f"source: {{kind: markov, vocab_size: {V}, order: 1, seed: 0}}\n"
        f"real: {{sequences: {N}, seq_len: {L}, heldout: 256}}\nmodel: {{order: 2, smoothing: 0.01}}\n"
        f"generate: {{sequences: {N}}}\ncorpus: {{policy: replace}}\ncheckpoint: {{every: 0}}\n"
    )
    share = [C // cores + (i < C % cores) for i in range(cores)]

    def peer(tmp, r):
        args = ["--sequences", str(N), "--seq-len", str(L), "--vocab", str(V), "--generations", str(G)]
        return [
            [sys.executable, str(HERE / "numpy_peer.py"), "--cells", str(n), *args, "--seed", str(i),
             "--out", f"{tmp}/peer{r}-{i}.npy"]
            for i, n in enumerate(share)
        ]  # fmt: skip

    res = alternate(config, peer, a.repeats, a.code)
    e, p, out = res["engine_median_s"], res["peer_median_s"], res["outside_median_s"]
    print(f"\nwhole processes: {C} cells, bigram V={V}, N={N}, L={L}, {G} generations, {cores} cores")
    print(f"collapse-sim run (one process, every core): {e:.1f} s   numpy peer ({cores} processes): {p:.1f} s")
    print(f"engine / numpy peer: {res['speedup']:.2f}x median of {a.repeats} paired repeats (target >= 2.5x)")
    print(f"collapse-sim outside its generation loop: {out:.2f} s median (target <= 3 s)")
    if a.code is not None:
        print(f"(collapse-sim of {a.code}; not recorded)")
    elif not a.no_record:
        res.update(
            date=date.today().isoformat(),
            machine=f"{platform.machine()}, {cores} cores",
            cells=C,
            sequences=N,
            seq_len=L,
            vocab=V,
            generations=G,
        )
        record(
            "ngram_whole_process" + ("" if N == 4096 else f"_n{N}"),
            res,
            [
                f"{C} cells, V={V}, N={N}, L={L}, G={G}, whole processes",
                f"collapse-sim run {e:.1f} s (outside its loop {out:.2f} s) vs numpy peer ({cores} procs) {p:.1f} s",
                f"{res['speedup']:.2f}x (median of {a.repeats} alternating pairs)",
            ],
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=256)
    ap.add_argument("--sequences", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7, help="paired engine / numpy measurements")
    ap.add_argument("--numpy-replicates", type=int, default=8, help="replicates the numpy loop runs per repeat")
    ap.add_argument("--quick", action="store_true", help="a small smoke version (16 cells, 512 sequences)")
    ap.add_argument("--no-record", action="store_true", help="do not write JSON or RESULTS.md")
    ap.add_argument(
        "--whole-process",
        action="store_true",
        help="time `collapse-sim run` against the numpy peer script (one process per core) as whole processes",
    )
    ap.add_argument("--generations", type=int, default=10, help="generations of the whole-process sweep")
    ap.add_argument(
        "--code",
        type=Path,
        help="time the collapse-sim of another checkout (a git worktree of an older commit),"
        " imported from a copy laid out as installed; not recorded",
    )
    a = ap.parse_args()
    if a.whole_process:
        return whole_process(a)
    if a.quick:
        a.cells, a.sequences, a.repeats, a.numpy_replicates = 16, 512, 3, 4
    C, N, L, V = a.cells, a.sequences, a.seq_len, a.vocab
    tokens_per_gen = C * N * L

    cfg = cfgmod.load(
        None,
        [
            "source.kind=markov",
            f"source.vocab_size={V}",
            "source.order=1",
            "model.order=2",
            f"real.sequences={N}",
            f"real.seq_len={L}",
            "real.heldout=256",
            f"generate.sequences={N}",
            "corpus.policy=replace",
            f"replicates={C}",
            "generations=1000",
        ],
    )
    plan = planmod.make_plan(cfg, "benchmark")
    group = plan.groups[0]
    devices = jax.local_devices()
    runner = GroupRunner(group.spec, make_world(group.spec, group.source, group.heldout), devices)
    params = runner.put(keys.cell_params(group.cells, group.source.digest, group.spec.family.traced))

    t = time.perf_counter()
    state, _ = runner.init(params)
    state, out = runner.step(state, 1, params)
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - t
    gen = [1]

    def engine_step():
        nonlocal state
        gen[0] += 1
        state, o = runner.step(state, gen[0], params)
        return o

    # kernels in isolation, sharded like the engine
    mesh = Mesh(np.array(devices), ("cells",))

    def sharded(fn, n_in):
        return jax.jit(
            jax.shard_map(jax.vmap(fn), mesh=mesh, in_specs=(P("cells"),) * n_in, out_specs=P("cells"), check_vma=False)
        )

    key_data = params.trajectory_key
    toks = jax.device_put(jnp.asarray(np.random.default_rng(0).integers(0, V, (C, N, L)), jnp.uint8), runner.cells)
    ones = jax.device_put(jnp.ones((C, N), jnp.int32), runner.cells)
    fit = sharded(lambda t, w: ngram.fit_counts(t, w, 2, V), 2)
    counts = fit(toks, ones)
    fit_s = median_time(lambda: fit(toks, ones), a.repeats)
    to_cdf = sharded(lambda c: ngram.cdf_table(ngram.probs_from_counts(c, 0.0), 1.0, 0, 1.0), 1)
    cdf = to_cdf(counts)
    samp = sharded(lambda k, c: ngram.sample(jax.random.wrap_key_data(k), c, 2, V, N, L), 2)
    jax.block_until_ready(samp(key_data, cdf))
    sample_s = median_time(lambda: samp(key_data, cdf), a.repeats)
    unif = sharded(lambda k: jax.random.uniform(jax.random.wrap_key_data(k), (N, L)), 1)
    jax.block_until_ready(unif(key_data))
    rng_s = median_time(lambda: unif(key_data), a.repeats)

    # the engine and the numpy loop, interleaved so that both see the same machine
    rng = np.random.default_rng(0)
    np_tokens = rng.integers(0, V, (N, L))
    heldout = np.asarray(group.heldout)
    np_tokens, _ = numpy_generation(rng, np_tokens, heldout, V)
    engine_times, numpy_times = [], []
    for _ in range(a.repeats):
        engine_times.append(median_time(engine_step, 1))
        t = time.perf_counter()
        for _ in range(a.numpy_replicates):
            np_tokens, _ = numpy_generation(rng, np_tokens, heldout, V)
        numpy_times.append((time.perf_counter() - t) / a.numpy_replicates)
    engine_s, numpy_per_cell = float(np.median(engine_times)), float(np.median(numpy_times))
    ratios = [(C / e) * n for e, n in zip(engine_times, numpy_times)]

    res = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {jax.local_devices()[0].platform}, {len(devices)} device(s)",
        "jax": jax.__version__,
        "cells": C,
        "sequences": N,
        "seq_len": L,
        "vocab": V,
        "compile_s": round(compile_s, 2),
        "engine_cellgen_per_s": C / engine_s,
        "engine_tokens_per_s": tokens_per_gen / engine_s,
        "fit_tokens_per_s": tokens_per_gen / fit_s,
        "sample_tokens_per_s": tokens_per_gen / sample_s,
        "rng_draws_per_s": tokens_per_gen / rng_s,
        "numpy_cellgen_per_s": 1.0 / numpy_per_cell,
        "numpy_tokens_per_s": N * L / numpy_per_cell,
    }
    res["speedup_vs_numpy"] = float(np.median(ratios))  # median of paired ratios
    res["speedup_range"] = [float(min(ratios)), float(max(ratios))]
    res["sample_vs_rng_bound"] = res["sample_tokens_per_s"] / res["rng_draws_per_s"]

    print(f"\nn-gram throughput: {C} cells, bigram, V={V}, N={N}, L={L}; {res['machine']}, jax {jax.__version__}")
    print(f"{'what':<34}{'cell-gen/s':>14}{'Mtokens/s':>14}")
    rows = [
        ("engine, full generation", res["engine_cellgen_per_s"], res["engine_tokens_per_s"]),
        ("  fit (count)", C / fit_s, res["fit_tokens_per_s"]),
        ("  sample", C / sample_s, res["sample_tokens_per_s"]),
        ("  jax.random.uniform bound", C / rng_s, res["rng_draws_per_s"]),
        ("numpy loop, one process", res["numpy_cellgen_per_s"], res["numpy_tokens_per_s"]),
    ]
    for name, cg, tk in rows:
        print(f"{name:<34}{cg:>14.1f}{tk / 1e6:>14.1f}")
    print(
        f"engine / numpy loop: {res['speedup_vs_numpy']:.2f}x median of {a.repeats} paired repeats "
        f"(range {min(ratios):.2f}-{max(ratios):.2f})   (target >= 4x)"
    )
    print(f"sampling / rng bound: {res['sample_vs_rng_bound']:.0%}   (target >= 60%)")
    print(f"compile (init + first step): {compile_s:.1f} s")
    if a.quick:
        print("(--quick is a smoke run: the targets are for the full setting, where arrays outgrow the caches)")
    if not a.no_record and not a.quick:
        record(
            "ngram_throughput",
            res,
            [
                f"{C} cells, V={V}, N={N}, L={L}",
                f"{res['engine_cellgen_per_s']:.1f} cell-gen/s",
                f"{res['speedup_vs_numpy']:.2f}x numpy loop",
                f"sampling {res['sample_vs_rng_bound']:.0%} of rng bound",
            ],
        )


if __name__ == "__main__":
    main()
