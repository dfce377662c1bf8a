"""Kaplan–Meier survival of cells (the fraction not yet collapsed) with right censoring."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054
# S(t) <= 0.5 with a tolerance for products such as (2/3)(3/4) that round just above 0.5
_HALF = 0.5 + 1e-12


@dataclass(frozen=True)
class KaplanMeier:
    """The estimate at each distinct event time (arrays of one length, times ascending).

    times: generations at which at least one cell collapsed; at_risk: cells
    neither collapsed nor censored before that time; events: cells that
    collapsed at it; survival: S(t); lower / upper: the pointwise 95 % band
    (NaN where S = 0); end: the last time observed (event or censoring);
    censored: the times of the censored cells, ascending.
    median, ci_low, ci_high: None where undefined.
    """

    times: np.ndarray
    at_risk: np.ndarray
    events: np.ndarray
    survival: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    end: float
    censored: np.ndarray
    median: float | None
    ci_low: float | None
    ci_high: float | None

    def at(self, t: float) -> float:
        """S(t): the estimate after the last event time <= t (1 before the first)."""
        i = np.searchsorted(self.times, t, side="right")
        return float(self.survival[i - 1]) if i else 1.0

    def steps(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of the survival curve for a `steps-post` plot: 1 from time 0, a drop at each event, on to `end`."""
        x = np.concatenate([[min(0.0, self.times[0]) if len(self.times) else 0.0], self.times, [self.end]])
        y = np.concatenate([[1.0], self.survival, [self.survival[-1] if len(self.survival) else 1.0]])
        return x, y


def _first(times: np.ndarray, mask: np.ndarray) -> float | None:
    hit = np.flatnonzero(mask)
    return float(times[hit[0]]) if len(hit) else None


def kaplan_meier(time, collapsed, z: float = Z95) -> KaplanMeier:
    """Kaplan–Meier estimate from each cell's time and whether it collapsed then
    (False: censored at that time, i.e. still not collapsed at its last generation).

    At each distinct event time t_i, with n_i cells at risk (time >= t_i: a
    cell censored at t_i is still at risk at t_i) and d_i collapses,

        S(t_i) = prod_{j <= i} (1 - d_j / n_j).

    Pointwise band: Greenwood's variance on the log(-log) scale,

        se_i = sqrt(sum_{j <= i} d_j / (n_j (n_j - d_j))) / |log S(t_i)|,
        lower_i = S(t_i) ** exp(+z se_i),   upper_i = S(t_i) ** exp(-z se_i),

    (the transform keeps the band inside (0, 1)); undefined (NaN) where S = 0,
    as in R's survfit.

    Median: the smallest event time with S(t) <= 0.5 (None when S stays
    above 0.5). Its 95 % confidence interval in the manner of Brookmeyer and
    Crowley (1982), read off the band as R's survfit does: a horizontal line
    at 0.5 meets the lower band first, then the curve, then the upper band, so

        ci_low  = the first event time at which the lower band is <= 0.5,
        ci_high = the first event time at which the upper band is <= 0.5,

    each None where the band never gets there (with few cells, or much
    censoring, ci_high often does not). ci_low <= median <= ci_high.
    """
    time = np.asarray(time, dtype=float)
    collapsed = np.asarray(collapsed, dtype=bool)
    if time.shape != collapsed.shape or time.ndim != 1:
        raise ValueError("time and collapsed must be 1-D arrays of one length")
    end = float(time.max()) if len(time) else 0.0
    times = np.unique(time[collapsed])
    at_risk = np.array([(time >= t).sum() for t in times], dtype=np.int64)
    events = np.array([(collapsed & (time == t)).sum() for t in times], dtype=np.int64)
    survival = np.cumprod(1.0 - events / np.maximum(at_risk, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        greenwood = np.cumsum(events / (at_risk * (at_risk - events)))
        log_s = np.log(survival)
        se = np.sqrt(greenwood) / np.abs(log_s)
        lower = np.where(survival > 0, survival ** np.exp(z * se), np.nan)
        upper = np.where(survival > 0, survival ** np.exp(-z * se), np.nan)
    return KaplanMeier(
        times=times,
        at_risk=at_risk,
        events=events,
        survival=survival,
        lower=lower,
        upper=upper,
        end=end,
        censored=np.sort(time[~collapsed]),
        median=_first(times, survival <= _HALF),
        ci_low=_first(times, lower <= _HALF),
        ci_high=_first(times, upper <= _HALF),
    )
