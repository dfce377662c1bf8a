"""The peer of ngram_throughput.py's whole-process mode: a researcher's numpy script.

    python benchmarks/numpy_peer.py --cells 128 --sequences 1024 --seq-len 64 --vocab 64 --generations 10 --out f.npy

A loop over replicates and generations of bigram models on a random
order-1 markov world (fit by counting, held-out NLL, sample; the same
numpy_generation as ngram_throughput.py's in-process peer), saving the
held-out NLL of every cell and generation. One process; start one per core.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    for name, default in (("cells", 128), ("sequences", 1024), ("seq-len", 64), ("vocab", 64), ("generations", 10)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    from ngram_throughput import numpy_generation  # the same generation as the in-process comparison

    rng = np.random.default_rng(a.seed)
    V, N, L = a.vocab, a.sequences, a.seq_len
    trans = rng.dirichlet(np.full(V, 0.5), size=V)
    cdf = np.cumsum(trans, axis=1)

    def world(n):
        out, ctx = np.empty((n, L), np.int64), rng.integers(0, V, n)
        for i in range(L):
            ctx = np.minimum((cdf[ctx] < rng.random(n)[:, None]).sum(1), V - 1)
            out[:, i] = ctx
        return out

    heldout = world(256)
    nll = np.empty((a.cells, a.generations + 1))
    for c in range(a.cells):
        tokens = world(N)
        for g in range(a.generations + 1):
            tokens, nll[c, g] = numpy_generation(rng, tokens, heldout, V)
    np.save(a.out, nll)


if __name__ == "__main__":
    main()
