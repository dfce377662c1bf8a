"""A run's metric rows as the report and the end-of-run figures see them:
each row tagged with its sweep point and its position on the x axis."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from collapse_sim import config as cfgmod
from collapse_sim.criteria import METRICS
from collapse_sim.results import column_value
from collapse_sim.schema import Config, ConfigError

X_AXES = ("generation", "ratio")


@dataclass
class RunView:
    """df: the metric rows sorted by (cell, generation), plus `_point` (the
    index of the row's sweep point in `points`, the config's sweep order) and
    `_x` (its x coordinate). points: the effective config of each sweep point
    (those with rows first in sweep order, then any the config does not list).
    labels: a legend label per point. metrics: the metrics recorded (a column
    with at least one non-null value), in `criteria.METRICS` order. log_x:
    whether x is drawn on a log scale (then x <= 0 is left out)."""

    df: pd.DataFrame
    cfg: Config
    sweep_keys: list[str]
    points: list[Config]
    labels: list[str]
    metrics: list[str]
    x: str
    x_label: str
    log_x: bool

    @property
    def present(self) -> list[int]:
        """Indices of the points that have rows, ascending."""
        return sorted(int(p) for p in self.df["_point"].unique())

    def values(self, point: int) -> dict:
        """The swept keys' values of a point as written in the metric columns."""
        row = int(np.flatnonzero(self.df["_point"].to_numpy() == point)[0])
        return {k: self.df[k].iat[row] for k in self.sweep_keys}


def point_label(values: dict, sweep_keys: list[str]) -> str:
    """`policy=replace, sequences=100`: the last part of each swept key and its value."""
    if not sweep_keys:
        return "all cells"
    return ", ".join(f"{k.split('.')[-1]}={values[k]}" for k in sweep_keys)


def decade(values) -> bool:
    """Whether positive finite values span a factor of 10 or more (all > 0, max/min >= 10)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return len(v) > 0 and bool((v > 0).all()) and v.max() / v.min() >= 10


def _tag_points(df: pd.DataFrame, cfg: Config, sweep_keys: list[str]) -> tuple[np.ndarray, list[Config]]:
    """Each row's sweep point (by matching the swept columns to the config's grid) and the points' configs."""
    grid = cfgmod.sweep_points(cfg)
    index = {tuple(column_value(v) for _, v in p.values): p.index for p in grid}
    configs = [p.config for p in grid]
    if not sweep_keys:
        return np.zeros(len(df), np.int64), configs
    ids = df.groupby(sweep_keys, sort=False, dropna=False).ngroup().to_numpy()
    _, first = np.unique(ids, return_index=True)  # a row of each group, by group id
    mapping = np.empty(len(first), np.int64)
    for gid, row in enumerate(first):
        key = tuple(df[k].iat[row] for k in sweep_keys)
        found = index.get(key)
        if found is None:  # a value the config does not list (edited config.yaml): its own point
            found = len(configs)
            configs.append(cfg)
            index[key] = found
        mapping[gid] = found
    return mapping[ids], configs


def _ratio(df: pd.DataFrame, configs: list[Config]) -> np.ndarray:
    """Synthetic sequences admitted before each row's generation over N0 = real.sequences.

    With an `admitted` column: its sum over the cell's earlier generations;
    without: generation x generate.sequences of the point's effective config.
    """
    point = df["_point"].to_numpy()
    n0 = np.array([c.real.sequences for c in configs], float)[point]
    if "admitted" in df.columns and df["admitted"].notna().any():
        admitted = df["admitted"].astype(float).fillna(0.0)
        before = admitted.groupby(df["cell"].to_numpy()).cumsum() - admitted
        return before.to_numpy() / n0
    k = np.array([c.generate.sequences for c in configs], float)[point]
    return df["generation"].to_numpy() * k / n0


def make_view(df: pd.DataFrame, cfg: Config, x: str = "generation") -> RunView:
    """Tag the metric rows `df` (as `results.load_metrics` returns them) of a
    run of config `cfg` with their sweep points and x coordinates."""
    if x not in X_AXES:
        raise ConfigError("--x", "", f"must be one of {', '.join(X_AXES)}, got {x!r}")
    sweep_keys = [k for k in cfg.sweep_keys if k in df.columns]
    df = df.sort_values(["cell", "generation"], kind="stable").reset_index(drop=True)
    point, configs = _tag_points(df, cfg, sweep_keys)
    df["_point"] = point
    labels = []
    for i in range(len(configs)):
        rows = df.index[point == i]
        labels.append(point_label({k: df[k].iat[rows[0]] for k in sweep_keys}, sweep_keys) if len(rows) else "")
    metrics = [m for m in METRICS if m in df.columns and df[m].notna().any()]
    if x == "ratio":
        df["_x"] = _ratio(df, configs)
        log_x = decade(df["_x"][df["_x"] > 0]) and bool((df["_x"] > 0).any())
        x_label = "synthetic sequences admitted so far / N0" + (" (log scale; ratio 0 not shown)" if log_x else "")
    else:
        df["_x"] = df["generation"].astype(float)
        log_x, x_label = False, "generation"
    return RunView(df, cfg, sweep_keys, configs, labels, metrics, x, x_label, log_x)
