"""Figures of a run (PNG, through matplotlib's Agg canvas; pyplot and its global state are never used).

One plotting path for the end-of-run figures (`collapse-sim run`) and the
report (`collapse-sim report`): a metric against the x axis, one line per
sweep point, the mean over replicates and a 95 % band (mean ± 1.96 SE). An
infinite value (held-out NLL under maximum likelihood, KL) cannot be averaged:
the line and band are over the finite values, and a panel of its own shows
the fraction of replicates that are infinite. NaN (a diverged cell) is left
out of both. A metric whose finite values are all positive and span a
decade or more is drawn on a log y axis (the band's lower edge clipped at the
smallest value observed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from collapse_sim.criteria import NATS
from collapse_sim.runview import RunView, decade
from collapse_sim.survival import Z95, KaplanMeier


def _figure(rows: int, cols: int, width: float, height: float, dpi: int = 100, top: float = 0.55, bottom: float = 0.6):
    """A figure of rows x cols panels, each width x height inches, with fixed margins in inches (tick
    labels, axis labels, titles; `top` and `bottom` around the panels) rather than a tight layout,
    which costs a third of a figure's time."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    w, h = width * cols, height * rows + top + bottom
    fig = Figure(figsize=(w, h), dpi=dpi)
    FigureCanvasAgg(fig)  # an Agg canvas of its own: saving needs no renderer borrowed from a print
    fig.subplots_adjust(
        left=0.85 / w, right=1 - 0.2 / w, bottom=bottom / h, top=1 - top / h, wspace=1.0 / width, hspace=1.0 / height
    )
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    fig.savefig(out)
    return out


def colour(view: RunView, point: int):
    """One colour per sweep point, the same in every figure."""
    from matplotlib import colormaps

    n = len(view.points)
    if n <= 10:
        return f"C{point}"
    if n <= 20:
        return colormaps["tab20"](point / 20)
    return colormaps["viridis"](point / max(1, n - 1))


def stats(view: RunView, metric: str) -> pd.DataFrame:
    """Per (point, generation): `x` (mean x), `n` (finite values), `mean`, `se`
    (standard error of the mean of the finite values), `inf` (fraction of the
    non-NaN values that are infinite)."""
    df = view.df
    v = df[metric].to_numpy(dtype=float, na_value=np.nan)
    finite = np.isfinite(v)
    frame = pd.DataFrame(
        {
            "_point": df["_point"].to_numpy(),
            "generation": df["generation"].to_numpy(),
            "x": df["_x"].to_numpy(),
            "v": np.where(finite, v, np.nan),
            "isinf": np.isinf(v).astype(float),
            "valid": (~np.isnan(v)).astype(float),
        }
    )
    g = frame.groupby(["_point", "generation"], sort=True)
    out = g["v"].agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    out["se"] = out["std"] / np.sqrt(out["n"].where(out["n"] > 0))
    out["se"] = out["se"].fillna(0.0)
    out["x"] = g["x"].mean()
    valid = g["valid"].sum()
    out["inf"] = (g["isinf"].sum() / valid.where(valid > 0)).to_numpy()
    return out.drop(columns="std")


def panels_of(view: RunView, metric: str) -> list[str]:
    """The panels a metric needs: "finite" where it has finite values, "inf" where some are infinite."""
    v = view.df[metric].to_numpy(dtype=float, na_value=np.nan)
    kinds = ["finite"] if np.isfinite(v).any() else []
    return kinds + (["inf"] if np.isinf(v).any() else [])


def _plain_log(axis) -> None:
    """Tick labels of a log axis as plain numbers (0.05, 20), minor ticks labelled at 2, 3, 4, 5 × 10^k."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:e}"[0] in "2345" else ""))


def _x_axis(ax, view: RunView) -> None:
    if view.log_x:
        ax.set_xscale("log")
    ax.set_xlabel(view.x_label if len(view.x_label) < 45 else view.x_label.replace(" (", "\n("))
    ax.grid(alpha=0.3)


def _draw(ax, view: RunView, metric: str, kind: str, st: pd.DataFrame) -> None:
    """One panel: the finite mean and its band, or the fraction infinite, one line per point."""
    v = view.df[metric].to_numpy(dtype=float, na_value=np.nan)
    finite = v[np.isfinite(v)]
    log_y = kind == "finite" and decade(finite)
    floor = finite[finite > 0].min() if log_y else -np.inf
    for p in view.present:
        s = st.loc[p]
        s = s[s["x"] > 0] if view.log_x else s
        c = colour(view, p)
        if kind == "finite":
            half = Z95 * s["se"]
            ax.plot(s["x"], s["mean"], color=c, lw=1.5, label=view.labels[p])
            ax.fill_between(s["x"], np.maximum(s["mean"] - half, floor), s["mean"] + half, color=c, alpha=0.18, lw=0)
        else:
            ax.plot(s["x"], s["inf"], color=c, lw=1.5, label=view.labels[p])
    if kind == "finite":
        if log_y:
            ax.set_yscale("log")
            _plain_log(ax.yaxis)
        unit = " (nats)" if metric in NATS else ""
        ax.set_ylabel(metric + unit + (", finite values" if np.isinf(v).any() else ""))
    else:
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel(f"{metric}: fraction infinite")
    _x_axis(ax, view)


def _replicates(view: RunView) -> int:
    return int(view.df.groupby("_point")["cell"].nunique().max())


def _legend(ax, view: RunView) -> None:
    ax.legend(fontsize=7, ncol=2 if len(view.present) > 6 else 1)


def plot_metric(view: RunView, metric: str, out: str | Path, title: str = "") -> Path | None:
    """One metric against the view's x axis: the finite part, and beside it the
    fraction infinite where some values are. None (nothing written) for a
    metric with no values at all."""
    kinds = panels_of(view, metric)
    if not kinds:
        return None
    fig, axes = _figure(1, len(kinds), 8 if len(kinds) == 1 else 6, 4.4, dpi=110, bottom=0.75 if view.log_x else 0.6)
    st = stats(view, metric)
    for ax, kind in zip(axes.flat, kinds):
        _draw(ax, view, metric, kind, st)
    _legend(axes.flat[0], view)
    fig.suptitle(title or f"{metric}: mean and 95 % band over {_replicates(view)} replicates", fontsize=11)
    return _save(fig, out)


def plot_panels(view: RunView, out: str | Path, title: str = "") -> Path:
    """Every recorded metric, a panel each (two where some values are infinite), a shared legend."""
    jobs = [(m, k) for m in view.metrics for k in panels_of(view, m)]
    cols = 3
    rows = max(1, -(-len(jobs) // cols))
    n_rows = -(-len(view.present) // 4)  # of the legend
    fig, axes = _figure(rows, cols, 5, 3.4, top=0.85, bottom=0.75 + 0.22 * n_rows)
    done: dict[str, pd.DataFrame] = {}
    for ax, (metric, kind) in zip(axes.flat, jobs):
        st = done.setdefault(metric, stats(view, metric))
        _draw(ax, view, metric, kind, st)
        ax.set_title(metric if kind == "finite" else f"{metric}: fraction infinite", fontsize=10)
    for ax in list(axes.flat)[len(jobs) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=8)
    fig.suptitle(title or f"mean and 95 % band over {_replicates(view)} replicates")
    return _save(fig, out)


def plot_survival(view: RunView, kms: dict[int, KaplanMeier], criterion: str, out: str | Path) -> Path:
    """Kaplan–Meier curves (fraction of cells not yet collapsed) against generation, one step line per
    point; a tick where cells are censored (never collapsed by their last generation)."""
    fig, axes = _figure(1, 1, 8, 4.4, dpi=110)
    ax = axes[0, 0]
    for p, km in kms.items():
        x, y = km.steps()
        c = colour(view, p)
        ax.plot(x, y, drawstyle="steps-post", color=c, lw=1.5, label=view.labels[p])
        censored = np.unique(km.censored)
        if len(censored):
            ax.plot(censored, [km.at(t) for t in censored], "|", color=c, ms=9, mew=1.2)
    ax.axhline(0.5, color="0.5", lw=0.8, ls=":")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("generation")
    ax.set_ylabel("fraction not yet collapsed")
    ax.grid(alpha=0.3)
    _legend(ax, view)
    ax.set_title(
        f"survival (Kaplan–Meier, {_replicates(view)} replicates per point): {criterion}\n| = censored", fontsize=10
    )
    return _save(fig, out)


def numeric_keys(view: RunView) -> list[str]:
    """Swept keys with numeric (not boolean) values and at least two of them."""
    keys = []
    for k in view.sweep_keys:
        col = view.df[k]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col) and col.nunique() > 1:
            keys.append(k)
    return keys


def plot_time_to_collapse(
    view: RunView, kms: dict[int, KaplanMeier], key: str, criterion: str, out: str | Path
) -> Path:
    """KM median time to collapse against the swept key `key`, one line per
    combination of the other swept keys; a vertical bar from ci_low to ci_high
    (where ci_high is undefined: dashed, up to the last generation). A point
    whose median was not reached is drawn as an open triangle at its last
    generation (the median lies beyond). Log-log axes when the key's values
    span a decade or more (the y axis stays linear if some time is 0). Lines
    are set slightly apart along x, so equal times do not hide each other."""
    fig, axes = _figure(1, 1, 7, 4.4, dpi=110, top=0.4)
    ax = axes[0, 0]
    others = [k for k in view.sweep_keys if k != key]
    rows = []
    for p, km in kms.items():
        values = view.values(p)
        rows.append({"p": p, "x": float(values[key]), "other": tuple(values[k] for k in others), "km": km})
    xs = [r["x"] for r in rows]
    log = decade(xs)
    groups = list(pd.DataFrame(rows).groupby("other", sort=False))
    ys = []
    for i, (other, group) in enumerate(groups):
        group = group.sort_values("x")
        shift = 0.04 * (i - (len(groups) - 1) / 2)  # side by side, so equal times do not hide each other
        span = (max(xs) - min(xs)) or 1.0
        group["x"] = group["x"] * (1 + shift) if log else group["x"] + shift * span / 4
        c = f"C{i % 10}"
        label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(others, other)) or "median"
        y = [km.median if km.median is not None else km.end for km in group["km"]]
        ax.plot(group["x"], y, color=c, lw=1, alpha=0.6)
        for x, km, yy in zip(group["x"], group["km"], y):
            reached = km.median is not None
            ax.plot(x, yy, "o" if reached else "^", color=c, mfc=c if reached else "none", ms=7)
            lo = km.ci_low if km.ci_low is not None else yy
            if km.ci_high is not None:
                ax.vlines(x, lo, km.ci_high, color=c, lw=1.5)
            elif reached:
                ax.vlines(x, lo, km.end, color=c, lw=1.2, linestyles="dashed")
            ys += [lo, km.ci_high if km.ci_high is not None else km.end, yy]
        ax.plot([], [], "o", color=c, label=label)
    ax.plot([], [], "^", color="0.3", mfc="none", label="median not reached (drawn at the last generation)")
    if log:
        ax.set_xscale("log")
        if min(ys) > 0:
            ax.set_yscale("log")
            _plain_log(ax.yaxis)
    ax.set_xlabel(key)
    ax.set_ylabel("generations to collapse (KM median, 95 % CI)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ax.set_title(f"time to collapse: {criterion}", fontsize=10)
    return _save(fig, out)
