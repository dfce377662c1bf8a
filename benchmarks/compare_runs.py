"""Prove that a change leaves every result unchanged: run every config in
configs/ and a matrix of small configs (both families, every policy, every
sampling filter, init: continue, every source kind) with two versions of the
code, then compare their metrics row by row.

    # results of an older commit, from a worktree of it
    git worktree add /tmp/base <commit>
    python benchmarks/compare_runs.py run /tmp/cmp-base --code /tmp/base
    # results of this checkout
    python benchmarks/compare_runs.py run /tmp/cmp-new
    python benchmarks/compare_runs.py compare /tmp/cmp-base /tmp/cmp-new

`run` starts `collapse-sim run --quiet` once per config in a subprocess whose
PYTHONPATH puts a copy of --code's collapse_sim (default: this checkout's)
first, with its kernels/ as collapse_sim.kernels, so the older code is
imported, kernels included, not the installed one. `compare` prints one line per config: bit
identical, or the largest relative difference per metric (with the rows that
differ), and exits 1 if any config differs beyond --rtol (default 0: bit for
bit) or is missing. NaN equals NaN and +inf equals +inf; nothing else is
loosened.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent

# Small configs that reach every code path the configs/ files do not: both
# families under every policy, the sampling filters, init: continue, every
# source kind, a sweep over model.kind. Each runs in seconds.
NGRAM = [
    "source.kind=markov",
    "source.vocab_size=6",
    "source.order=2",
    "source.seed=3",
    "model.kind=ngram",
    "model.order=3",
    "real.sequences=60",
    "real.seq_len=9",
    "real.heldout=40",
    "generate.sequences=50",
    "corpus.train_sequences=50",
    "corpus.real_fraction=0.3",
    "generations=6",
    "replicates=3",
    "checkpoint.every=3",
]
NEURAL = [
    "source.kind=markov",
    "source.vocab_size=5",
    "source.order=1",
    "source.seed=1",
    "model.kind=transformer",
    "model.d_model=16",
    "model.layers=1",
    "model.heads=2",
    "model.mlp_ratio=2",
    "model.steps=12",
    "model.batch_size=8",
    "model.warmup=3",
    "real.sequences=40",
    "real.seq_len=6",
    "real.heldout=24",
    "generate.sequences=30",
    "corpus.train_sequences=30",
    "corpus.real_fraction=0.2",
    "generations=3",
    "replicates=2",
    "checkpoint.every=2",
]
POLICIES = "sweep.corpus.policy=[replace, accumulate, accumulate_subsample, mix, fresh]"
MATRIX = {
    "ngram_policies": NGRAM + [POLICIES, "sweep.model.smoothing=[0.0, 0.05]"],
    "ngram_filters": NGRAM
    + ["sweep.generate.temperature=[0.0, 0.7]", "sweep.generate.top_k=[0, 3]", "sweep.generate.top_p=[1.0, 0.8]"],
    "ngram_text": [
        "source.kind=text",
        "model.order=3",
        "model.smoothing=0.01",
        "real.sequences=80",
        "real.seq_len=12",
        "real.heldout=30",
        "generate.sequences=60",
        "corpus.train_sequences=60",
        "generations=5",
        "replicates=2",
        POLICIES,
    ],
    "ngram_categorical": [
        "source.kind=categorical",
        "source.vocab_size=7",
        "source.zipf=1.1",
        "model.order=1",
        "real.sequences=20",
        "real.seq_len=1",
        "real.heldout=50",
        "generate.sequences=20",
        "generations=8",
        "replicates=40",
        "sweep.model.smoothing=[0.0, 0.5]",
    ],
    "neural_policies": NEURAL + [POLICIES],
    "neural_continue": NEURAL
    + [
        "model.init=continue",
        "model.tie=true",
        "model.schedule=constant",
        "sweep.corpus.policy=[replace, accumulate_subsample]",
        "sweep.generate.temperature=[1.0, 0.8]",
    ],
    "neural_text": NEURAL
    + [
        "source.kind=text",
        "real.seq_len=8",
        "generate.top_k=4",
        "generate.top_p=0.9",
        "sweep.model.learning_rate=[0.003, 0.01]",
    ],
    "families": NGRAM
    + [f for f in NEURAL if not f.startswith(("model.kind", "source."))]
    + ["model.order=2", "sweep.model.kind=[ngram, transformer]", "sweep.corpus.policy=[replace, accumulate]"],
}


def importable(code: Path, where: Path) -> Path:
    """A directory whose collapse_sim is `code`'s, with `code`'s kernels/ as
    collapse_sim.kernels, as an install lays them out. PYTHONPATH=code alone
    would find code's collapse_sim but take collapse_sim.kernels from this
    checkout's editable install."""
    site = where / ".compare-code"
    shutil.rmtree(site, ignore_errors=True)
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(code / "collapse_sim", site / "collapse_sim", ignore=skip)
    if (code / "kernels").is_dir():
        shutil.copytree(code / "kernels", site / "collapse_sim" / "kernels", ignore=skip)
    return site


def _run_one(name: str, config: Path, sets: list[str], out: Path, code: Path, site: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.setdefault("JAX_COMPILATION_CACHE_DIR", "")  # compile afresh: nothing shared between the two versions
    prog = "import sys; from collapse_sim.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", prog, "run", str(config), "--quiet", "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=code)
    seconds = time.perf_counter() - t0
    status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"
    print(f"{name:<24} {seconds:7.1f} s  {status}", flush=True)
    return {"config": name, "seconds": round(seconds, 2), "returncode": proc.returncode}


def run(out: Path, code: Path, only: list[str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(p.stem, p, []) for p in sorted((ROOT / "configs").glob("*.yaml"))]
    defaults = ROOT / "configs" / "quickstart.yaml"  # the matrix overrides what it needs of it
    jobs += [(name, defaults, ["sweep={}", "name=" + name] + sets) for name, sets in MATRIX.items()]
    site = importable(code, out)
    records = []
    for name, config, sets in jobs:
        if only and name not in only:
            continue
        records.append(_run_one(name, config, sets, out / name, code, site))
    (out / "runs.json").write_text(json.dumps({"code": str(code), "runs": records}, indent=2) + "\n")
    return int(any(r["returncode"] for r in records))


def _metrics(run_dir: Path) -> pd.DataFrame:
    sys.path.insert(0, str(ROOT))
    from collapse_sim.results import load_metrics

    return load_metrics(run_dir)


def _differences(a: pd.DataFrame, b: pd.DataFrame) -> tuple[list[str], float]:
    """Lines describing how b differs from a, and the largest relative difference."""
    missing = [c for c in a.columns if c not in b.columns]
    if missing:
        return [f"columns missing: {missing}"], float("inf")
    if len(a) != len(b):
        return [f"{len(a)} rows vs {len(b)}"], float("inf")
    lines, worst = [], 0.0
    added = [c for c in b.columns if c not in a.columns]
    if added:  # a new metric is not a changed one: every column the older run has must match
        lines.append(f"(new columns, not compared: {', '.join(added)})")
    for col in a.columns:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        if x.dtype.kind != "f" or y.dtype.kind != "f":
            same = (
                np.array([u == v or (u is None and v is None) for u, v in zip(x, y)]) if x.dtype == object else x == y
            )
            if x.dtype != y.dtype or not same.all():
                lines.append(f"{col}: {int((~same).sum()) if x.dtype == y.dtype else 'dtype'} rows differ")
                worst = float("inf")
            continue
        both_nan = np.isnan(x) & np.isnan(y)
        equal = (x == y) | both_nan
        if equal.all():
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.where(equal, 0.0, np.abs(x - y) / np.maximum(np.abs(x), np.abs(y)))
        rel = np.where(np.isnan(rel), np.inf, rel)
        worst = max(worst, float(rel.max()))
        lines.append(
            f"{col}: {int((~equal).sum())} of {len(x)} rows differ, largest relative difference {rel.max():.3g}"
        )
    return lines, worst


def compare(base: Path, new: Path, rtol: float) -> int:
    names = sorted(
        {p.name for p in base.iterdir() if (p / "run.json").is_file()}
        | {p.name for p in new.iterdir() if (p / "run.json").is_file()}
    )
    failed = 0
    for name in names:
        if not (base / name / "metrics").is_dir() or not (new / name / "metrics").is_dir():
            print(f"{name:<24} MISSING in {'base' if not (base / name / 'metrics').is_dir() else 'new'}")
            failed += 1
            continue
        a, b = _metrics(base / name), _metrics(new / name)
        lines, worst = _differences(a, b)
        notes = [line for line in lines if line.startswith("(")]
        if len(notes) == len(lines):
            print(f"{name:<24} bit-identical ({len(a):,} rows x {len(a.columns)} columns) {' '.join(notes)}")
            continue
        verdict = "within rtol" if worst <= rtol else "DIFFERS"
        print(f"{name:<24} {verdict} (largest relative difference {worst:.3g})")
        for line in lines:
            print(f"    {line}")
        failed += worst > rtol
    print(f"{len(names) - failed} of {len(names)} configs {'bit-identical' if rtol == 0 else f'within rtol {rtol:g}'}")
    return int(failed > 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="run every config with one version of the code")
    r.add_argument("out", type=Path)
    r.add_argument(
        "--code", type=Path, default=ROOT, help="checkout whose collapse_sim is imported (default: this one)"
    )
    r.add_argument("--only", nargs="*", default=[], help="run only these configs (by name)")
    c = sub.add_parser("compare", help="compare two `run` outputs row by row")
    c.add_argument("base", type=Path)
    c.add_argument("new", type=Path)
    c.add_argument("--rtol", type=float, default=0.0, help="largest relative difference accepted (default 0)")
    args = parser.parse_args()
    if args.verb == "run":
        return run(args.out.resolve(), args.code.resolve(), args.only)
    return compare(args.base, args.new, args.rtol)


if __name__ == "__main__":
    sys.exit(main())
