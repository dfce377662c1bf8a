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
    for values, sub in df.groupby(sweep_keys, sort=False, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        yield dict(zip(sweep_keys, values)), sub


METRICS = [
    "heldout_nll",
    "kl_true",
    "tv_true",
    "sq_true",
    "entropy",
    "train_loss",
    "support",
    "distinct_2",
    "unique_seq",
    "real_fraction",
]
NATS = ("heldout_nll", "entropy", "kl_true", "train_loss")


def _draw(ax, df: pd.DataFrame, sweep_keys: list[str], metric: str) -> None:
    """Median over replicates per sweep point and a 10-90 % band, one colour
    per sweep point in every panel. Quantiles count infinite values (a
    held-out token of probability 0), so a median that is infinite is not
    drawn rather than replaced by the median of the finite few; the legend
    counts the infinite values."""
    for i, (values, sub) in enumerate(_by_point(df, sweep_keys)):
        q = sub.groupby("generation")[metric].quantile([0.1, 0.5, 0.9]).unstack()
        q = q.replace([np.inf, -np.inf], np.nan)
        n_inf = int(np.isinf(sub[metric]).sum())
        label = point_label(values, sweep_keys) + (f" ({n_inf} inf)" if n_inf else "")
        ax.plot(q.index, q[0.5], label=label, lw=1.5, color=f"C{i % 10}")
        ax.fill_between(q.index, q[0.1], q[0.9], color=f"C{i % 10}", alpha=0.18, lw=0)
    if np.isinf(df[metric]).mean() > 0.5:
        ax.text(0.5, 0.5, "mostly infinite", transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.set_xlabel("generation")
    ax.set_ylabel(f"{metric} (nats)" if metric in NATS else metric)
    ax.grid(alpha=0.3)


def _replicates(df: pd.DataFrame, sweep_keys: list[str]) -> int:
    return df.groupby("cell").ngroups // max(1, sum(1 for _ in _by_point(df, sweep_keys)))


def plot_metric(
    df: pd.DataFrame, sweep_keys: list[str], out: str | Path, metric: str = "heldout_nll", title: str = ""
) -> Path:
    """One metric against generation: a line per sweep point, a band over replicates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    _draw(ax, df, sweep_keys, metric)
    ax.set_title(title or f"{metric}: median and 10-90 % band over {_replicates(df, sweep_keys)} replicates")
    ax.legend(fontsize=7, ncol=2 if len(ax.lines) > 6 else 1)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_panels(df: pd.DataFrame, sweep_keys: list[str], out: str | Path, title: str = "") -> Path:
    """Every metric the run recorded, one panel each, with a shared legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [m for m in METRICS if m in df.columns]
    cols = 3
    rows = -(-len(present) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), dpi=100, squeeze=False)
    for ax, metric in zip(axes.flat, present):
        _draw(ax, df, sweep_keys, metric)
        ax.set_title(metric, fontsize=10)
    for ax in list(axes.flat)[len(present) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[len(present) - 1].get_legend_handles_labels()  # real_fraction: always finite
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=8)
    fig.suptitle(title or f"median and 10-90 % band over {_replicates(df, sweep_keys)} replicates")
    fig.tight_layout(rect=(0, 0.04 + 0.02 * (-(-len(labels) // 4)), 1, 0.97))
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


def summary(
    df: pd.DataFrame, sweep_keys: list[str], metrics: tuple[str, ...] = ("heldout_nll", "tv_true")
) -> pd.DataFrame:
    """Median of each metric over replicates at the first and last generation,
    per sweep point (metrics the run did not record are skipped)."""
    g0, g1 = int(df["generation"].min()), int(df["generation"].max())
    present = [m for m in metrics if m in df.columns]
    rows = []
    for values, sub in _by_point(df, sweep_keys):
        row = dict(values)
        for metric in present:
            first = sub.loc[sub["generation"] == g0, metric].median()
            last = sub.loc[sub["generation"] == g1, metric].median()
            row.update({f"{metric}@{g0}": first, f"{metric}@{g1}": last})
        rows.append(row)
    return pd.DataFrame(rows)
