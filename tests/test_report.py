"""`collapse-sim report` and `collapse_sim.report`: bad criteria from the command line, the summary and
per-cell tables against an independent computation, the figures, interrupted runs, and what the report
leaves alone. The parser and Kaplan–Meier on hand-made data: tests/test_criteria.py."""

from __future__ import annotations

import math
import operator
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import collapse_sim
from collapse_sim import cli, criteria, plots, reporting, results, runview
from collapse_sim import config as cfgmod
from tests.helpers import BASE, SignalAfter, tree_state, write

# 2 k x 2 smoothings x 4 replicates, generations 0..6: smoothing 0 (maximum likelihood) gives infinite
# held-out NLL and KL in some cells; k spans a decade (5 to 60), smoothing does not (0 to 0.01)
SWEPT = (
    BASE.replace("generations: 9", "generations: 6").replace("replicates: 3", "replicates: 4")
    + "sweep: {generate.sequences: [5, 60], model.smoothing: [0.0, 0.01]}\n"
)
KEYS = ["generate.sequences", "model.smoothing"]
MIXED = "tv_true>=2*gen0 and support<=20"  # some cells collapse, some never do
OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run stopped by SIGTERM after its third batch of rows, and a copy of it resumed to the end."""
    d = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        SignalAfter(mp, 3)
        with pytest.raises(collapse_sim.Interrupted):
            collapse_sim.run(write(d, SWEPT), out=d / "interrupted")
    shutil.copytree(d / "interrupted", d / "finished")
    collapse_sim.resume(d / "finished")
    return {"interrupted": d / "interrupted", "finished": d / "finished"}


@pytest.fixture
def no_figures(monkeypatch):
    """For the tests of the tables: the report skips its figures (the other tests draw them)."""
    for name in ("plot_metric", "plot_survival", "plot_time_to_collapse"):
        monkeypatch.setattr(plots, name, lambda *a, **k: None)


def copy_run(runs, name, tmp_path):
    dest = tmp_path / name
    shutil.copytree(runs[name], dest)
    return dest


def in_process(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def without_report(run_dir) -> dict:
    return {k: v for k, v in tree_state(run_dir).items() if not k.startswith("report/")}


# ---------------------------------------------------------------- bad criteria


@pytest.mark.parametrize(
    "expr,says",
    [
        ("tv_true>>1", "cannot read the value '>1'"),
        ("tv_true=>1", "expected METRIC OP VALUE"),
        ("tv_true==1", "expected METRIC OP VALUE"),
        (">=0.1", "expected METRIC OP VALUE"),
        ("tv_true>=", "cannot read the value"),
        ("tv_true>=abc", "cannot read the value 'abc'"),
        ("support<=1.2*gen1", "cannot read the value"),
        ("tv_true>=0.1 or support<=3", "cannot read the value"),
        ("tv_true>=0.1 and", "cannot read the value"),
        ("", "empty"),
        ("nll>=1", "nll: not a metric collapse-sim records"),
        ("train_loss>=1", "train_loss: this run did not record it"),  # a transformer's metric; this run is n-grams
    ],
)
def test_a_bad_criterion_exits_2_with_one_line(runs, tmp_path, capsys, expr, says):
    before = tree_state(runs["finished"])
    code, _, err = in_process(capsys, "report", runs["finished"], "--collapse-on", expr, "--out", tmp_path / "r")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"--collapse-on {expr!r}" in lines[0] and says in lines[0], err
    assert not (tmp_path / "r").exists() and tree_state(runs["finished"]) == before


# ---------------------------------------------------------------- tables


def independent_times(df: pd.DataFrame, conditions) -> dict:
    """cell -> (first generation at which every condition holds or None, last generation), by a plain loop."""
    out = {}
    for cell, rows in df.groupby("cell"):
        rows = rows.sort_values("generation")
        gen0 = rows[rows["generation"] == 0].iloc[0]
        hit = None
        for _, row in rows.iterrows():
            if all(OPS[op](row[m], v * gen0[m] if rel else v) for m, op, v, rel in conditions):
                hit = int(row["generation"])
                break
        out[cell] = (hit, int(rows["generation"].max()))
    return out


def test_collapse_fraction_and_mean_against_an_independent_loop(runs, tmp_path, no_figures):
    exprs = [MIXED, "heldout_nll>=inf"]
    summary = collapse_sim.report(runs["finished"], collapse_on=exprs, out=tmp_path / "r")
    df = results.load_metrics(runs["finished"])
    per_cell = pd.read_parquet(tmp_path / "r" / "collapse.parquet").set_index("cell")
    conds = [[("tv_true", ">=", 2.0, True), ("support", "<=", 20.0, False)], [("heldout_nll", ">=", math.inf, False)]]
    seen = set()
    for i, cond in enumerate(conds, start=1):
        times = independent_times(df, cond)
        for cell, (hit, last) in times.items():
            got = per_cell.loc[cell, [f"collapse_generation_{i}", f"censored_at_{i}"]]
            assert (None if pd.isna(got.iloc[0]) else got.iloc[0], None if pd.isna(got.iloc[1]) else got.iloc[1]) == (
                (hit, None) if hit is not None else (None, last)
            ), (i, cell)
        for (k, s), cells in df.groupby(KEYS)["cell"].unique().items():
            hits = [times[c][0] for c in cells if times[c][0] is not None]
            row = summary[(summary[KEYS[0]] == k) & (summary[KEYS[1]] == s)].iloc[0]
            assert row[f"collapsed_{i}"] == len(hits) and row[f"collapse_fraction_{i}"] == len(hits) / len(cells)
            if hits:
                assert row[f"collapse_mean_{i}"] == pytest.approx(np.mean(hits))
            else:
                assert np.isnan(row[f"collapse_mean_{i}"]) and np.isnan(row[f"collapse_median_km_{i}"])
            seen.add((i, 0 < len(hits) < len(cells), len(hits) == 0))
    assert (1, True, False) in seen and (1, False, True) in seen, seen  # MIXED: some points partly, some never


def expected_columns(metrics, criteria_n: int) -> list[str]:
    cols = KEYS + ["replicates"] + [f"{m}@{w}" for m in metrics for w in ("0", "end")]
    names = list(reporting.PER_CRITERION)
    for i in range(criteria_n):
        cols += [f"{c}_{i + 1}" if criteria_n > 1 else c for c in names]
    return cols


def test_summary_columns_exactly(runs, tmp_path, no_figures):
    df = results.load_metrics(runs["finished"])
    recorded = [c for c in df.columns if c not in ("cell", "replicate", "generation", *KEYS)]
    assert {"heldout_nll", "kl_true", "tv_true", "support", "real_fraction"} <= set(recorded) <= set(criteria.METRICS)
    metrics = sorted(recorded, key=criteria.METRICS.index)  # every recorded metric, in the documented order
    for n, exprs in enumerate(([], ["support<=20"], ["support<=20", "heldout_nll>=1.2*gen0"])):
        collapse_sim.report(runs["finished"], collapse_on=exprs, out=tmp_path / str(n))
        table = pd.read_csv(tmp_path / str(n) / "summary.csv")
        assert list(table.columns) == expected_columns(metrics, n), n
        assert table["replicates"].tolist() == [4, 4, 4, 4]
        assert (tmp_path / str(n) / "collapse.parquet").exists() == (n > 0)
    per_cell = pd.read_parquet(tmp_path / "2" / "collapse.parquet")
    assert list(per_cell.columns) == ["cell", "replicate", *KEYS] + [
        f"{c}_{i}" for i in (1, 2) for c in ("collapse_generation", "censored_at")
    ]
    assert len(per_cell) == 16 and per_cell["collapse_generation_1"].notna().ne(per_cell["censored_at_1"].notna()).all()
    end_of_run = pd.read_csv(runs["finished"] / "summary.csv")  # `collapse-sim run` writes it by the same code
    assert list(end_of_run.columns) == expected_columns(metrics, 0)
    pd.testing.assert_frame_equal(end_of_run, pd.read_csv(tmp_path / "0" / "summary.csv"))


# ---------------------------------------------------------------- runs, interrupted or not


def test_report_of_an_interrupted_run_changes_nothing_else(runs, capsys):
    run_dir = runs["interrupted"]
    before = without_report(run_dir)
    df = results.load_metrics(run_dir)
    last = int(df["generation"].max())
    assert last < 6 and not (run_dir / "summary.csv").exists()  # stopped early: no end-of-run files
    code, out, err = in_process(capsys, "report", run_dir, "--collapse-on", MIXED)
    assert code == 0, err
    assert f"report: {run_dir / 'report' / 'report.md'}" in out
    table = pd.read_csv(run_dir / "report" / "summary.csv")
    at_end = df[df["generation"] == last].groupby(KEYS)["tv_true"].median().to_numpy()
    np.testing.assert_allclose(table["tv_true@end"], at_end)  # medians at the last generation present
    per_cell = pd.read_parquet(run_dir / "report" / "collapse.parquet")
    assert set(per_cell["censored_at"].dropna()) <= {last}
    text = (run_dir / "report" / "report.md").read_text()
    assert "status **interrupted**" in text and f"through generation {last} of 6" in text
    for name in ("heldout_nll", "tv_true", "support", "survival", "time_to_collapse_generate.sequences"):
        assert f"]({name}.png)" in text and (run_dir / "report" / f"{name}.png").stat().st_size > 5_000
    (run_dir / "report" / "stale.png").write_text("from an earlier report")
    assert in_process(capsys, "report", run_dir)[0] == 0  # again: the folder is made afresh
    assert not (run_dir / "report" / "stale.png").exists() and not (run_dir / "report" / "collapse.parquet").exists()
    assert without_report(run_dir) == before


def test_cells_at_different_generations(runs, tmp_path, no_figures):
    """Cells 0-7 cut after generation 3 (a run stopped between chunks): each cell is censored at its own
    last generation, and `@end` is each point's last generation present."""
    run_dir = copy_run(runs, "finished", tmp_path)
    df = results.load_metrics(run_dir)
    cut = df[(df["cell"] >= 8) | (df["generation"] <= 3)]
    for part in results.part_files(run_dir):
        part.unlink()
    pq.write_table(pa.Table.from_pandas(cut, preserve_index=False), run_dir / "metrics" / "part-00000.parquet")
    summary = collapse_sim.report(run_dir, "tv_true>=100")  # never: every cell censored
    per_cell = pd.read_parquet(run_dir / "report" / "collapse.parquet").set_index("cell")
    assert per_cell["collapse_generation"].isna().all()
    assert per_cell["censored_at"].to_dict() == cut.groupby("cell")["generation"].max().to_dict()
    last = cut.groupby(KEYS)["generation"].max()
    for (k, s), g in last.items():
        rows = cut[(cut[KEYS[0]] == k) & (cut[KEYS[1]] == s) & (cut["generation"] == g)]
        got = summary[(summary[KEYS[0]] == k) & (summary[KEYS[1]] == s)]["entropy@end"].iloc[0]
        assert got == pytest.approx(rows["entropy"].median())
    assert "generations 3 to 6 (cells differ)" in (run_dir / "report" / "report.md").read_text()


def test_ratio_axis_and_the_python_api(runs, tmp_path):
    assert callable(collapse_sim.report) and collapse_sim.report is reporting.report  # not the module
    summary = collapse_sim.report(runs["finished"], ["heldout_nll>=inf"], x="ratio", out=tmp_path / "r")
    assert isinstance(summary, pd.DataFrame) and len(summary) == 4
    names = {p.name for p in (tmp_path / "r").iterdir()}
    assert {"time_to_collapse_generate.sequences.png", "time_to_collapse_model.smoothing.png"} <= names
    assert {"survival.png", "kl_true.png", "report.md", "summary.csv", "collapse.parquet"} <= names
    cfg = cfgmod.load(runs["finished"] / "config.yaml")
    view = runview.make_view(results.load_metrics(runs["finished"]), cfg, "ratio")
    k = view.df["generate.sequences"].to_numpy()
    np.testing.assert_allclose(view.df["_x"], view.df["generation"] * k / 40)  # g x k / N0: no filter drops any
    assert view.log_x and "ratio 0 not shown" in view.x_label  # 5/40 .. 6*60/40 spans a decade


def synthetic_view(values, admitted=None, x="generation"):
    """Two sweep points (k = 10, 20) x 2 cells x generations 0..2 of one metric, N0 = 40."""
    cfg = cfgmod.resolve(cfgmod.Config(), ["real.sequences=40", "sweep.generate.sequences=[10, 20]"])
    df = pd.DataFrame(
        {
            "cell": np.repeat([0, 1, 2, 3], 3),
            "replicate": np.repeat([0, 1, 0, 1], 3),
            "generation": np.tile([0, 1, 2], 4),
            "generate.sequences": np.repeat([10, 10, 20, 20], 3),
            "heldout_nll": np.asarray(values, float),
        }
    )
    if admitted is not None:
        df["admitted"] = admitted
    return runview.make_view(df, cfg, x)


def test_ratio_sums_the_admitted_column():
    """Ratio at generation g: `admitted` summed over the cell's generations before g, over N0 = 40."""
    view = synthetic_view(np.ones(12), admitted=[4, 8, 12, 0, 0, 40, 10, 10, 10, 20, 20, 20], x="ratio")
    np.testing.assert_allclose(view.df["_x"], np.array([0, 4, 12, 0, 0, 0, 0, 10, 20, 0, 20, 40]) / 40)


def test_band_statistics_and_infinite_values():
    """Point 0 (cells 0, 1): generation 0 values 1 and 3 -> mean 2, SE = std / sqrt 2 = 1; generation 1: 2 and
    inf -> mean of the finite 2, inf fraction 1/2; generation 2: NaN and 5 -> NaN left out of both: mean 5,
    inf fraction 0. Point 1 (cells 2, 3): infinite throughout."""
    inf, nan = np.inf, np.nan
    view = synthetic_view([1, 2, nan, 3, inf, 5, inf, inf, inf, inf, inf, inf])
    st = plots.stats(view, "heldout_nll")
    assert st.loc[(0, 0), ["mean", "se", "n", "inf"]].tolist() == [2.0, 1.0, 2, 0.0]
    assert st.loc[(0, 1), ["mean", "n", "inf"]].tolist() == [2.0, 1, 0.5]
    assert st.loc[(0, 2), ["mean", "n", "inf"]].tolist() == [5.0, 1, 0.0]
    assert st.loc[1, "inf"].tolist() == [1.0, 1.0, 1.0] and st.loc[1, "mean"].isna().all()
    assert plots.panels_of(view, "heldout_nll") == ["finite", "inf"]
    assert plots.panels_of(synthetic_view(np.full(12, inf)), "heldout_nll") == ["inf"]  # never an empty panel
    assert plots.panels_of(synthetic_view(np.full(12, nan)), "heldout_nll") == []
    assert runview.decade([0.5, 5]) and not runview.decade([0.5, 4.9]) and not runview.decade([0, 1, 100])


def test_missing_run_no_metrics_and_a_foreign_out_folder(runs, tmp_path, capsys):
    def one_line(*args, says):
        code, _, err = in_process(capsys, "report", *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, err

    one_line(tmp_path / "nowhere", says="no such run directory")
    (tmp_path / "empty").mkdir()
    shutil.copy(runs["finished"] / "config.yaml", tmp_path / "empty" / "config.yaml")
    one_line(tmp_path / "empty", says="no metrics yet")
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["config.yaml"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    before = tree_state(runs["finished"])
    one_line(runs["finished"], "--out", foreign, says="holds files that no report wrote")
    one_line(runs["finished"], "--out", runs["finished"], says="would hold the run directory")
    assert (foreign / "notes.txt").read_text() == "keep me" and tree_state(runs["finished"]) == before


def test_a_run_without_a_sweep(tmp_path):
    """One sweep point (no swept keys): one summary row, figures labelled "all cells", no time-to-collapse
    figure (nothing swept), a survival curve. The run directory is made by hand: config.yaml and one part."""
    run_dir = tmp_path / "plain"
    (run_dir / "metrics").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfgmod.dump(cfgmod.Config(generations=2, replicates=2)))
    df = pd.DataFrame(
        {
            "cell": np.repeat([0, 1], 3),
            "replicate": np.repeat([0, 1], 3),
            "generation": np.tile([0, 1, 2], 2),
            "heldout_nll": [1.0, 1.1, 1.5, 1.0, 1.3, np.inf],
            "support": np.array([9, 8, 7, 9, 9, 9], np.int64),
        }
    )
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), run_dir / "metrics" / "part-00000.parquet")
    summary = collapse_sim.report(run_dir, ["heldout_nll>=1.2*gen0"])
    assert list(summary.columns) == ["replicates", "heldout_nll@0", "heldout_nll@end", "support@0", "support@end"] + [
        *reporting.PER_CRITERION
    ]
    row = summary.iloc[0]
    assert row["heldout_nll@end"] == np.inf and row["support@end"] == 8.0  # medians of (1.5, inf) and (7, 9)
    assert (row["collapsed"], row["collapse_mean"], row["collapse_median_km"]) == (2, 1.5, 1.0)  # cells at 2 and 1
    names = {p.name for p in (run_dir / "report").iterdir()}
    assert {"heldout_nll.png", "support.png", "survival.png", "report.md"} <= names
    assert not any(n.startswith("time_to_collapse") for n in names)
    assert "status **unknown**" in (run_dir / "report" / "report.md").read_text()  # no run.json: still reported
