"""`collapse-sim report`: figures, a summary table and time to collapse of a run, finished or not.

``report(run_dir, collapse_on=[...], x="generation", out=None)`` reads
RUN_DIR/config.yaml and the metric parts, and writes (to RUN_DIR/report/ by
default, removed and re-created each time; nothing else is touched):

- ``<metric>.png`` for every recorded metric, against generation or the
  synthetic-to-real ratio (`plots`);
- ``summary.csv``: a row per sweep point: the swept keys, ``replicates``,
  ``<metric>@0`` and ``<metric>@end`` (medians over the point's cells at
  generation 0 and at the point's last generation present), and per
  criterion ``collapsed``, ``collapse_fraction``, ``collapse_mean``,
  ``collapse_median_km``, ``collapse_ci_low``, ``collapse_ci_high``
  (suffixed ``_1``, ``_2``, ... when there are several criteria);
- with criteria: ``collapse.parquet`` (a row per cell: ``cell``,
  ``replicate``, the swept keys, ``collapse_generation`` or ``censored_at``),
  ``survival*.png`` (Kaplan–Meier curves) and ``time_to_collapse_<key>*.png``;
- ``report.md``, which shows all of it.

`write_run_files` writes the end-of-run figures and summary.csv of
`collapse-sim run` through the same code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from collapse_sim import criteria as critmod
from collapse_sim import plots
from collapse_sim.rundir import CONFIG_FILE, RUN_FILE, UserError
from collapse_sim.runview import RunView, make_view
from collapse_sim.survival import KaplanMeier, kaplan_meier

REPORT_DIR = "report"
MARKER = ".collapse-sim-report"  # marks a folder this module made, so a re-run may remove it
PER_CRITERION = (
    "collapsed",
    "collapse_fraction",
    "collapse_mean",
    "collapse_median_km",
    "collapse_ci_low",
    "collapse_ci_high",
)
PER_CELL = ("collapse_generation", "censored_at")


def suffixed(names, i: int, n: int) -> list[str]:
    """Column names for criterion i (0-based) of n: plain for one, `_1`, `_2`, ... for several."""
    return [f"{c}_{i + 1}" if n > 1 else c for c in names]


def cell_times(view: RunView, criterion: critmod.Criterion) -> pd.DataFrame:
    """Per cell (index): `_point`, `collapse_generation` (NaN if censored), `last_generation`."""
    times = critmod.collapse_times(view.df, criterion)
    times["_point"] = view.df.groupby("cell")["_point"].first()
    return times


def survival_by_point(times: pd.DataFrame) -> dict[int, KaplanMeier]:
    """The Kaplan–Meier estimate of each point's cells (time: collapse or censoring generation)."""
    out = {}
    for p, sub in times.groupby("_point", sort=True):
        collapsed = sub["collapse_generation"].notna().to_numpy()
        t = np.where(collapsed, sub["collapse_generation"], sub["last_generation"])
        out[int(p)] = kaplan_meier(t, collapsed)
    return out


def summary_table(view: RunView, results=()) -> pd.DataFrame:
    """The summary: a row per sweep point with rows, in sweep order (see the module's docstring).

    results: (times, kms) per criterion, from `cell_times` and `survival_by_point`."""
    df = view.df
    end = df.groupby("_point")["generation"].transform("max")
    with np.errstate(invalid="ignore"):  # the median of an even number of infinite values is infinite
        at0 = df[df["generation"] == 0].groupby("_point")[view.metrics].median()
        at_end = df[df["generation"] == end].groupby("_point")[view.metrics].median()
    cells = df.groupby("_point")["cell"].nunique()
    rows = []
    for p in view.present:
        row = dict(view.values(p))
        row["replicates"] = int(cells[p])
        for m in view.metrics:
            row[f"{m}@0"] = at0[m].get(p, np.nan)
            row[f"{m}@end"] = at_end[m].get(p, np.nan)
        for i, (times, kms) in enumerate(results):
            t = times.loc[times["_point"] == p, "collapse_generation"]
            km = kms[p]
            values = (
                int(t.notna().sum()),
                float(t.notna().mean()),
                float(t.mean()) if t.notna().any() else np.nan,
                *(np.nan if v is None else v for v in (km.median, km.ci_low, km.ci_high)),
            )
            row.update(zip(suffixed(PER_CRITERION, i, len(results)), values))
        rows.append(row)
    return pd.DataFrame(rows)


def collapse_table(view: RunView, results) -> pd.DataFrame:
    """A row per cell: cell, replicate, the swept keys, and per criterion
    collapse_generation (null when censored) and censored_at (null when collapsed)."""
    first = view.df.groupby("cell", sort=True).first()
    table = pd.DataFrame({"cell": first.index.to_numpy(), "replicate": first["replicate"].to_numpy()})
    for k in view.sweep_keys:
        table[k] = first[k].to_numpy()
    for i, (times, _) in enumerate(results):
        t = times.reindex(first.index)
        collapsed = t["collapse_generation"].notna().to_numpy()
        gen, cens = suffixed(PER_CELL, i, len(results))
        table[gen] = pd.array(np.where(collapsed, t["collapse_generation"], np.nan), dtype="Float64").astype("Int64")
        table[cens] = pd.array(np.where(collapsed, np.nan, t["last_generation"]), dtype="Float64").astype("Int64")
    return table


def report_dir(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Where the report of run_dir goes: out, or RUN_DIR/report/."""
    return Path(out) if out is not None else Path(run_dir) / REPORT_DIR


def _out_dir(run_dir: Path, out: str | Path | None) -> Path:
    """The report folder, emptied: new, empty, or one this module made before; never the run or above it."""
    out = report_dir(run_dir, out)
    where = "--out" if out != run_dir / REPORT_DIR else str(out)
    if out.resolve() == run_dir.resolve() or out.resolve() in run_dir.resolve().parents:
        raise UserError(f"{out}: {where} would hold the run directory; choose a folder of its own")
    if out.exists():
        if not out.is_dir():
            raise UserError(f"{out}: {where} exists and is not a directory")
        if any(out.iterdir()) and not (out / MARKER).is_file():
            raise UserError(f"{out}: {where} holds files that no report wrote; choose another --out")
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True)
        (out / MARKER).write_text("made by collapse-sim report; removed and re-made by the next report\n")
    except OSError as e:
        raise UserError(f"{out}: cannot write the report ({e.strerror or e})") from None
    return out


def load_run(run_dir: str | Path):
    """(config, metric rows, run.json or {}) of a run directory, finished or not; UserError if it has none."""
    from pyarrow import ArrowException

    from collapse_sim import config as cfgmod
    from collapse_sim.results import load_metrics, part_files

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserError(f"{run_dir}: not a collapse-sim run directory (no {CONFIG_FILE})")
    cfg = cfgmod.load(run_dir / CONFIG_FILE)
    if not part_files(run_dir):
        raise UserError(f"{run_dir}: no metrics yet (no metrics/part-*.parquet); nothing to report")
    try:
        info = json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        info = {}
    try:
        df = load_metrics(run_dir)
    except (OSError, ArrowException) as e:
        raise UserError(f"{run_dir}: a metrics part is unreadable ({e.__class__.__name__}: {e})") from None
    return cfg, df, info if isinstance(info, dict) else {}


def report(run_dir: str | Path, collapse_on=(), x: str = "generation", out: str | Path | None = None) -> pd.DataFrame:
    """Write the report of a run (see the module's docstring) and return its summary table.

    collapse_on: criteria such as ``"heldout_nll>=1.2*gen0"`` (a string or a
    list; `criteria.parse`); x: "generation" or "ratio"; out: the report
    folder (default RUN_DIR/report/). Raises ConfigError for a bad criterion
    or x, UserError for a missing run directory, one without metrics, or an
    `out` that holds other files.
    """
    run_dir = Path(run_dir)
    exprs = [collapse_on] if isinstance(collapse_on, str) else list(collapse_on or ())
    cfg, df, info = load_run(run_dir)
    view = make_view(df, cfg, x)
    crits = [critmod.parse(e, view.metrics) for e in exprs]
    results = []
    for c in crits:
        times = cell_times(view, c)
        results.append((times, survival_by_point(times)))
    table = summary_table(view, results)
    out = _out_dir(run_dir, out)
    try:
        _write(out, run_dir, cfg, info, view, crits, results, table)
    except OSError as e:
        raise UserError(f"{out}: cannot write the report ({e.strerror or e})") from None
    return table


def _write(out: Path, run_dir: Path, cfg, info: dict, view: RunView, crits, results, table) -> None:
    """The report's files (the folder exists and is empty)."""
    table.to_csv(out / "summary.csv", index=False)
    figures = []
    for m in view.metrics:
        path = plots.plot_metric(view, m, out / f"{m}.png", title=f"{cfg.name}: {m}")
        figures.append((m, path))
    if results:
        collapse_table(view, results).to_parquet(out / "collapse.parquet", index=False)
    for i, (c, (_, kms)) in enumerate(zip(crits, results)):
        tag = f"_{i + 1}" if len(crits) > 1 else ""
        figures.append((f"survival: {c.expr}", plots.plot_survival(view, kms, c.expr, out / f"survival{tag}.png")))
        for key in plots.numeric_keys(view):
            path = out / f"time_to_collapse_{key}{tag}.png"
            figures.append(
                (f"time to collapse against {key}: {c.expr}", plots.plot_time_to_collapse(view, kms, key, c.expr, path))
            )
    write_markdown(out / "report.md", run_dir, cfg, info, view, crits, table, [(t, p) for t, p in figures if p])


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def markdown_table(table: pd.DataFrame) -> str:
    """A pandas table as a GitHub-flavoured markdown table (empty cells where undefined)."""
    head = "| " + " | ".join(str(c) for c in table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _progress(view: RunView, cfg, info: dict) -> str:
    last = view.df.groupby("cell")["generation"].max()
    lo, hi = int(last.min()), int(last.max())
    at = f"generation {hi}" if lo == hi else f"generations {lo} to {hi} (cells differ)"
    cells = view.df["cell"].nunique()
    status = info.get("status", "unknown")
    rows = len(view.df)
    return f"status **{status}**; {cells:,} cells, {rows:,} metric rows, reported through {at} of {cfg.generations}"


def write_markdown(path: Path, run_dir: Path, cfg, info: dict, view: RunView, crits, table, figures) -> None:
    """report.md: the run, the criteria in words, the summary table, the figures by relative path."""
    lines = [f"# Report: {cfg.name}", "", f"Run directory `{run_dir}`: {_progress(view, cfg, info)}."]
    if view.sweep_keys:
        sweep = "; ".join(
            [f"`{k}` in {list(v)}" for k, v in cfg.sweep]
            + ([f"{len(cfg.points)} explicit points"] if cfg.points else [])
        )
        lines.append(f"Sweep: {sweep}; {len(view.present)} points.")
    lines += [
        "",
        "Figures: mean over replicates and a 95 % band (mean ± 1.96 standard errors), one line per sweep "
        f"point, against {view.x_label}. Infinite values are left out of the mean and counted in a panel of "
        "their own (fraction of replicates infinite).",
        "",
        "## Collapse criteria",
        "",
    ]
    if not crits:
        lines.append("None given (`--collapse-on`): no time to collapse.")
    for i, c in enumerate(crits):
        tag = f" (columns suffixed `_{i + 1}`)" if len(crits) > 1 else ""
        lines.append(
            f"{i + 1}. `{c.expr}`{tag}: a cell has collapsed at the first generation at which {c.words()}. "
            "A cell that never does is censored at its last generation."
        )
    if crits:
        lines += [
            "",
            "`collapsed`: cells that met the criterion; `collapse_fraction`: their share; `collapse_mean`: their "
            "mean generation of collapse; `collapse_median_km`: the Kaplan–Meier median (censored cells included), "
            "with its 95 % confidence interval `collapse_ci_low`..`collapse_ci_high` (Greenwood, log-log); empty "
            "where not reached. Per cell: `collapse.parquet`.",
        ]
    keys = list(table.columns[: list(table.columns).index("replicates") + 1])
    medians = keys + [c for c in table.columns if "@" in c]
    lines += [
        "",
        "## Summary (`summary.csv`)",
        "",
        "Medians over each point's cells at generation 0 (`@0`) and at its last generation present (`@end`).",
        "",
        markdown_table(table[medians]),
        "",
    ]
    if crits:
        lines += ["Time to collapse, in generations.", "", markdown_table(table.drop(columns=medians[len(keys) :])), ""]
    lines += ["## Figures", ""]
    for title, fig in figures:
        lines += [f"### {title}", "", f"![{title}]({fig.name})", ""]
    path.write_text("\n".join(lines))


def write_run_files(out: Path, cfg, df: pd.DataFrame) -> tuple[pd.DataFrame, list[Path]]:
    """The end of `collapse-sim run`: heldout_nll.png, metrics.png and summary.csv in the run directory,
    by the report's code (generation on x, no criteria). Returns the summary and the figures written."""
    view = make_view(df, cfg)
    metric = "heldout_nll" if "heldout_nll" in view.metrics else view.metrics[0]
    figures = [plots.plot_metric(view, metric, out / "heldout_nll.png", title=f"{cfg.name}: {metric}")]
    figures.append(
        plots.plot_panels(
            view, out / "metrics.png", title=f"{cfg.name}: every metric, mean and 95 % band over replicates"
        )
    )
    table = summary_table(view)
    table.to_csv(out / "summary.csv", index=False)
    return table, [f for f in figures if f is not None]


def printed(table: pd.DataFrame) -> str:
    """The summary as printed (at the end of a run, and by the report): the swept keys (the columns before
    `replicates`), replicates, heldout_nll and tv_true at generation 0 and the end, the collapse columns."""
    keys = list(table.columns[: list(table.columns).index("replicates") + 1])
    keep = ("heldout_nll", "tv_true", *PER_CRITERION)
    cols = keys + [c for c in table.columns[len(keys) :] if c.split("@")[0].rstrip("_0123456789") in keep]
    return table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}")
