"""collapse_sim/corpus.py: each policy's training set, real_fraction and admission.

Unigram counts over row-identifying tokens show exactly which rows were
trained on: real row i is filled with token i, synthetic row j with token
N0 + j, so count / L is how many times each row was used.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapse_sim import corpus, draws
from collapse_sim.kernels import ngram

N0, CAP, L = 6, 10, 3
V = N0 + CAP


def spec(policy, m=5, vocab=V):
    """A corpus of a unigram counting family (one count row)."""
    return corpus.CorpusSpec.for_run(policy, N0, L, CAP, m, 0, vocab, count_rows=1)


def state(policy, n_synth, counts=None):
    real = jnp.repeat(jnp.arange(N0)[:, None], L, axis=1).astype(jnp.uint8)
    synth = jnp.repeat(N0 + jnp.arange(CAP)[:, None], L, axis=1).astype(jnp.uint8)
    c = jnp.zeros((0, V), jnp.int32) if counts is None else counts
    return corpus.CorpusState(real if spec(policy).stores_real else real[:0], synth, jnp.int32(n_synth), c)


def fresh_rows(key, n):
    return jnp.full((n, L), 99, jnp.int32)  # token 99 marks fresh real data


@partial(jax.jit, static_argnames=("policy", "m"))
def train(policy, st, key, r=0, m=5):
    vocab = 100 if policy == "fresh" else V
    t = corpus.training_set(
        spec(policy, m, vocab), st, key, jnp.int32(r), fresh_rows, lambda rows, w: ngram.fit_counts(rows, w, 1, vocab)
    )
    return t.counts, t.real_tokens, t.train_tokens


def uses(counts):
    return np.asarray(counts)[0] // L


def test_replace_trains_on_the_counts_of_the_last_sample_only():
    sample = jnp.asarray(np.repeat(np.arange(8)[:, None], L, axis=1))
    counted = ngram.fit_counts(sample, (jnp.arange(8) < 5).astype(jnp.int32), 1, V)
    st = corpus.admit(spec("replace"), state("replace", 0, jnp.zeros((1, V), jnp.int32)), sample, jnp.int32(5), counted)
    counts, real, total = train("replace", st, jax.random.key(0))
    u = uses(counts)
    np.testing.assert_array_equal(u[:5], 1)
    assert u[5:].sum() == 0, "rows past k were counted"
    assert (int(real), int(total)) == (0, 5 * L)


def test_accumulate_uses_running_counts():
    c = jnp.arange(V, dtype=jnp.int32)[None, :]
    counts, real, total = train("accumulate", state("accumulate", 8, c), jax.random.key(0))
    np.testing.assert_array_equal(counts, c)
    assert (int(real), int(total)) == (N0 * L, (N0 + 8) * L)


def test_accumulate_subsample_without_replacement_and_uniform():
    m, n_synth = 7, 5
    hits = np.zeros(V)
    trials = 3000
    for t in range(trials):
        counts, real, total = train(
            "accumulate_subsample", state("accumulate_subsample", n_synth), jax.random.key(t), m=m
        )
        u = uses(counts)
        assert u.max() == 1 and u.sum() == m, "drawn with replacement or wrong size"
        assert u[N0 + n_synth :].sum() == 0, "read past the valid length"
        assert int(real) == u[:N0].sum() * L and int(total) == m * L
        hits += u
    # each of the N0 + n_synth valid rows is drawn with probability m / 11
    p = m / (N0 + n_synth)
    se = np.sqrt(p * (1 - p) / trials)
    assert np.all(np.abs(hits[: N0 + n_synth] / trials - p) < 4 * se)


def _ordered_tuples(fn, n_valid, size, take, n_draws, seed):
    keys = jax.random.split(jax.random.key(seed), n_draws)
    idx = np.asarray(jax.jit(jax.vmap(lambda k: fn(k, jnp.int32(n_valid), size, take)))(keys))
    assert np.all((idx >= 0) & (idx < n_valid)), "an index past the valid rows"
    assert all(len(set(row)) == take for row in idx.tolist()), "a repeated index"
    code = np.zeros(len(idx), np.int64)
    for j in range(take):
        code = code * n_valid + idx[:, j]
    return np.bincount(code, minlength=n_valid**take)


@pytest.mark.parametrize("n_valid, size, take", [(13, 40, 3), (7, 40, 3), (6, 6, 3)])
def test_distinct_rows_draw_ordered_tuples_uniformly(n_valid, size, take):
    """accumulate_subsample's O(m) sampler (redraw repeats; `top_rows` over
    4 m slots while n <= 4 m) against the exact law of a draw without
    replacement: every ordered tuple of distinct indices equally likely
    (chi-square goodness of fit), and the same law as `top_rows` over the
    whole buffer, the sampler it replaced (chi-square homogeneity). Each
    statistic within 5 standard deviations of its mean (sd = sqrt(2 df));
    a sampler that favoured sorted, low or early indices would be far out."""
    n_draws = 60 * int(np.prod(range(n_valid - take + 1, n_valid + 1)))  # about 60 per ordered tuple
    got = _ordered_tuples(draws.distinct_rows, n_valid, size, take, n_draws, seed=1)
    ref = _ordered_tuples(draws.top_rows, n_valid, size, take, n_draws, seed=2)
    cells = got > 0
    k = int(np.prod(range(n_valid - take + 1, n_valid + 1)))  # ordered tuples of distinct indices
    assert cells.sum() == k and ((ref > 0) == cells).all()
    expected = n_draws / k
    fit = ((got[cells] - expected) ** 2 / expected).sum()
    both = got[cells] + ref[cells]
    homog = (((got[cells] - both / 2) ** 2 + (ref[cells] - both / 2) ** 2) / (both / 2)).sum()
    df = k - 1
    assert fit < df + 5 * np.sqrt(2 * df), (fit, df)
    assert homog < df + 5 * np.sqrt(2 * df), (homog, df)


def test_distinct_rows_cost_does_not_grow_with_the_buffer():
    """Same draws from a buffer of 10**4 slots and of 10**6: the sampler
    never looks past 4 take slots (or its take indices). While n <= 4 take
    they are 0.2's draws (`top_rows` over the whole buffer)."""
    key, take = jax.random.key(3), 50
    for n_valid in (60, 200, 900):
        a = draws.distinct_rows(key, jnp.int32(n_valid), 10**4, take)
        b = draws.distinct_rows(key, jnp.int32(n_valid), 10**6, take)
        np.testing.assert_array_equal(a, b)
        assert len(set(np.asarray(a).tolist())) == take and np.asarray(a).max() < n_valid
        if n_valid <= 4 * take:
            np.testing.assert_array_equal(a, draws.top_rows(key, jnp.int32(n_valid), 10**4, take))
    text = jax.jit(lambda k, n: draws.distinct_rows(k, n, 10**6, take)).lower(key, jnp.int32(900)).as_text()
    assert "1000000" not in text, "an array the size of the buffer"
    # bounds on the batch's sizes choose the way every cell takes: never another draw
    for n_valid, bounds in ((60, (60, 200)), (900, (300, 900)), (60, (60, 900)), (900, (60, 900))):
        a = draws.distinct_rows(key, jnp.int32(n_valid), 10**4, take, tuple(map(jnp.int32, bounds)))
        np.testing.assert_array_equal(a, draws.distinct_rows(key, jnp.int32(n_valid), 10**4, take))


def _numpy_later_repeats(idx):
    seen, out = set(), []
    for v in idx.tolist():
        out.append(v in seen)
        seen.add(v)
    return np.array(out)


@pytest.mark.parametrize("take, changes", [(40, 3), (300, 70), (300, 250)])
def test_new_repeats_flags_what_a_sort_flags(rng, take, changes):
    """The redraw rounds' repeat test (changed positions against all, CHUNK
    at a time) against a plain numpy scan and the stable-sort test, on
    random arrays whose unchanged positions hold distinct values and whose
    changed ones collide with them and each other (more changed positions
    than a CHUNK too)."""
    for _ in range(20):
        idx = rng.choice(10 * take, take, replace=False)
        changed = np.zeros(take, bool)
        changed[rng.choice(take, changes, replace=False)] = True
        where = np.flatnonzero(changed)
        idx[where] = rng.choice(idx, changes)  # repeats of anything, changed or not
        idx[where[: changes // 2]] = rng.integers(0, 10 * take, changes // 2)  # and new values
        want = _numpy_later_repeats(idx)
        assert want.any()
        got = np.asarray(draws.new_repeats(jnp.asarray(idx, jnp.int32), jnp.asarray(changed)))
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.asarray(draws.later_repeats(jnp.asarray(idx, jnp.int32))), want)


def test_redraws_are_the_draws_of_sorting_every_round():
    """distinct_rows beyond 4 m draws exactly what 0.3.0 drew (a stable
    sort of all m indices every round): run directories stay format 4."""

    def sorted_every_round(key, n_valid, take):
        def redraw(carry):
            idx, dup, r = carry
            fresh = jax.random.randint(jax.random.fold_in(key, r), (take,), 0, n_valid)
            idx = jnp.where(dup, fresh, idx)
            return idx, draws.later_repeats(idx), r + 1

        start = (jnp.zeros(take, jnp.int32), jnp.ones(take, bool), jnp.int32(1))
        return jax.lax.while_loop(lambda c: jnp.any(c[1]), redraw, start)[0]

    take = 50
    keys = jax.random.split(jax.random.key(7), 64)
    new = jax.jit(jax.vmap(lambda k, n: draws.distinct_rows(k, n, 10**6, take), in_axes=(0, None)))
    old = jax.jit(jax.vmap(lambda k, n: sorted_every_round(k, n, take), in_axes=(0, None)))
    for n_valid in (4 * take + 1, 260, 1000, 10**5):
        np.testing.assert_array_equal(new(keys, jnp.int32(n_valid)), old(keys, jnp.int32(n_valid)))


@pytest.mark.parametrize("policy", ["mix", "fresh"])
def test_mix_and_fresh_composition(policy):
    m, n_synth = 8, 9
    for r in (0, 3, N0 if policy == "mix" else m):  # mix draws at most N0 real rows
        for t in range(20):
            counts, real, total = train(policy, state(policy, n_synth), jax.random.key(t), r=r, m=m)
            u = np.asarray(counts)[0] // L
            synth_used = u[N0 : N0 + CAP]
            real_used = u[99] if policy == "fresh" else u[:N0].sum()
            assert real_used == r and synth_used.sum() == m - r
            assert synth_used.max(initial=0) <= 1 and synth_used[n_synth:].sum() == 0
            if policy == "mix":
                assert u[:N0].max() <= 1
            assert (int(real), int(total)) == (r * L, m * L)


def test_admit():
    sample = jnp.full((4, L), 2, jnp.int32)
    st = state("accumulate", 8, jnp.zeros((1, V), jnp.int32))
    st = corpus.admit(
        spec("accumulate"),
        st,
        sample,
        jnp.int32(3),
        ngram.fit_counts(sample, (jnp.arange(4) < 3).astype(jnp.int32), 1, V),
    )
    assert int(st.counts[0, 2]) == 3 * L and int(st.n_synth) == 11
    st = corpus.admit(spec("accumulate_subsample"), state("accumulate_subsample", 5), sample, jnp.int32(3))
    assert int(st.n_synth) == 8
    np.testing.assert_array_equal(np.asarray(st.synth[5:8]), 2)
    np.testing.assert_array_equal(np.asarray(st.synth[:5, 0]), N0 + np.arange(5))
    st = corpus.admit(spec("mix"), state("mix", 9), sample, jnp.int32(3))
    assert int(st.n_synth) == 3 and st.synth.shape == (4, L)


def test_token_dtype():
    assert corpus.token_dtype(256) == np.uint8 and corpus.token_dtype(257) == np.uint16


@pytest.mark.parametrize("counts", [True, False])
@pytest.mark.parametrize("policy", ["replace", "accumulate", "accumulate_subsample", "mix", "fresh"])
def test_state_shapes_describe_init_state(policy, counts):
    """The shapes the scheduler plans with (memory, empty cells in a
    checkpoint) are those init_state makes, for count and token models."""
    real = jnp.zeros((7, 5), jnp.int32)
    cs = corpus.CorpusSpec.for_run(policy, 7, 5, 11, 4, 2, 4, 5 if counts else 0)
    state = corpus.init_state(cs, real, (lambda rows, w: ngram.fit_counts(rows, w, 2, 4)) if counts else None)
    want = cs.shapes()
    for a, (shape, dt) in zip(state[:4], want[:4]):
        assert a.shape == shape and a.dtype == dt
    assert state.model == {} and want.model == {}
    if not counts:  # a token model keeps every row it trains on: no counts, and R where it is reread
        assert state.counts.shape[0] == 0
        assert (state.real.shape[0] == 7) == (policy in ("accumulate", "accumulate_subsample", "mix"))


def test_training_rows_read_the_policy_training_set():
    """training_rows hands a transformer exactly T_g: replace -> S_{g-1};
    accumulate -> R then every S admitted; mix -> round(rho m) rows of R then
    m - r of S (each drawn without replacement)."""
    N0, L, k = 4, 3, 5
    real = jnp.arange(N0 * L).reshape(N0, L) % 7
    key = jax.random.key(3)
    for policy in ("replace", "accumulate", "mix"):
        cs = corpus.CorpusSpec.for_run(policy, N0, L, k, 4, 3, 7)
        st = corpus.init_state(cs, real)
        s1 = jnp.full((k, L), 1)
        st = corpus.admit(cs, st, s1, jnp.int32(k))
        s2 = jnp.full((k, L), 2)
        st = corpus.admit(cs, st, s2, jnp.int32(3))  # only 3 rows of S_1 are valid
        _, fetch, n, real_tokens, train_tokens = corpus.training_set(cs, st, key, jnp.int32(2), None)
        rows = np.asarray(fetch(jnp.arange(int(n))))
        if policy == "replace":
            assert int(n) == 3 and (rows == 2).all() and int(real_tokens) == 0 and int(train_tokens) == 3 * L
        elif policy == "accumulate":
            assert int(n) == N0 + k + 3
            np.testing.assert_array_equal(rows[:N0], np.asarray(real))
            assert (rows[N0 : N0 + k] == 1).all() and (rows[N0 + k :] == 2).all()
            assert int(real_tokens) == N0 * L and int(train_tokens) == (N0 + k + 3) * L
        else:
            assert int(n) == 4 and int(real_tokens) == 2 * L and int(train_tokens) == 4 * L
            real_rows = {tuple(r) for r in np.asarray(real)}
            assert len({tuple(r) for r in rows[:2]} & real_rows) == 2  # two distinct rows of R
            assert (rows[2:] == 2).all()
