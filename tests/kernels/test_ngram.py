"""kernels/ngram.py against numpy references, on random inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapse_sim.kernels import metrics, ngram
from tests import reference as ref


@pytest.mark.parametrize("order,V", [(1, 5), (2, 4), (3, 3), (2, 11)])
def test_counts_exact(rng, order, V):
    tokens = rng.integers(0, V, (37, 9))
    weights = rng.integers(0, 3, 37)
    got = np.asarray(ngram.fit_counts(jnp.asarray(tokens), jnp.asarray(weights), order, V))
    np.testing.assert_array_equal(got, ref.counts(tokens, weights, order, V))


@pytest.mark.parametrize("order,V", [(1, 6), (2, 5), (3, 4)])
def test_context_ids_match_reference(rng, order, V):
    tokens = rng.integers(0, V, (6, 7))
    got = np.asarray(ngram.context_ids(jnp.asarray(tokens), order, V))
    want = [[ref.context_of(s, i, order, V) for i in range(7)] for s in tokens]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("smoothing", [0.0, 0.01, 1.0])
def test_probs_and_log_probs(rng, smoothing):
    V, order = 5, 2
    tokens = rng.integers(0, V - 1, (20, 6))  # token V-1 never seen: ML gives it 0
    c = ref.counts(tokens, np.ones(20, int), order, V)
    got = np.asarray(ngram.probs_from_counts(jnp.asarray(c, jnp.int32), smoothing))
    want = ref.probs(c, smoothing)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-6)
    test = rng.integers(0, V, (4, 6))
    lp = np.asarray(ngram.log_probs(jnp.asarray(test), jnp.asarray(got), order))
    with np.errstate(divide="ignore"):
        want_lp = [[np.log(want[ref.context_of(s, i, order, V), s[i]]) for i in range(6)] for s in test]
    np.testing.assert_allclose(lp, want_lp, rtol=1e-5)


def test_unseen_context_backs_off_to_the_training_unigram():
    c = jnp.zeros((3, 4), jnp.int32).at[0, 1].set(5).at[2, 3].set(15)
    p = np.asarray(ngram.probs_from_counts(c, 0.0))
    np.testing.assert_allclose(p[1], [0, 0.25, 0, 0.75])
    np.testing.assert_allclose(p[0], [0, 1, 0, 0])
    ps = np.asarray(ngram.probs_from_counts(c, 1.0))
    np.testing.assert_allclose(ps[1], (np.array([0, 5, 0, 15]) + 1) / 24, rtol=1e-6)


def test_maximum_likelihood_never_revives_a_lost_token():
    """Token 2 only ends sequences, so its context is unseen: sampling must
    still draw only tokens of the training set (no uniform fallback)."""
    V, order = 8, 2
    train = jnp.asarray([[0, 1, 2], [1, 1, 1]])
    counts = ngram.fit_counts(train, jnp.ones(2, jnp.int32), order, V)
    cdf = ngram.cdf_table(ngram.probs_from_counts(counts, 0.0), 1.0, 0, 1.0)
    toks = np.asarray(ngram.sample(jax.random.key(0), cdf, order, V, 5000, 12))
    assert set(np.unique(toks)) <= {0, 1, 2} and 2 in toks


def test_bigram_sampling_transition_frequencies(rng):
    V, order = 4, 2
    C = ngram.num_contexts(order, V)
    probs = rng.dirichlet(np.ones(V), size=C)
    probs[:, 2] = np.where(np.arange(C) % 2 == 0, 0.0, probs[:, 2])  # some zero transitions
    probs /= probs.sum(1, keepdims=True)
    cdf = ngram.cdf_table(jnp.asarray(probs, jnp.float32), 1.0, 0, 1.0)
    toks = np.asarray(ngram.sample(jax.random.key(3), cdf, order, V, 20_000, 12))
    observed = ref.counts(toks, np.ones(len(toks), int), order, V)
    for c in range(C):
        if observed[c].sum() < 500:
            continue
        stat, dof = ref.chi_square(observed[c], probs[c])
        assert stat < ref.chi_square_limit(dof), (c, stat)
        assert observed[c][probs[c] == 0].sum() == 0


def test_sample_first_rows_do_not_depend_on_how_many_are_drawn(rng):
    V, order = 7, 2
    probs = rng.dirichlet(np.ones(V), size=ngram.num_contexts(order, V))
    cdf = ngram.cdf_table(jnp.asarray(probs, jnp.float32), 1.0, 0, 1.0)
    few = np.asarray(ngram.sample(jax.random.key(0), cdf, order, V, 5, 10))
    many = np.asarray(ngram.sample(jax.random.key(0), cdf, order, V, 33, 10))
    np.testing.assert_array_equal(few, many[:5])


def test_greedy_sampling_is_deterministic_argmax():
    V, order = 3, 2
    probs = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
    cdf = ngram.cdf_table(jnp.asarray(probs, jnp.float32), 0.0, 0, 1.0)
    toks = np.asarray(ngram.sample(jax.random.key(1), cdf, order, V, 50, 4))
    # start row (BOS = 3) -> 1, then 1 -> 0, 0 -> 1, 1 -> 0
    assert (toks == [1, 0, 1, 0]).all()


def test_kernels_jit_and_vmap(rng):
    V, order = 5, 2
    tokens = jnp.asarray(rng.integers(0, V, (3, 10, 6)))
    w = jnp.ones((3, 10), jnp.int32)
    batched = jax.jit(jax.vmap(lambda t, w: ngram.fit_counts(t, w, order, V)))(tokens, w)
    for i in range(3):
        np.testing.assert_array_equal(batched[i], ngram.fit_counts(tokens[i], w[i], order, V))


def test_counting_while_sampling_equals_fitting_the_sample(rng):
    V, order = 5, 3
    probs = rng.dirichlet(np.ones(V), size=ngram.num_contexts(order, V))
    cdf = ngram.cdf_table(jnp.asarray(probs, jnp.float32), 1.0, 0, 1.0)
    w = jnp.asarray((np.arange(40) < 23).astype(np.int32))
    toks, counts, (h1, h2) = ngram.sample(jax.random.key(5), cdf, order, V, 40, 9, w)
    np.testing.assert_array_equal(toks, ngram.sample(jax.random.key(5), cdf, order, V, 40, 9))
    np.testing.assert_array_equal(counts, ref.counts(np.asarray(toks), np.asarray(w), order, V))
    # the hashes made while drawing are the sample's own
    want1, want2 = metrics.sequence_hashes(toks)
    np.testing.assert_array_equal(h1, want1)
    np.testing.assert_array_equal(h2, want2)
