"""collapse_sim/status.py: `collapse-sim inspect` reports what a run holds and changes nothing."""

from __future__ import annotations

from collapse_sim import load_metrics
from tests.helpers import TWO, SignalAfter, run_cli, tree_state, write


def test_inspect_reports_what_a_run_holds(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    SignalAfter(monkeypatch, 9)
    assert run_cli("run", write(tmp_path, TWO), "--out", out, "--quiet") == 143
    monkeypatch.undo()
    capsys.readouterr()
    before = tree_state(out)
    assert run_cli("inspect", out, "--verify") == 0
    text = capsys.readouterr().out
    n_rows = len(load_metrics(out))
    for expected in (
        "status       interrupted",
        "cells        6",
        "of 9 (checkpoint",
        "every 3 generations",
        f"{n_rows:,} rows",
        "verified",
        f"collapse-sim resume {out}",
        "policy replace",
    ):
        assert expected in text, (expected, text)
    assert "KiB" in text
    assert tree_state(out) == before  # inspect reads only
