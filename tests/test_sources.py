"""collapse_sim/sources.py: exact truth, sampling, the built-in text."""

import jax
import numpy as np
import pytest

from collapse_sim.config import ConfigError, SourceConfig
from collapse_sim.sources import build_source, entropy_rate, stationary_joint
from tests import reference as ref


def markov(V=3, order=2, seed=4):
    return build_source(
        SourceConfig(kind="markov", vocab_size=V, order=order, seed=seed, concentration=0.8), 10, "t.yaml"
    )


def test_markov_stationary_is_stationary():
    s = markov()
    V, k = 3, 2
    nxt = stationary_joint(s.stationary, s.transitions, k, k + 1)  # (k+1)-grams
    # marginal over the first token of a (k+1)-gram is the distribution of the next k-gram
    np.testing.assert_allclose(nxt.reshape(V, V**k).sum(0), s.stationary, atol=1e-12)
    assert abs(s.stationary.sum() - 1) < 1e-12


def test_truth_matches_brute_force_joint():
    s = markov(V=3, order=2)
    V = 3
    # brute force: P(x1..x4) = pi(x1 x2) T(x3 | x1 x2) T(x4 | x2 x3)
    joint4 = np.zeros((V,) * 4)
    for a, b, c, d in np.ndindex(*(V,) * 4):
        joint4[a, b, c, d] = s.stationary[a * V + b] * s.transitions[a * V + b, c] * s.transitions[b * V + c, d]
    for m in (0, 1, 2, 3):
        weight, cond = s.truth(m)
        want = joint4.reshape(V ** (3 - m), V ** (m + 1)).sum(0).reshape(V**m, V)
        np.testing.assert_allclose(weight, want.sum(1), atol=1e-12)
        np.testing.assert_allclose(cond * weight[:, None], want, atol=1e-12)


def test_markov_samples_start_stationary_and_follow_transitions():
    s = markov(V=3, order=2)
    toks = np.asarray(s.sample(s.device_arrays(), jax.random.key(0), 60_000, 6))
    for start in (0, 3):  # the (x_t, x_{t+1}, x_{t+2}) triple at t = 0 and t = 3
        tri = toks[:, start] * 9 + toks[:, start + 1] * 3 + toks[:, start + 2]
        observed = np.bincount(tri, minlength=27)
        stat, dof = ref.chi_square(observed, stationary_joint(s.stationary, s.transitions, 2, 3))
        assert stat < ref.chi_square_limit(dof), (start, stat)
    assert entropy_rate(s) > 0


def test_categorical_zipf_and_probs():
    s = build_source(SourceConfig(kind="categorical", vocab_size=4, zipf=1.0), 5, "t")
    p = np.array([1, 1 / 2, 1 / 3, 1 / 4])
    np.testing.assert_allclose(s.truth(0)[1][0], p / p.sum())
    s2 = build_source(SourceConfig(kind="categorical", probs=(0.5, 0.0, 0.5), vocab_size=3), 5, "t")
    toks = np.asarray(s2.sample(s2.device_arrays(), jax.random.key(1), 20_000, 5))
    assert (toks != 1).all()
    stat, dof = ref.chi_square(np.bincount(toks.ravel(), minlength=3), np.array([0.5, 0.0, 0.5]))
    assert stat < ref.chi_square_limit(dof)


def test_builtin_text_ships_and_holds_out_its_tail():
    s = build_source(SourceConfig(kind="text"), 32, "t")
    assert s.vocab_size == len(s.chars) > 60 and "e" in s.chars
    total = len(s.text_train) + len(s.text_heldout)
    assert len(s.text_heldout) == int(total * 0.1)
    h = s.heldout(jax.random.key(0), 50, 32)
    assert h.shape == (50, 32) and h.max() < s.vocab_size
    text = "".join(s.chars[t] for t in s.text_heldout)
    assert "".join(s.chars[t] for t in h[0]) in text


def test_text_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="source.path: no such file"):
        build_source(SourceConfig(kind="text", path=str(tmp_path / "nope.txt")), 8, "c.yaml")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ConfigError, match="is empty"):
        build_source(SourceConfig(kind="text", path=str(tmp_path / "empty.txt")), 8, "c.yaml")
    (tmp_path / "bin.txt").write_bytes(b"abc\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        build_source(SourceConfig(kind="text", path=str(tmp_path / "bin.txt")), 8, "c.yaml")
    (tmp_path / "short.txt").write_text("abcdefghij")
    with pytest.raises(ConfigError, match="needs at least 16"):
        build_source(SourceConfig(kind="text", path=str(tmp_path / "short.txt")), 8, "c.yaml")


@pytest.mark.parametrize("V,order,concentration", [(8, 1, 1e-4), (4, 2, 1e-3), (4, 6, 0.5)])
def test_markov_stationary_of_nearly_deterministic_and_large_chains(V, order, concentration):
    """Small concentrations make periodic chains, where plain power iteration
    never converges; 4**6 states take the iterative (lazy chain) path."""
    s = build_source(
        SourceConfig(kind="markov", vocab_size=V, order=order, concentration=concentration, seed=1), 10, "t"
    )
    nxt = stationary_joint(s.stationary, s.transitions, order, order + 1).reshape(V, V**order).sum(0)
    assert np.abs(nxt - s.stationary).sum() < 1e-9


def test_a_chain_that_does_not_settle_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="source.concentration: the order-7 chain"):
        build_source(SourceConfig(kind="markov", vocab_size=3, order=7, concentration=0.01, seed=1), 10, "c.yaml")
