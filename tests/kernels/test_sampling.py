"""kernels/sampling.py against numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapse_sim.kernels import sampling
from tests import reference as ref


def random_probs(rng, V, zeros=2):
    p = rng.dirichlet(np.full(V, 0.7))
    p[rng.choice(V, zeros, replace=False)] = 0.0
    return p / p.sum()


@pytest.mark.parametrize(
    "temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.6, 3, 1.0), (1.0, 0, 0.62), (0.8, 5, 0.9)]
)
def test_filter_matches_reference(rng, temperature, top_k, top_p):
    for _ in range(20):
        p = random_probs(rng, 9)
        got = np.asarray(sampling.filter_probs(jnp.asarray(p, jnp.float32), temperature, top_k, top_p))
        want = ref.filter_probs(p, temperature, top_k, top_p)
        np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.mark.parametrize("V", [1, 5, 16, 64, 65, 200])
def test_descending_order_is_a_stable_argsort(rng, V):
    """Ranks by pairwise comparison (V <= RANK_BY_PAIRS_MAX) and by sort
    (wider rows) both equal numpy's stable argsort of -w, ties and NaN included."""
    for trial in range(20):
        w = rng.choice([0.0, 0.25, 0.5, 1.0], V) if trial % 2 else rng.random(V)  # with and without ties
        w = w.astype(np.float32)
        if trial % 5 == 4:
            w[rng.choice(V, max(1, V // 4), replace=False)] = np.nan
        order, rank = (np.asarray(a) for a in jax.jit(sampling.descending_order)(jnp.asarray(w)))
        key = np.where(np.isnan(w), np.inf, -w)
        want = np.argsort(key, kind="stable")
        np.testing.assert_array_equal(order, want)
        np.testing.assert_array_equal(rank[want], np.arange(V))


@pytest.mark.parametrize("V", [24, 100])  # one block of pairs, and several with a remainder
def test_filter_is_bit_identical_whichever_way_rows_are_ranked(rng, monkeypatch, V):
    rows = jnp.asarray(np.stack([random_probs(rng, V) for _ in range(64)]), jnp.float32)
    rows = rows.at[:8].set(jnp.round(rows[:8] * 8) / 8)  # ties
    f = jax.vmap(sampling.filter_probs, in_axes=(0, None, None, None))
    for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.8, 5, 0.9), (1.3, 0, 0.5), (0.0, 3, 1.0)]:
        by_pairs = np.asarray(f(rows, temperature, top_k, top_p))
        monkeypatch.setattr(sampling, "RANK_BY_PAIRS_MAX", 0)
        by_sort = np.asarray(f(rows, temperature, top_k, top_p))
        monkeypatch.undo()
        np.testing.assert_array_equal(by_pairs.view(np.uint32), by_sort.view(np.uint32))


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_no_truncation_known_statically_is_bit_identical(rng, temperature):
    """top_k = top_p = None (no cell of a group truncates: the ranking is not
    compiled) gives the bits of top_k = 0, top_p = 1, the ranking compiled."""
    rows = jnp.asarray(np.stack([random_probs(rng, 64) for _ in range(96)]), jnp.float32)
    rows = rows.at[:8].set(jnp.round(rows[:8] * 8) / 8)  # ties
    off = jax.jit(jax.vmap(lambda p: sampling.filter_probs(p, temperature, None, None)))(rows)
    ranked = jax.jit(jax.vmap(lambda p, k, q: sampling.filter_probs(p, temperature, k, q)))(
        rows, jnp.zeros(96, jnp.int32), jnp.ones(96, jnp.float32)
    )
    np.testing.assert_array_equal(np.asarray(off).view(np.uint32), np.asarray(ranked).view(np.uint32))


def test_top_k_keeps_exactly_the_k_most_probable(rng):
    for k in range(1, 8):
        p = rng.permutation(np.arange(1, 9, dtype=np.float64))
        p /= p.sum()
        got = np.asarray(sampling.filter_probs(jnp.asarray(p, jnp.float32), 1.0, k, 1.0))
        assert set(np.flatnonzero(got > 0)) == set(np.argsort(-p)[:k])


def test_top_k_ties_broken_by_lower_index():
    p = jnp.asarray([0.25, 0.25, 0.25, 0.25])
    got = np.asarray(sampling.filter_probs(p, 1.0, 2, 1.0))
    np.testing.assert_array_equal(got > 0, [True, True, False, False])


def test_top_p_keeps_smallest_prefix_reaching_mass():
    p = jnp.asarray([0.1, 0.4, 0.05, 0.3, 0.15])
    # descending: 0.4, 0.3, 0.15, 0.1, 0.05; cumulative 0.4, 0.7, 0.85, ...
    for top_p, keep in [(0.35, {1}), (0.5, {1, 3}), (0.72, {1, 3, 4}), (0.99, {0, 1, 3, 4, 2})]:
        got = np.asarray(sampling.filter_probs(p, 1.0, 0, top_p))
        assert set(np.flatnonzero(got > 0)) == keep, top_p


def test_temperature_to_zero_is_greedy(rng):
    for _ in range(20):
        p = random_probs(rng, 12)
        greedy = np.asarray(sampling.filter_probs(jnp.asarray(p, jnp.float32), 0.0, 0, 1.0))
        np.testing.assert_array_equal(greedy, np.eye(12)[np.argmax(p)])
        cold = np.asarray(sampling.filter_probs(jnp.asarray(p, jnp.float32), 1e-3, 0, 1.0))
        assert np.argmax(cold) == np.argmax(p) and cold.max() > 0.999


def draw(p, n, seed=0):
    width = sampling.cdf_width(len(p))
    cdf = sampling.cdf_row(jnp.asarray(p, jnp.float32), width)
    r = sampling.draw_bits(jax.random.key(seed), n)
    return np.asarray(sampling.search_cdf(cdf[None], jnp.zeros(n, jnp.int32), r))


@pytest.mark.parametrize("W", [1, 2, 4, 8, 16, 32, 64, 128, 256])
def test_search_counts_entries_at_most_r(rng, W):
    """Against numpy's searchsorted (the number of entries <= r), on random
    rows (zero widths included), r at every entry, one below it and at the
    ends, rows chosen per draw or draw i on row i."""
    rows = []
    for _ in range(5):
        V = int(rng.integers(1, W + 1))
        p = random_probs(rng, V, zeros=min(2, V - 1)) if V > 1 else np.ones(1)
        rows.append(np.asarray(sampling.cdf_row(jnp.asarray(p, jnp.float32), W)))
    cdf = np.stack(rows)
    edges = np.concatenate([cdf.ravel(), cdf.ravel() - 1, [0, sampling.CDF_TOTAL - 1]])
    r = np.concatenate([edges[edges < sampling.CDF_TOTAL], rng.integers(0, sampling.CDF_TOTAL, 500)]).astype(np.uint32)
    row = rng.integers(0, len(rows), len(r)).astype(np.int32)
    want = np.array([np.searchsorted(cdf[i], x, side="right") for i, x in zip(row, r)])
    got = sampling.search_cdf(jnp.asarray(cdf), jnp.asarray(row), jnp.asarray(r))
    np.testing.assert_array_equal(np.asarray(got), want)
    own = sampling.search_cdf(jnp.asarray(cdf[row]), None, jnp.asarray(r))
    np.testing.assert_array_equal(np.asarray(own), want)


def test_inverse_cdf_frequencies_chi_square(rng):
    for V in (2, 5, 13, 64):
        p = random_probs(rng, V, zeros=1 if V > 2 else 0)
        tokens = draw(p, 200_000, seed=V)
        observed = np.bincount(tokens, minlength=V)
        stat, dof = ref.chi_square(observed, p)
        assert stat < ref.chi_square_limit(dof), (V, stat, dof)
        assert observed[p == 0].sum() == 0, "a zero-probability token was drawn"


def test_chi_square_detects_a_biased_sampler(rng):
    p = random_probs(rng, 8, zeros=0)
    biased = p.copy()
    biased[np.argmax(p)] *= 1.05
    biased /= biased.sum()
    observed = np.bincount(draw(biased, 200_000), minlength=8)
    stat, dof = ref.chi_square(observed, p)
    assert stat > ref.chi_square_limit(dof)


def test_cdf_row_zero_width_for_zero_probability():
    p = np.array([0.0, 0.5, 0.0, 0.5, 0.0, 0.0])
    cdf = np.asarray(sampling.cdf_row(jnp.asarray(p, jnp.float32), 8)).astype(np.int64)
    widths = np.diff(np.concatenate([[0], cdf]))
    np.testing.assert_array_equal(widths > 0, [False, True, False, True, False, False, False, False])
    assert cdf[-1] == sampling.CDF_TOTAL


def test_tiny_probabilities_keep_their_width():
    """Smoothed tokens of probability ~1e-8 beside two huge counts are each drawable
    with close to their probability: integer widths, not a float32 cumulative sum."""
    V = 103
    p = np.full(V, 1.25e-8)
    p[0] = p[1] = (1 - 101 * 1.25e-8) / 2
    cdf = np.asarray(sampling.cdf_row(jnp.asarray(p, jnp.float32), 128)).astype(np.int64)
    widths = np.diff(np.concatenate([[0], cdf[:V]]))
    assert cdf[-1] == sampling.CDF_TOTAL and (widths > 0).all()
    expected = 1.25e-8 * sampling.CDF_TOTAL  # 26.8
    assert np.abs(widths[2:] - expected).max() <= 1.0
