"""The `collapse-sim` console script: a quickstart-sized run and every bad input."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import collapse_sim
from collapse_sim import cli as climod
from tests.helpers import SMALL

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=None):
    exe = shutil.which("collapse-sim", path=str(Path(sys.executable).parent)) or shutil.which("collapse-sim")
    cmd = [exe] if exe else [sys.executable, "-m", "collapse_sim.cli"]
    env = {**os.environ, "XLA_FLAGS": ""}  # the CLI picks its own device count
    return subprocess.run(cmd + list(args), capture_output=True, text=True, cwd=cwd or ROOT, env=env, timeout=600)


def in_process(capsys, *args) -> tuple[int, str, str]:
    """The CLI's exit code, stdout and stderr, run in this process (the same
    main() the console script calls; no interpreter start-up to pay)."""
    capsys.readouterr()
    code = climod.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "qs"
    sets = [x for s in SMALL for x in ("--set", s)]  # the library tests' config: its compiled programs are cached
    r = cli("run", "configs/quickstart.yaml", *sets, "--out", str(out))
    return r, out


@pytest.mark.e2e
def test_quickstart_sized_run(smoke):
    r, out = smoke
    assert r.returncode == 0, r.stderr
    assert f"run directory: {out}" in r.stdout
    df = collapse_sim.load_metrics(out)
    assert len(df) == 2 * 2 * 2 * 5
    assert set(df.generation) == {0, 1, 2, 3, 4}
    assert {
        "cell",
        "replicate",
        "corpus.policy",
        "generate.sequences",
        "heldout_nll",
        "entropy",
        "support",
        "distinct_2",
        "unique_seq",
        "real_fraction",
    } <= set(df.columns)
    assert "kl_true" not in df.columns  # text has no known truth: absent, not zero
    assert (out / "heldout_nll.png").stat().st_size > 10_000 and (out / "metrics.png").stat().st_size > 10_000
    assert (out / "config.yaml").exists() and (out / "summary.csv").exists()


@pytest.mark.e2e
def test_refuses_to_overwrite_a_run(smoke):
    _, out = smoke
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    r = cli("run", "configs/quickstart.yaml", "--out", str(out))
    assert r.returncode == 2 and "already holds a run" in r.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


@pytest.mark.parametrize(
    "sets,key",
    [
        (["modle.order=2"], "modle.order"),
        (["replicates=lots"], "replicates"),
        (["real.sequences=-3"], "real.sequences"),
        (["corpus.real_fraction=1.5"], "corpus.real_fraction"),
        (["generate.top_p=0"], "generate.top_p"),
        (["source.kind=categorical", "source.probs=[0.2, 0.2]"], "source.probs"),
        (
            ["sweep={}", "corpus.policy=mix", "corpus.train_sequences=500", "generate.sequences=10"],
            "generate.sequences",
        ),
        (["corpus.train_sequences=20000"], "corpus.train_sequences"),  # accumulate_subsample: m > N0 + k
        (["sweep.model.orderr=[1, 2]"], "sweep.model.orderr"),
        (["source.kind=categorical", "source.vocab_size=64", "model.order=5"], "model.order"),
        (["source.kind=markov", "source.order=6", "source.vocab_size=40"], "source.order"),
    ],
)
def test_bad_input_exit_2_one_line(tmp_path, capsys, monkeypatch, sets, key):
    monkeypatch.chdir(ROOT)
    args = ["run", "configs/quickstart.yaml", "--out", str(tmp_path / "o")]
    for s in sets:
        args += ["--set", s]
    code, _, err = in_process(capsys, *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], err
    assert "configs/quickstart.yaml" in lines[0] or "--set" in lines[0], err  # where the value came from
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.e2e
def test_bad_input_from_the_console_script(tmp_path):
    """The same through the installed `collapse-sim` command: exit 2, one line, nothing written."""
    r = cli("run", "configs/quickstart.yaml", "--set", "modle.order=2", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "modle.order" in r.stderr, r.stderr
    assert "did you mean model.order" in r.stderr and not (tmp_path / "o").exists()


@pytest.mark.parametrize("content", [None, b"", b"caf\xe9 au lait " * 20])
def test_bad_text_file_exit_2(tmp_path, capsys, content):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    code, _, err = in_process(
        capsys, "run", ROOT / "configs/quickstart.yaml", "--set", f"source.path={path}", "--out", tmp_path / "o"
    )
    assert code == 2 and "source.path" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.e2e
def test_help():
    r = cli("--help")
    assert r.returncode == 0 and "run" in r.stdout
    r = cli("run", "--help")
    assert r.returncode == 0 and "--set" in r.stdout and "--quiet" in r.stdout


def test_sweep_over_a_list_valued_key(tmp_path, capsys):
    code, _, err = in_process(
        capsys,
        "run",
        ROOT / "configs/quickstart.yaml",
        "--quiet",
        "--set",
        "source.kind=categorical",
        "--set",
        "replicates=2",
        "--set",
        "generations=2",
        "--set",
        "sweep={source.probs: [[0.5, 0.5], [0.2, 0.8]]}",
        "--out",
        tmp_path / "o",
    )
    assert code == 0, err
    df = collapse_sim.load_metrics(tmp_path / "o")
    assert set(df["source.probs"]) == {"[0.5, 0.5]", "[0.2, 0.8]"}
    assert len((tmp_path / "o" / "summary.csv").read_text().splitlines()) == 3
