"""Transformers through the engine: learning, collapse, cell independence
across chunks, memory chunking, non-finite losses, checkpoints of
`init: continue`."""

from __future__ import annotations

import json
import os
import signal

import jax
import numpy as np
import pandas as pd
import pytest

from collapse_sim import checkpoint, cli, keys, load_metrics, loop, results
from collapse_sim import plan as planmod
from collapse_sim.families import transformer as ftransformer
from collapse_sim.sources import build_source, entropy_rate
from tests.helpers import load, run_rows

# One shape for the default suite's runs, so they share their compiled
# programs (engine.programs): a group's spec and its batch of cells decide
# what is compiled, and runs of these shapes compile once per process.
TINY = [
    "source.kind=markov",
    "source.vocab_size=6",
    "source.order=1",
    "source.seed=2",
    "real.sequences=64",
    "real.seq_len=8",
    "real.heldout=40",
    "generate.sequences=24",
    "model.kind=transformer",
    "model.d_model=16",
    "model.layers=1",
    "model.heads=2",
    "model.mlp_ratio=2",
    "model.steps=30",
    "model.batch_size=8",
    "model.warmup=5",
    "corpus.train_sequences=20",
    "corpus.real_fraction=0.25",
]
NEURAL_METRICS = [
    "heldout_nll",
    "kl_true",
    "tv_true",
    "sq_true",
    "entropy",
    "train_loss",
    "distinct_2",
    "unique_seq",
    "real_fraction",
]


@pytest.mark.slow  # a statistical check of learning, at a size that takes a minute
def test_generation_0_learns_an_order_1_markov_source():
    """Trained at generation 0 on R, the engine's held-out NLL (every held-out
    position, the first one included) is within 5 % of the source's exact
    entropy rate, in every replicate; and the truth metrics are small."""
    cfg = load(
        [
            "source.kind=markov",
            "source.vocab_size=8",
            "source.order=1",
            "source.concentration=0.5",
            "source.seed=3",
            "real.sequences=4000",
            "real.seq_len=32",
            "real.heldout=1000",
            "generate.sequences=8",
            "model.kind=transformer",
            "model.d_model=32",
            "model.layers=2",
            "model.heads=2",
            "model.steps=600",
            "model.batch_size=64",
            "model.learning_rate=3e-3",
            "model.warmup=50",
            "generations=0",
            "replicates=2",
        ]
    )
    df = run_rows(cfg)
    H = entropy_rate(build_source(cfg.source, 32, "test"))
    nll = df["heldout_nll"].to_numpy()
    assert len(nll) == 2 and (np.abs(nll - H) < 0.05 * H).all(), (nll, H)
    assert (df["loss_nonfinite"] == 0).all()
    assert (df["kl_true"] > 0).all() and (df["kl_true"] < 0.05 * H).all() and (df["tv_true"] < 0.2).all()
    assert "support" not in df  # an n-gram metric, not a neural one


@pytest.mark.slow  # statistical: collapse shows over generations, not a contract
def test_collapse_is_visible_under_replace_with_small_k():
    """replace with k = 6 sequences of 8 tokens (48 tokens to learn from):
    held-out NLL at the last generation exceeds generation 0's in every replicate."""
    cfg = load(
        TINY + ["generate.sequences=6", "corpus.policy=replace", "generations=4", "replicates=4", "model.steps=60"]
    )
    df = run_rows(cfg)
    first = df[df.generation == 0].set_index("cell")["heldout_nll"]
    last = df[df.generation == 4].set_index("cell")["heldout_nll"]
    assert (last > first).all(), pd.DataFrame({"g0": first, "g4": last})
    assert (df[df.generation > 0]["real_fraction"] == 0).all()


SWEEP = TINY + ["corpus.policy=mix", "replicates=3", "generations=2", "sweep={model.learning_rate: [0.003, 1.0e+30]}"]


@pytest.fixture(scope="module")
def sweep_rows():
    return run_rows(load(SWEEP))


def test_a_diverging_cell_is_flagged_and_the_sweep_goes_on(sweep_rows):
    """learning_rate 1e30 makes the loss non-finite: those cells carry
    loss_nonfinite = 1 (and NaN model metrics), every other cell trains
    normally, and every cell has every generation's row."""
    df = sweep_rows
    assert len(df) == 6 * 3
    bad = df["model.learning_rate"] > 1
    assert (df.loc[bad, "loss_nonfinite"] == 1).all()
    assert df.loc[bad, "heldout_nll"].isna().all()
    good = df.loc[~bad]
    assert (good["loss_nonfinite"] == 0).all()
    assert np.isfinite(good[NEURAL_METRICS].to_numpy()).all()
    # a diverged model's sample stays a valid corpus (uniform tokens), so its
    # sample metrics are defined
    assert df.loc[bad, "unique_seq"].between(0, 1).all()


def test_cells_do_not_depend_on_their_chunk(sweep_rows):
    """DESIGN §7.1 for neural models: run with other neighbours in its batch
    (the other replicate, or alone among padding copies of itself), a mix
    cell's metrics equal the sweep's within 1e-5 relative. (Another batch
    size: test_a_sweep_larger_than_the_memory_budget_runs_in_chunks.)"""
    trains = lambda c: c.point.config.model.learning_rate < 1
    for keep in (trains, lambda c: trains(c) and c.replicate == 1):
        rows = run_rows(load(SWEEP), keep=keep)
        ref = sweep_rows[sweep_rows.cell.isin(rows.cell.unique())].reset_index(drop=True)
        assert rows["loss_nonfinite"].eq(0).all()
        assert len(rows) == len(ref) > 0
        for col in NEURAL_METRICS + ["loss_nonfinite"]:
            np.testing.assert_allclose(rows[col].to_numpy(), ref[col].to_numpy(), rtol=1e-5, atol=1e-7, err_msg=col)


def test_a_sweep_larger_than_the_memory_budget_runs_in_chunks(monkeypatch, sweep_rows):
    """With a budget that holds two cells per device, the plan splits the
    group into chunks (no out-of-memory), and the results are the same."""
    cfg = load(SWEEP)  # 6 cells in one group: one batch without a budget
    full = sweep_rows
    spec = planmod.make_plan(cfg, "t", jax.local_devices()).groups[0].spec
    monkeypatch.setattr(planmod, "memory_budget", lambda device=None: 2 * planmod.cell_bytes(spec) + 1)
    plan = planmod.make_plan(cfg, "t", jax.local_devices())
    nd = len(jax.local_devices())
    assert plan.groups[0].chunk_size == 2 * nd < 6
    assert len(loop.initial_chunks(plan, nd)) == -(-6 // (2 * nd)) >= 2
    small = run_rows(cfg)
    for col in NEURAL_METRICS:
        np.testing.assert_allclose(small[col].to_numpy(), full[col].to_numpy(), rtol=1e-5, err_msg=col)


@pytest.mark.slow  # compiles a model 4x the default suite's; the planner's use of the estimate is tested above
def test_memory_estimate_covers_what_xla_allocates():
    """The planner's bytes per cell are at least what the compiled step of a
    chunk needs per cell (XLA's own memory analysis: arguments, outputs and
    temporaries), for a few shapes."""
    from collapse_sim.engine import GroupRunner, make_world

    for extra in (
        [
            "model.d_model=32",
            "model.batch_size=32",
            "model.layers=2",
            "generate.sequences=200",
            "corpus.policy=accumulate",
            "generations=6",
        ],
    ):
        cfg = load(TINY + extra + ["replicates=4"])
        plan = planmod.make_plan(cfg, "t", jax.local_devices())
        group = plan.groups[0]
        runner = GroupRunner(group.spec, make_world(group.spec, group.source, group.heldout))
        params = runner.put(keys.cell_params(group.cells, group.source.digest, group.spec.family.traced))
        state, _ = runner.init(params)
        stats = runner.programs.step.jitted.lower(runner.world, state, np.int32(1), params).compile().memory_analysis()
        used = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
        assert used / len(group.cells) <= planmod.cell_bytes(group.spec), (
            extra,
            used / len(group.cells),
            planmod.cell_parts(group.spec),
        )


def test_bfloat16_is_refused_on_cpu():
    cfg = load(TINY + ["model.dtype=bfloat16", "generations=1", "replicates=2"])
    with pytest.raises(Exception, match="model.dtype.*only CPU devices"):
        planmod.make_plan(cfg, "t.yaml", jax.local_devices())


@pytest.mark.slow  # the GPU path's code on CPU: two more compiled models
def test_bfloat16_code_path_runs(monkeypatch):
    """bfloat16 compute is refused on CPU devices (exit 2 naming model.dtype);
    let through, the GPU path's code runs end to end here: the models learn
    (held-out NLL well below an untrained model's ln V) as float32's do, and
    the metrics are finite. (model.dtype is part of a cell's identity, so the
    two runs draw different random streams: compared by their means.)"""
    cfg = load(TINY + ["model.dtype=bfloat16", "generations=1", "replicates=2"])
    monkeypatch.setattr(ftransformer, "CPU_DTYPES", ("float32", "bfloat16"))
    bf = run_rows(cfg)
    f32 = run_rows(load(TINY + ["generations=1", "replicates=2"]))
    assert np.isfinite(bf[NEURAL_METRICS].to_numpy()).all() and (bf["loss_nonfinite"] == 0).all()
    g0 = lambda df: df[df.generation == 0]["heldout_nll"].to_numpy()
    assert (g0(bf) < np.log(6) - 0.15).all() and (g0(f32) < np.log(6) - 0.15).all(), (g0(bf), g0(f32))
    assert abs(g0(bf).mean() - g0(f32).mean()) < 0.1 * g0(f32).mean()


CONTINUE = """\
name: tc
replicates: 2
generations: 5
source: {kind: markov, vocab_size: 6, order: 1, seed: 2}
real: {sequences: 64, seq_len: 8, heldout: 40}
model: {kind: transformer, d_model: 16, layers: 1, heads: 2, mlp_ratio: 2, steps: 30, batch_size: 8, warmup: 5,
        init: continue}
generate: {sequences: 24}
corpus: {policy: replace, train_sequences: 20, real_fraction: 0.25}
checkpoint: {every: 2, keep: 2, seconds: 0}
sweep: {model.learning_rate: [0.003, 1.0e+30]}
"""


def test_init_continue_resumes_from_its_checkpoint(tmp_path, monkeypatch, capsys):
    """init: continue carries each cell's parameters in the checkpoint: a run
    stopped by SIGTERM and resumed gives the uninterrupted metrics, with no
    duplicate rows. The CLI names each diverged cell once, and counts them."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONTINUE)
    ref = tmp_path / "ref"
    assert cli.main(["run", str(cfg), "--out", str(ref), "--quiet"]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "non-finite training loss at generation 0" in line]
    assert len(warned) == 2 and all("model.learning_rate=1e+30" in line for line in warned), err
    assert "2 of 4 cells had a non-finite training loss" in err
    out = tmp_path / "run"
    calls = {"n": 0}
    add = results.MetricsWriter.add

    def counting(writer, cols):
        add(writer, cols)
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(results.MetricsWriter, "add", counting)
    assert cli.main(["run", str(cfg), "--out", str(out), "--quiet"]) == 128 + signal.SIGTERM
    monkeypatch.undo()
    step, meta, groups, bad = checkpoint.newest_usable(out)
    assert not bad and meta["generation_max"] < 5
    assert "model.blocks_0.attn.qkv.kernel" in groups[0] and "model.head.bias" in groups[0]  # saved by name
    assert cli.main(["resume", str(out), "--quiet"]) == 0
    a, b = load_metrics(out), load_metrics(ref)
    assert not a.duplicated(["cell", "generation"]).any() and len(a) == len(b) == 4 * 6
    for col in NEURAL_METRICS:
        np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), rtol=1e-5, err_msg=col)
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    capsys.readouterr()
    assert cli.main(["inspect", str(out), "--verify"]) == 0
    shown = capsys.readouterr().out
    assert "transformer d_model 16, layers 1, heads 2, steps 30, batch 8" in shown and "init continue" in shown


def test_continue_starts_from_the_previous_model():
    """With a learning rate of 1e-30 training changes nothing, so under
    init: continue generation 1's model is generation 0's (the same held-out
    NLL, exactly), while under init: fresh it is a new random model."""
    common = TINY + ["generations=1", "model.learning_rate=1e-30", "model.weight_decay=0"]
    # the shapes of CONTINUE (4 cells) and of SWEEP (6): their compiled programs are reused
    for init, policy, cells, same in (("continue", "replace", 4, True), ("fresh", "mix", 6, False)):
        df = run_rows(load(common + [f"model.init={init}", f"corpus.policy={policy}", f"replicates={cells}"]))
        g0 = df[df.generation == 0]["heldout_nll"].to_numpy()
        g1 = df[df.generation == 1]["heldout_nll"].to_numpy()
        assert np.array_equal(g0, g1) == same, (init, g0, g1)


def test_a_filtered_transformer_cell_alone_equals_it_in_the_sweep():
    """The self filter through the transformer family (candidates scored by
    the model that drew them, in passes of held-out size): the better half of
    2k candidates is admitted, k of them, and a cell alone gives the sweep's
    metrics."""
    cfg = load(
        TINY
        + [
            "corpus.policy=accumulate_subsample",
            "generate.filter.kind=self",
            "generate.filter.oversample=2",
            "generate.filter.keep_fraction=0.5",
            "replicates=2",
            "generations=2",
            "sweep={generate.sequences: [12, 24]}",
        ]
    )
    df = run_rows(cfg)
    assert (df["admitted"] == df["generate.sequences"]).all() and np.allclose(df["accept_rate"], 0.5)
    assert np.isfinite(df[NEURAL_METRICS].to_numpy()).all()
    cell = int(df[df["generate.sequences"] == 12].cell.iloc[-1])
    alone = run_rows(cfg, keep=lambda c: c.index == cell)
    want = df[df.cell == cell].reset_index(drop=True)
    for col in NEURAL_METRICS + ["accept_rate", "admitted"]:
        np.testing.assert_allclose(alone[col].to_numpy(), want[col].to_numpy(), rtol=1e-5, atol=1e-7, err_msg=col)
