"""Exact results about recursive resampling, beyond DESIGN §8's Wright–Fisher
check, that the engine must agree with (means over many replicates, within a
stated number of standard errors).

Setting of both: a categorical source P over V tokens, sequences of one
token, a maximum-likelihood unigram (order 1, smoothing 0), so a model is the
empirical distribution of its training set and `sq_true` = ||M_g - P||^2.
"""

from __future__ import annotations

import numpy as np

from collapse_sim.sources import build_source
from tests.helpers import load, run_rows

UNIGRAM = [
    "source.kind=categorical",
    "source.vocab_size=5",
    "source.zipf=1.0",
    "real.seq_len=1",
    "real.heldout=50",
    "model.order=1",
    "model.smoothing=0",
]
Z = 4.0  # tolerance, in standard errors of the mean over replicates


def within(mean_by_g, se_by_g, want_by_g):
    dev = np.abs(np.asarray(mean_by_g) - np.asarray(want_by_g)) / np.asarray(se_by_g)
    return bool((dev < Z).all()), dev


def test_accumulate_keeps_the_expected_squared_distance_bounded():
    """`accumulate`, N0 = k = n. M_{g+1} = a M_g + b Ŝ_g with a = (g+1)/(g+2),
    b = 1/(g+2), where Ŝ_g is the empirical distribution of n draws from M_g.
    Write D_g = M_g - P, s_g = E||D_g||^2 and c = 1 - Σ P_i^2. Given M_g,
    E[Ŝ_g] = M_g and E||Ŝ_g - M_g||^2 = (1 - Σ M_g,i^2)/n; M_g is a
    martingale with mean P, so E[1 - Σ M_g,i^2] = c - s_g. Hence

        s_0 = c / n,    s_{g+1} = s_g + (c - s_g) / (n (g + 2)^2),

    which stays below c (1/n + π²/(6n) - 1/n): accumulating real and
    synthetic data does not collapse (cf. Gerstgrasser et al., 2024, "Is
    model collapse inevitable?", for the Gaussian analogue). The same run
    under `replace` would give c (1 - (1 - 1/n)^(g+1)) (DESIGN §8), several
    times larger by g = 8: the tolerance separates them."""
    n, G, R = 10, 8, 2000
    cfg = load(
        UNIGRAM
        + [
            f"real.sequences={n}",
            f"generate.sequences={n}",
            "corpus.policy=accumulate",
            f"generations={G}",
            f"replicates={R}",
        ]
    )
    probs = build_source(cfg.source, 1, "t").truth(0)[1][0]
    c = 1 - float((probs**2).sum())
    s = [c / n]
    for g in range(G):
        s.append(s[-1] + (c - s[-1]) / (n * (g + 2) ** 2))
    df = run_rows(cfg)
    by_g = df.groupby("generation")["sq_true"]
    ok, dev = within(by_g.mean(), by_g.std() / np.sqrt(R), s)
    assert ok, (dev, by_g.mean().to_numpy(), s)
    replace = c * (1 - (1 - 1 / n) ** (G + 1))
    assert (replace - s[G]) / (by_g.std().iloc[G] / np.sqrt(R)) > 10 * Z  # the check has power


def test_a_truth_filter_under_accumulate_drives_the_accept_rate_to_one():
    """`accumulate` with a `truth` filter whose threshold admits exactly the
    tokens of a set A (ln P(a) >= threshold), oversample large enough that k
    always pass (a shortfall has probability below 1e-9 here). Every admitted
    sequence lies in A, so after g generations the corpus holds R(A) + g k
    sequences in A out of N0 + g k, and a candidate drawn from M_g passes with
    probability M_g(A) = (R(A) + g k) / (N0 + g k). R(A) ~ Binomial(N0, P(A)),
    so exactly

        E[accept_rate_g] = (N0 P(A) + g k) / (N0 + g k),

    and admitted_g = k. Without the filter the accept rate of A-tokens would
    stay at P(A) in expectation: the tolerance separates the two from g = 1."""
    N0, k, G, R, threshold = 40, 10, 6, 2000, -2.0
    cfg = load(
        UNIGRAM
        + [
            f"real.sequences={N0}",
            f"generate.sequences={k}",
            "corpus.policy=accumulate",
            "generate.filter.kind=truth",
            f"generate.filter.threshold={threshold}",
            "generate.filter.oversample=8",
            f"generations={G}",
            f"replicates={R}",
        ]
    )
    probs = build_source(cfg.source, 1, "t").truth(0)[1][0]
    in_a = np.log(probs.astype(np.float32)) >= threshold
    pa = float(probs[in_a].sum())
    assert 0.5 < pa < 0.95
    want = [(N0 * pa + g * k) / (N0 + g * k) for g in range(G + 1)]
    df = run_rows(cfg)
    assert (df["admitted"] == k).all()
    by_g = df.groupby("generation")["accept_rate"]
    ok, dev = within(by_g.mean(), by_g.std() / np.sqrt(R), want)
    assert ok, (dev, by_g.mean().to_numpy(), want)
    assert (want[1] - pa) / (by_g.std().iloc[1] / np.sqrt(R)) > 2 * Z  # the check has power
