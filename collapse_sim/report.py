"""Plots and summary tables of a run's metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def point_label(row: pd.Series | dict, sweep_keys: list[str]) -> str:
    if not sweep_keys:
        return "all cells"
    return ", ".join(f"{k.split('.')[-1]}={row[k]}" for k in sweep_keys)


def _by_point(df: pd.DataFrame, sweep_keys: list[str]):
    if not sweep_keys:
        yield {}, df
        return
    for values, sub in df.groupby(sweep_keys, sort=False):
        values = values if isinstance(values, tuple) else (values,)
        yield dict(zip(sweep_keys, values)), sub


def plot_metric(df: pd.DataFrame, sweep_keys: list[str], out: str | Path, metric: str = "heldout_nll", title: str = "") -> Path:
    """One line per sweep point (median over replicates) and a 10-90 % band.

    Infinite values (a held-out token of probability 0) are left out of the
    quantiles and counted in the legend.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for values, sub in _by_point(df, sweep_keys):
        finite = sub[np.isfinite(sub[metric])]
        q = finite.groupby("generation")[metric].quantile([0.1, 0.5, 0.9]).unstack()
        label = point_label(values, sweep_keys)
        n_inf = int((~np.isfinite(sub[metric])).sum())
        if n_inf:
            label += f" ({n_inf} inf)"
        (line,) = ax.plot(q.index, q[0.5], label=label, lw=1.5)
        ax.fill_between(q.index, q[0.1], q[0.9], color=line.get_color(), alpha=0.18, lw=0)
    ax.set_xlabel("generation")
    ax.set_ylabel(f"{metric} (nats)" if metric in ("heldout_nll", "entropy", "kl_true") else metric)
    n_rep = df.groupby("cell").ngroups // max(1, sum(1 for _ in _by_point(df, sweep_keys)))
    ax.set_title(title or f"{metric}: median and 10-90 % band over {n_rep} replicates")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(ax.lines) > 6 else 1)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


def summary(df: pd.DataFrame, sweep_keys: list[str], metric: str = "heldout_nll") -> pd.DataFrame:
    """Median of a metric over replicates at the first and last generation, per sweep point."""
    g0, g1 = int(df["generation"].min()), int(df["generation"].max())
    rows = []
    for values, sub in _by_point(df, sweep_keys):
        first = sub.loc[sub["generation"] == g0, metric].median()
        last = sub.loc[sub["generation"] == g1, metric].median()
        rows.append({**values, f"{metric}@{g0}": first, f"{metric}@{g1}": last, "change": last - first})
    return pd.DataFrame(rows)
