"""kernels/metrics.py against numpy references, on random inputs."""

import jax.numpy as jnp
import numpy as np
import pytest

from collapse_sim.kernels import metrics, ngram
from tests import reference as ref


def fitted(rng, V, order, n=30, L=8, smoothing=0.0):
    tokens = rng.integers(0, V, (n, L))
    c = ref.counts(tokens, np.ones(n, int), order, V)
    return c, ref.probs(c, smoothing)


@pytest.mark.parametrize("smoothing", [0.0, 0.05])
def test_heldout_nll_and_entropy(rng, smoothing):
    V, order = 4, 2
    c, p = fitted(rng, V, order, smoothing=smoothing)
    heldout = rng.integers(0, V, (25, 8))
    hc = ngram.fit_counts(jnp.asarray(heldout), jnp.ones(25, jnp.int32), order, V).astype(jnp.float32)
    pj = jnp.asarray(p, jnp.float32)
    np.testing.assert_allclose(float(metrics.heldout_nll(pj, hc)), ref.heldout_nll(p, heldout, order), rtol=1e-5)
    np.testing.assert_allclose(
        float(metrics.heldout_entropy(pj, hc)), ref.heldout_entropy(p, heldout, order), rtol=1e-5
    )


def test_heldout_nll_is_inf_when_a_token_has_probability_zero():
    p = jnp.asarray([[1.0, 0.0]])
    hc = jnp.asarray([[3.0, 1.0]])
    assert float(metrics.heldout_nll(p, hc)) == np.inf


def test_truth_divergences(rng):
    F, V = 6, 5
    true = rng.dirichlet(np.ones(V), size=F)
    true[0, 1] = 0.0
    true[0] /= true[0].sum()
    model = rng.dirichlet(np.ones(V), size=F)
    weight = rng.dirichlet(np.ones(F))
    weight[3] = 0.0
    weight /= weight.sum()
    got = metrics.truth_divergences(
        jnp.asarray(model, jnp.float32), jnp.asarray(true, jnp.float32), jnp.asarray(weight, jnp.float32)
    )
    np.testing.assert_allclose([float(x) for x in got], ref.divergences(model, true, weight), rtol=2e-5)


def test_truth_divergences_inf_not_nan():
    true = jnp.asarray([[0.5, 0.5], [1.0, 0.0]])
    model = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])
    kl, tv, sq = metrics.truth_divergences(model, true, jnp.asarray([1.0, 0.0]))
    assert float(kl) == np.inf and np.isfinite(float(tv)) and np.isfinite(float(sq))
    kl0, _, _ = metrics.truth_divergences(model, true, jnp.asarray([0.0, 1.0]))
    assert float(kl0) == np.inf
    kl1, _, _ = metrics.truth_divergences(true, true, jnp.asarray([1.0, 0.0]))
    assert float(kl1) == 0.0


def test_support_counts_positive_pairs_of_seen_contexts(rng):
    V, order = 4, 2
    c, p = fitted(rng, V, order, n=3, L=3)
    want = sum(int((p[i] > 0).sum()) for i in range(len(c)) if c[i].sum() > 0)
    assert int(metrics.support(jnp.asarray(c), jnp.asarray(p))) == want == int((c > 0).sum())


@pytest.mark.parametrize("V", [3, 7, 3000])  # 3000: the sort path
def test_distinct_2_and_unique_seq(rng, V):
    tokens = rng.integers(0, min(V, 4), (40, 5))
    tokens[10] = tokens[3]
    tokens[11] = tokens[3]
    if V == 3000:
        tokens[5, 2] = 2999
    for n_valid in (40, 17):
        d2 = float(metrics.distinct_2(jnp.asarray(tokens), n_valid, V))
        us = float(metrics.unique_sequences(jnp.asarray(tokens), n_valid))
        np.testing.assert_allclose(d2, ref.distinct_2(tokens[:n_valid]), rtol=1e-6)
        np.testing.assert_allclose(us, ref.unique_seq(tokens[:n_valid]), rtol=1e-6)


def test_unique_seq_long_sequences(rng):
    # sequences that differ only in their last token, longer than one packed word
    base = rng.integers(0, 2, (1, 100))
    tokens = np.repeat(base, 6, axis=0)
    tokens[np.arange(3), 99] = 1 - tokens[0, 99]
    assert float(metrics.unique_sequences(jnp.asarray(tokens), 6)) == pytest.approx(2 / 6)


def test_distinct_2_from_counts_equals_direct(rng):
    V = 6
    tokens = rng.integers(0, V, (30, 7))
    for n_valid in (30, 11):
        w = (np.arange(30) < n_valid).astype(np.int32)
        c = ngram.fit_counts(jnp.asarray(tokens), jnp.asarray(w), 2, V)
        np.testing.assert_allclose(
            float(metrics.distinct_2_from_counts(c, n_valid, 7)), ref.distinct_2(tokens[:n_valid]), rtol=1e-6
        )


def test_small_kl_is_not_lost_to_rounding(rng):
    """Models close to the truth (long accumulate runs): KL ~ 4e-7 within 0.1 %
    of the float64 value although the inputs are float32."""
    F, V = 17, 16
    true = rng.dirichlet(np.ones(V), size=F)
    model = true * (1 + 1e-3 * rng.standard_normal((F, V)))
    model /= model.sum(1, keepdims=True)
    weight = rng.dirichlet(np.ones(F))
    want = ref.divergences(model, true, weight)[0]
    got = float(
        metrics.truth_divergences(
            jnp.asarray(model, jnp.float32), jnp.asarray(true, jnp.float32), jnp.asarray(weight, jnp.float32)
        )[0]
    )
    assert 1e-7 < want < 1e-6 and abs(got - want) < 1e-3 * want
