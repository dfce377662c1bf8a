"""Collapse criteria (parsed, never evaluated), each cell's time to collapse, and Kaplan–Meier survival
with right censoring, on hand-made data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from collapse_sim import criteria
from collapse_sim.criteria import Condition
from collapse_sim.survival import kaplan_meier

# ---------------------------------------------------------------- criteria


@pytest.mark.parametrize(
    "expr,conditions",
    [
        ("support<=1", [Condition("support", "<=", 1.0)]),
        ("tv_true < 0.1", [Condition("tv_true", "<", 0.1)]),
        ("entropy>=-2", [Condition("entropy", ">=", -2.0)]),
        ("kl_true>1e-3", [Condition("kl_true", ">", 1e-3)]),
        ("heldout_nll>=1.2*gen0", [Condition("heldout_nll", ">=", 1.2, relative=True)]),
        ("heldout_nll >= 1.5 * gen0", [Condition("heldout_nll", ">=", 1.5, relative=True)]),
        ("entropy<gen0", [Condition("entropy", "<", 1.0, relative=True)]),
        ("heldout_nll>=inf", [Condition("heldout_nll", ">=", math.inf)]),
        ("tv_true>=0.1 and support<=3", [Condition("tv_true", ">=", 0.1), Condition("support", "<=", 3.0)]),
        ("tv_true>=.1andsupport<=3", [Condition("tv_true", ">=", 0.1), Condition("support", "<=", 3.0)]),
        (
            "entropy<=0.5*gen0 and unique_seq<0.9 and admitted>=10",
            [Condition("entropy", "<=", 0.5, True), Condition("unique_seq", "<", 0.9), Condition("admitted", ">=", 10)],
        ),
    ],
)
def test_criterion_parser_reads_every_form(expr, conditions):
    assert criteria.parse(expr).conditions == tuple(conditions)


def test_collapse_times_by_hand():
    """Three cells, generations 0..3. Criterion: x >= 1.5*gen0 and y < 2.
    cell 0: x = 2, 2, 3, 4 (1.5*gen0 = 3: holds at g = 2, 3), y = 5, 1, 1, 1 -> collapses at 2.
    cell 1: x = 1, 2, NaN, 9 (holds at 1 and 3), y = 0, 5, 0, 0 (< 2 at 0, 2, 3) -> both only at 3.
    cell 2: x = 1, 1, 1 (generation 3 missing), never -> censored at its last generation, 2.
    NaN never satisfies a comparison."""
    df = pd.DataFrame(
        {
            "cell": [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2],
            "generation": [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2],
            "tv_true": [2, 2, 3, 4, 1, 2, np.nan, 9, 1, 1, 1],
            "entropy": [5, 1, 1, 1, 0, 5, 0, 0, 0, 0, 0],
        }
    )
    t = criteria.collapse_times(df.sample(frac=1, random_state=1), criteria.parse("tv_true>=1.5*gen0 and entropy<2"))
    assert t["collapse_generation"].tolist()[:2] == [2.0, 3.0] and np.isnan(t["collapse_generation"][2])
    assert t["last_generation"].tolist() == [3.0, 3.0, 2.0]
    strict = criteria.collapse_times(df, criteria.parse("tv_true>3"))  # > against >=: cell 0 only at 3
    assert strict["collapse_generation"].tolist()[:2] == [3.0, 3.0]


# ---------------------------------------------------------------- Kaplan–Meier


def test_kaplan_meier_against_a_hand_worked_example():
    """20 cells: two collapse at each of generations 1..8; two are censored at 3 (at risk at 3, gone at 4),
    two at 9.

      t  n_t d_t  S(t)                      Greenwood sum  d/(n(n-d))
      1   20   2  18/20          = 0.9        1/180          = 0.0055556
      2   18   2  0.9  * 16/18   = 0.8       + 1/144         = 0.0125000
      3   16   2  0.8  * 14/16   = 0.7       + 1/112         = 0.0214286
      4   12   2  0.7  * 10/12   = 0.583333  + 1/60          = 0.0380952
      5   10   2  0.583333 * 8/10 = 0.466667 + 1/40          = 0.0630952
      6    8   2  0.466667 * 6/8 = 0.35      + 1/24          = 0.1047619
      7    6   2  0.35 * 4/6     = 0.233333  + 1/12          = 0.1880952
      8    4   2  0.233333 * 2/4 = 0.116667  + 1/4           = 0.4380952

    Median: the first t with S <= 0.5: 5. Band at t = 3: se = sqrt(0.0214286) / |ln 0.7| = 0.146385 /
    0.356675 = 0.410416, exp(1.96 se) = 2.23545, lower = 0.7 ** 2.23545 = 0.45055 (<= 0.5; at t = 2 it is
    0.8 ** exp(1.96 * 0.111803 / 0.223144) = 0.8 ** 2.66960 = 0.55115), upper = 0.7 ** (1 / 2.23545) = 0.85252.
    At t = 6: se = sqrt(0.1047619) / 1.049822 = 0.308309, upper = 0.35 ** (1 / exp(0.604286)) = 0.56344;
    at t = 7: se = sqrt(0.1880952) / 1.455287 = 0.298016, upper = 0.233333 ** (1 / exp(0.584111)) = 0.44420.
    So the 95 % CI of the median is [3, 7]: the lower band reaches 0.5 at 3, the upper band at 7."""
    time = [g for g in range(1, 9) for _ in range(2)] + [3, 3, 9, 9]
    km = kaplan_meier(time, [True] * 16 + [False] * 4)
    assert km.times.tolist() == list(range(1, 9))
    assert km.at_risk.tolist() == [20, 18, 16, 12, 10, 8, 6, 4] and km.events.tolist() == [2] * 8
    np.testing.assert_allclose(km.survival, [0.9, 0.8, 0.7, 0.583333, 0.466667, 0.35, 0.233333, 0.116667], atol=1e-6)
    np.testing.assert_allclose(km.lower[1:3], [0.55115, 0.45055], atol=1e-5)
    np.testing.assert_allclose(km.upper[[2, 5, 6]], [0.85252, 0.56344, 0.44420], atol=1e-5)
    assert (km.median, km.ci_low, km.ci_high) == (5.0, 3.0, 7.0)
    assert km.end == 9 and km.censored.tolist() == [3, 3, 9, 9] and km.at(3.5) == pytest.approx(0.7)


def test_kaplan_meier_with_few_cells_and_none_collapsed():
    """Four cells: collapse at 1 and 2, censored at 2 and 3. S(1) = 3/4; at 2, n = 3 (the cell censored at 2 is
    at risk), d = 1: S(2) = 3/4 * 2/3 = 0.5 -> median 2. The upper band never reaches 0.5: ci_high None.
    No cell collapsed: S = 1, no median. All collapse at once: S = 0, band undefined (NaN), ci None."""
    km = kaplan_meier([1, 2, 2, 3], [True, True, False, False])
    np.testing.assert_allclose(km.survival, [0.75, 0.5])
    assert km.median == 2.0 and km.ci_high is None and km.ci_low == 1.0  # lower band at 1: 0.75**5.55 = 0.19
    none = kaplan_meier([4, 4, 4], [False] * 3)
    assert len(none.times) == 0 and (none.median, none.ci_low, none.ci_high) == (None, None, None)
    assert none.steps()[1].tolist() == [1.0, 1.0]
    at_once = kaplan_meier([2, 2], [True, True])
    assert at_once.median == 2.0 and np.isnan(at_once.lower[0]) and at_once.ci_low is None
