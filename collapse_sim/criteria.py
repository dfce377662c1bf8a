"""Collapse criteria: a small expression language, parsed (never evaluated),
and each cell's time to collapse.

Grammar (whitespace optional)::

    criterion  := condition ("and" condition)*
    condition  := METRIC OP VALUE
    OP         := "<=" | "<" | ">=" | ">"
    VALUE      := NUMBER | NUMBER "*" "gen0" | "gen0"
    NUMBER     := a decimal number such as 0.1, -2, 1e-3, or inf

``X*gen0`` is X times the cell's own value of METRIC at generation 0, e.g.
``heldout_nll>=1.2*gen0``. A cell collapses at the first generation at which
every condition holds; a cell that never meets the criterion within the
generations present is censored at its last one. NaN (a diverged cell, a
column another model family left null, a missing generation-0 value) never
satisfies a comparison.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from collapse_sim.schema import ConfigError

# every metric collapse-sim records (DESIGN §6, plus the admission filter's columns), in plotting order
METRICS = (
    "heldout_nll",
    "kl_true",
    "tv_true",
    "sq_true",
    "entropy",
    "support",
    "train_loss",
    "loss_nonfinite",
    "distinct_2",
    "unique_seq",
    "real_fraction",
    "accept_rate",
    "admitted",
)
NATS = ("heldout_nll", "entropy", "kl_true", "train_loss")
OPS = {
    "<=": (np.less_equal, "at most"),
    "<": (np.less, "below"),
    ">=": (np.greater_equal, "at least"),
    ">": (np.greater, "above"),
}

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?inf"
_CONDITION = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|<|>)\s*(.*?)\s*")
_VALUE = re.compile(rf"(?:({_NUMBER})\s*\*\s*)?gen0|({_NUMBER})")
# "and" between conditions; with no space only after a value (a digit, ".", or the end of gen0 / inf)
_AND = re.compile(r"(?<=[\d.f])\s*and\s*(?=[A-Za-z_])|\s+and\s+")


@dataclass(frozen=True)
class Condition:
    """METRIC OP VALUE; with `relative`, VALUE is `value` times the cell's generation-0 value."""

    metric: str
    op: str
    value: float
    relative: bool = False

    def text(self) -> str:
        if not self.relative:
            return f"{self.metric} {self.op} {self.value:g}"
        return f"{self.metric} {self.op} " + ("gen0" if self.value == 1 else f"{self.value:g} × gen0")

    def words(self) -> str:
        what = OPS[self.op][1]
        if not self.relative:
            return f"{self.metric} is {what} {self.value:g}"
        times = "" if self.value == 1 else f"{self.value:g} × "
        return f"{self.metric} is {what} {times}its own generation-0 value"


@dataclass(frozen=True)
class Criterion:
    """A parsed criterion: the expression as given and its conditions (all must hold)."""

    expr: str
    conditions: tuple[Condition, ...]

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(c.metric for c in self.conditions))

    def words(self) -> str:
        return " and ".join(c.words() for c in self.conditions)


def _error(expr: str, message: str) -> ConfigError:
    return ConfigError(f"--collapse-on {expr!r}", "", message)


def parse(expr: str, recorded=None) -> Criterion:
    """Parse a criterion such as ``tv_true>=0.1 and support<=3``.

    `recorded`: the metric columns the run holds (None: do not check). Raises
    ConfigError (one line naming the expression) for a malformed expression,
    a metric collapse-sim never records, or one this run did not record.
    """
    if not isinstance(expr, str) or not expr.strip():
        raise _error(str(expr), "empty; expected METRIC OP VALUE, e.g. tv_true>=0.1 or heldout_nll>=1.2*gen0")
    conditions = []
    for part in _AND.split(expr.strip()):
        m = _CONDITION.fullmatch(part)
        if not m:
            raise _error(
                expr,
                f"cannot read {part.strip()!r}: expected METRIC OP VALUE with OP one of <= < >= > "
                "(conditions joined by 'and')",
            )
        metric, op, value = m.groups()
        v = _VALUE.fullmatch(value)
        if not v:
            raise _error(
                expr,
                f"{metric}: cannot read the value {value!r}: expected a number (e.g. 0.1, 1e-3, -2), X*gen0 or gen0",
            )
        if metric not in METRICS:
            raise _error(expr, f"{metric}: not a metric collapse-sim records (one of {', '.join(METRICS)})")
        if recorded is not None and metric not in recorded:
            have = [m for m in METRICS if m in recorded]
            raise _error(expr, f"{metric}: this run did not record it (it recorded {', '.join(have)})")
        multiple, number = v.groups()
        relative = number is None
        conditions.append(Condition(metric, op, float(multiple if relative and multiple else number or 1), relative))
    return Criterion(expr, tuple(conditions))


def collapse_times(df, criterion: Criterion):
    """Each cell's time to collapse under `criterion`.

    df: metric rows (cell, generation, the criterion's metrics), any order.
    Returns a DataFrame indexed by cell, sorted, with float columns
    `collapse_generation` (the first generation at which every condition
    holds; NaN if none) and `last_generation` (the last generation present).
    """
    import pandas as pd

    df = df.sort_values(["cell", "generation"], kind="stable")
    cell = df["cell"].to_numpy()
    at0 = df["generation"].to_numpy() == 0
    holds = np.ones(len(df), bool)
    with np.errstate(invalid="ignore", over="ignore"):
        for cond in criterion.conditions:
            values = df[cond.metric].to_numpy(dtype=float, na_value=np.nan)
            if cond.relative:
                gen0 = pd.Series(values[at0], index=cell[at0])
                gen0 = gen0[~gen0.index.duplicated()]
                ref = cond.value * gen0.reindex(cell).to_numpy(dtype=float, na_value=np.nan)
            else:
                ref = cond.value
            holds &= OPS[cond.op][0](values, ref)  # NaN on either side: False
    gen = df["generation"]
    last = gen.groupby(cell).max().astype(float)
    first = gen[holds].groupby(cell[holds]).min().astype(float)
    out = pd.DataFrame({"collapse_generation": first.reindex(last.index), "last_generation": last})
    out.index.name = "cell"
    return out
