"""kernels/select.py against plain numpy on random inputs: ranking, dedup, admission."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from collapse_sim.kernels import select

ranked = jax.jit(select.ranked)
novel = jax.jit(select.novel)
first_passing = jax.jit(select.first_passing, static_argnums=3)


def ranked_reference(score, n_valid, keep):
    """The keep best valid scores (ties by index), NaN last: a plain loop."""
    order = sorted(range(n_valid), key=lambda j: (np.isnan(score[j]), -score[j] if not np.isnan(score[j]) else 0, j))
    out = np.zeros(len(score), bool)
    out[order[:keep]] = True
    return out


def test_ranked_keeps_the_best_valid_candidates(rng):
    n = 32  # one shape, one compiled program; the valid prefix and keep count vary
    for _ in range(30):
        score = rng.choice([-3.0, -1.5, -1.0, 0.0, -np.inf, np.nan], n) if rng.random() < 0.5 else rng.normal(size=n)
        n_valid = int(rng.integers(0, n + 1))
        keep = int(rng.integers(0, n + 2))
        got = np.asarray(ranked(jnp.asarray(score, jnp.float32), n_valid, keep))
        np.testing.assert_array_equal(got, ranked_reference(score.astype(np.float32), n_valid, keep))


def novel_reference(corpus, valid, cand, n_valid):
    seen = {tuple(r) for r, v in zip(corpus, valid) if v}
    out = np.zeros(len(cand), bool)
    for j in range(n_valid):
        key = tuple(cand[j])
        out[j] = key not in seen
        seen.add(key)
    return out


def test_novel_passes_first_occurrences_not_in_the_corpus(rng):
    """Tiny alphabets and short rows, so repeats are common (one shape; the
    alphabet, the valid rows and the valid prefix vary)."""
    M, N, L = 12, 20, 3
    for _ in range(30):
        V = int(rng.integers(2, 4))
        corpus = rng.integers(0, V, (M, L))
        valid = rng.random(M) < 0.7
        cand = rng.integers(0, V, (N, L))
        n_valid = int(rng.integers(0, N + 1))
        got = np.asarray(
            novel(jnp.asarray(corpus, jnp.int32), jnp.asarray(valid), jnp.asarray(cand, jnp.int32), n_valid)
        )
        np.testing.assert_array_equal(got, novel_reference(corpus, valid, cand, n_valid))
        kept = cand[got]
        assert len({tuple(r) for r in kept}) == len(kept)  # no repeat among those that pass


def test_first_passing_admits_in_draw_order_and_reports_the_shortfall(rng):
    N, L, cap = 30, 3, 32
    for _ in range(30):
        cand = rng.integers(0, 9, (N, L))
        ok = rng.random(N) < rng.random()
        k = int(rng.integers(0, N + 1))
        rows, n = first_passing(jnp.asarray(cand, jnp.int32), jnp.asarray(ok), k, cap)
        want = cand[np.flatnonzero(ok)[:k]]
        assert int(n) == len(want) == min(k, ok.sum())
        np.testing.assert_array_equal(np.asarray(rows)[: len(want)], want)
        assert (np.asarray(rows)[len(want) :] == 0).all()
