"""The engine end to end: ground truth, invariants of DESIGN §7, bookkeeping."""

import jax
import numpy as np
import pandas as pd
import pytest

from collapse_sim import criteria
from collapse_sim import plan as planmod
from tests.helpers import load, run_rows

# the n-gram family's metrics (no filter here, so accept_rate and admitted are constant)
METRICS = [m for m in criteria.METRICS if m not in ("train_loss", "loss_nonfinite", "accept_rate", "admitted")]


def wright_fisher(n, replicates, generations, probs):
    return load(
        [
            "source.kind=categorical",
            f"source.probs={probs.tolist()}",
            "model.order=1",
            "model.smoothing=0",
            "corpus.policy=replace",
            f"real.sequences={n}",
            f"generate.sequences={n}",
            "real.seq_len=1",
            "real.heldout=10",
            f"replicates={replicates}",
            f"generations={generations}",
        ]
    )


def test_wright_fisher_expected_squared_distance():
    """DESIGN §8: E[sq_true at g] = (1 - sum P^2)(1 - (1 - 1/n)^(g+1)), within 4 SE."""
    P = np.array([0.4, 0.3, 0.2, 0.1])
    n, reps, G = 12, 2000, 30
    df = run_rows(wright_fisher(n, reps, G, P))
    assert len(df) == reps * (G + 1)
    for g in (0, 1, 3, 8, 15, 30):
        x = df.loc[df.generation == g, "sq_true"].to_numpy()
        expected = (1 - (P**2).sum()) * (1 - (1 - 1 / n) ** (g + 1))
        se = x.std(ddof=1) / np.sqrt(len(x))
        assert abs(x.mean() - expected) < 4 * se, (g, x.mean(), expected, se)


def test_wright_fisher_check_detects_a_wrong_population_size():
    """The same check against n + 3 fails: the test has power to see a biased engine."""
    P = np.array([0.4, 0.3, 0.2, 0.1])
    n, reps = 12, 2000
    df = run_rows(wright_fisher(n, reps, 8, P))
    x = df.loc[df.generation == 8, "sq_true"].to_numpy()
    wrong = (1 - (P**2).sum()) * (1 - (1 - 1 / (n + 3)) ** 9)
    assert abs(x.mean() - wrong) > 4 * x.std(ddof=1) / np.sqrt(len(x))


SWEEP = [
    "source.kind=markov",
    "source.vocab_size=5",
    "source.order=1",
    "model.order=2",
    "model.smoothing=0.01",
    "real.sequences=40",
    "real.seq_len=8",
    "real.heldout=30",
    "generate.sequences=30",
    "corpus.train_sequences=20",
    "corpus.real_fraction=0.25",
    "replicates=3",
    "generations=4",
    "sweep={corpus.policy: [replace, accumulate_subsample, mix], generate.sequences: [20, 50], "
    "generate.temperature: [1.0, 0.8]}",
]


def assert_same(a: pd.DataFrame, b: pd.DataFrame):
    assert len(a) == len(b) and len(a) > 0
    for col in METRICS + ["generation"]:
        np.testing.assert_array_equal(a[col].to_numpy(), b[col].to_numpy(), err_msg=col)


@pytest.fixture(scope="module")
def sweep_rows():
    return run_rows(load(SWEEP))


@pytest.mark.parametrize("policy", ["replace", "accumulate_subsample", "mix"])
def test_cell_alone_equals_cell_in_sweep_bit_for_bit(sweep_rows, policy):
    """DESIGN §7.1: not the other cells, not the group's capacity (k = 20 beside
    k = 50), not the device count."""
    target = sweep_rows[
        (sweep_rows["corpus.policy"] == policy)
        & (sweep_rows["generate.sequences"] == 20)
        & (sweep_rows["generate.temperature"] == 0.8)
        & (sweep_rows.replicate == 2)
    ]
    cell = int(target.cell.iloc[0])
    # on one device for one policy (the device count), on all of them for the others (the
    # batch: 4 cells per compiled batch, as test_chunk_size's, whose programs are reused)
    devices = jax.local_devices()[:1] if policy == "accumulate_subsample" else None
    alone = run_rows(load(SWEEP), keep=lambda c: c.index == cell, devices=devices)
    assert_same(target.reset_index(drop=True), alone)


def test_a_sweep_larger_than_the_memory_budget_runs_in_chunks(sweep_rows, monkeypatch):
    """With a budget that holds two cells per device, the plan splits each
    group into chunks (no out-of-memory), and the results are the same, bit
    for bit: a cell does not depend on its chunk."""
    cfg = load(SWEEP)
    # every group's cells estimated at one size, so every group splits alike
    monkeypatch.setattr(planmod, "cell_parts", lambda spec: {"generate.sequences": 1 << 20})
    monkeypatch.setattr(planmod, "memory_budget", lambda device=None: 2 * (1 << 20) + 1)
    nd = len(jax.local_devices())
    chunked = planmod.make_plan(cfg, "t", jax.local_devices())
    assert {g.chunk_size for g in chunked.groups} == {2 * nd} and len(chunked.groups[0].cells) > 2 * nd
    assert_same(sweep_rows, run_rows(cfg))


def test_set_directly_equals_swept(sweep_rows):
    """A value set with --set gives the same trajectory as the same value from the sweep."""
    direct = run_rows(
        load(SWEEP[:-1] + ["corpus.policy=accumulate_subsample", "generate.sequences=50", "generate.temperature=1.0"])
    )
    swept = sweep_rows[
        (sweep_rows["corpus.policy"] == "accumulate_subsample")
        & (sweep_rows["generate.sequences"] == 50)
        & (sweep_rows["generate.temperature"] == 1.0)
    ].reset_index(drop=True)
    assert_same(swept, direct)


def test_an_explicit_point_equals_the_same_setting_in_the_grid(sweep_rows):
    """A setting named by `sweep.points` (here crossed with a one-value grid)
    runs the trajectory the grid runs for it."""
    points = run_rows(
        load(
            SWEEP[:-1]
            + [
                "sweep={points: [{corpus.policy: mix, generate.sequences: 20}, "
                "{corpus.policy: replace, generate.sequences: 50}], grid: {generate.temperature: [0.8]}}"
            ]
        )
    )
    for policy, k in (("mix", 20), ("replace", 50)):
        swept = sweep_rows[
            (sweep_rows["corpus.policy"] == policy)
            & (sweep_rows["generate.sequences"] == k)
            & (sweep_rows["generate.temperature"] == 0.8)
        ].reset_index(drop=True)
        mine = points[(points["corpus.policy"] == policy)].reset_index(drop=True)
        assert (mine["generate.sequences"] == k).all()
        assert_same(swept, mine)


def test_common_random_numbers_for_the_real_set(sweep_rows):
    """DESIGN §7.2: every sweep point sees the same R for a replicate, so M_0 is the same."""
    g0 = sweep_rows[sweep_rows.generation == 0]
    for _, sub in g0.groupby("replicate"):
        assert sub.heldout_nll.nunique() == 1 and sub.kl_true.nunique() == 1
    assert g0.groupby("replicate").heldout_nll.first().nunique() == 3  # replicates differ


def test_collapse_under_replace_support_only_shrinks():
    """Maximum likelihood + replace: a token lost is lost for good (unigram support never grows)."""
    df = run_rows(
        load(
            [
                "source.kind=categorical",
                "source.vocab_size=20",
                "source.zipf=1.2",
                "model.order=1",
                "real.sequences=15",
                "generate.sequences=15",
                "real.seq_len=1",
                "replicates=50",
                "generations=40",
            ]
        )
    )
    for _, sub in df.groupby("cell"):
        s = sub.support.to_numpy()
        assert (np.diff(s) <= 0).all()
    last = df[df.generation == 40]
    assert last.support.mean() < df[df.generation == 0].support.mean()


def test_sampling_filters_reach_the_engine():
    """top_k = 1 makes generation deterministic: every sample is k copies of one sequence."""
    base = ["source.kind=markov", "source.vocab_size=6", "model.order=2", "real.sequences=50", "real.seq_len=6",
            "generate.sequences=40", "replicates=3", "generations=3"]  # fmt: skip
    df = run_rows(load(base + ["generate.top_k=1"]))
    np.testing.assert_allclose(df.unique_seq, 1 / 40)
    hot = run_rows(load(base + ["generate.top_p=0.999"]))
    assert hot.unique_seq.min() > 0.5


def test_a_group_without_truncation_skips_it_with_the_same_results():
    """A group where no cell uses top-k or top-p compiles its sampling without
    the ranking; its cells run exactly as beside a cell that truncates."""
    base = ["source.kind=markov", "source.vocab_size=40", "model.order=2", "real.sequences=50", "real.seq_len=10",
            "generate.sequences=60", "generate.temperature=0.8", "replicates=2", "generations=3"]  # fmt: skip
    plain = planmod.make_plan(load(base), "t", jax.local_devices())
    mixed_cfg = load(base + ["sweep={generate.top_p: [1.0, 0.9]}"])
    mixed = planmod.make_plan(mixed_cfg, "t", jax.local_devices())
    assert [g.spec.truncates for g in plain.groups] == [False] and [g.spec.truncates for g in mixed.groups] == [True]
    together = run_rows(mixed_cfg)
    alone = run_rows(load(base))
    assert_same(together[together["generate.top_p"] == 1.0].reset_index(drop=True), alone)


@pytest.mark.slow  # statistical, 300 replicates
def test_fresh_real_data_holds_the_model_near_the_truth():
    """fresh with rho = 1 trains every generation on new real data: the models
    change from generation to generation but do not drift (mean kl_true at the
    last generation equals generation 0's within 4 SE), while replace drifts."""
    base = [
        "source.kind=markov",
        "source.vocab_size=5",
        "model.order=2",
        "model.smoothing=0.5",
        "real.sequences=30",
        "real.seq_len=8",
        "generate.sequences=30",
        "corpus.train_sequences=30",
        "corpus.real_fraction=1.0",
        "replicates=300",
        "generations=12",
        "sweep={corpus.policy: [fresh, replace]}",
    ]
    df = run_rows(load(base))
    fresh = df[df["corpus.policy"] == "fresh"]
    first, last = (fresh[fresh.generation == g].kl_true.to_numpy() for g in (0, 12))
    se = np.sqrt(first.var(ddof=1) / len(first) + last.var(ddof=1) / len(last))
    assert abs(last.mean() - first.mean()) < 4 * se
    assert (fresh.groupby("cell").kl_true.nunique() > 5).all()  # new data every generation
    assert (fresh.real_fraction == 1.0).all()
    replace = df[df["corpus.policy"] == "replace"]
    assert replace[replace.generation == 12].kl_true.mean() > last.mean() + 4 * se


@pytest.mark.slow
@pytest.mark.parametrize("n", [5, 40])
def test_wright_fisher_long_horizon(n):
    """20,000 replicates, 120 generations, two population sizes: every 10th generation within 4 SE."""
    P = np.array([0.5, 0.2, 0.2, 0.1])
    df = run_rows(wright_fisher(n, 20_000, 120, P))
    H = 1 - (P**2).sum()
    for g in range(0, 121, 10):
        x = df.loc[df.generation == g, "sq_true"].to_numpy()
        expected = H * (1 - (1 - 1 / n) ** (g + 1))
        se = x.std(ddof=1) / np.sqrt(len(x))
        assert abs(x.mean() - expected) < 4 * se, (g, x.mean(), expected, se)


def test_zero_size_arguments_stay_out_of_the_shard_map():
    """The engine's shard_map passes each device's body zeros of the local
    shape for a zero-size argument (a policy's unused corpus buffer) instead
    of the array: jaxlib 0.11.2 crashes compiling a shard_map over two or
    more devices that uses a zero-size operand. The body sees the shapes and
    values a plain shard_map would give it."""
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    from collapse_sim.engine import _shard_map_nonempty

    devices = jax.local_devices()
    assert len(devices) == 2  # tests/conftest.py
    mesh = Mesh(np.array(devices), ("cells",))
    seen = {}

    def fn(world, state):
        seen["shapes"] = (world["empty"].shape, world["w"].shape, state[0].shape, state[1].shape)
        return state[0] + 1, state[1] * world["w"].sum(), world["empty"].sum() + state[1][:, :1]

    world = {"empty": np.zeros((0, 5), np.float32), "w": np.arange(3, dtype=np.float32)}
    state = (np.zeros((4, 0, 3), np.uint8), np.arange(8, dtype=np.float32).reshape(4, 2))
    out = jax.jit(_shard_map_nonempty(fn, mesh, (P(), P("cells"))))(world, state)
    assert seen["shapes"] == ((0, 5), (3,), (2, 0, 3), (2, 2))
    assert out[0].shape == (4, 0, 3) and out[0].dtype == np.uint8
    np.testing.assert_array_equal(out[1], state[1] * 3.0)
    np.testing.assert_array_equal(out[2], state[1][:, :1])


def _shard_map_operands(jaxpr):
    """Every operand of every shard_map in a jaxpr, nested jaxprs included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "shard_map":
            yield from eqn.invars
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr
                if hasattr(sub, "eqns"):
                    yield from _shard_map_operands(sub)


NGRAM_GROUPS = [
    "source.kind=markov", "source.vocab_size=6", "source.order=1", "model.order=2",
    "real.sequences=40", "real.seq_len=6", "real.heldout=20", "generate.sequences=20",
    "corpus.train_sequences=20", "generations=2", "replicates=1",
]  # fmt: skip
NEURAL_GROUPS = [
    "model.kind=transformer", "model.d_model=16", "model.layers=1", "model.heads=2", "model.mlp_ratio=2",
    "model.steps=2", "model.batch_size=4",
]  # fmt: skip
FILTERS = "sweep.generate.filter.kind=[truth, noisy_truth, self, reference, dedup]"
POLICIES = "sweep.corpus.policy=[replace, accumulate, accumulate_subsample, mix, fresh]"


@pytest.mark.parametrize(
    "overrides",
    [
        NGRAM_GROUPS + [POLICIES],
        NGRAM_GROUPS + [FILTERS, "generate.filter.oversample=2"],
        NGRAM_GROUPS + NEURAL_GROUPS + [POLICIES],
        NGRAM_GROUPS + NEURAL_GROUPS + [FILTERS, "generate.filter.oversample=2", "corpus.policy=accumulate"],
    ],
    ids=["ngram-policies", "ngram-filters", "transformer-policies", "transformer-filters"],
)
def test_no_shard_map_takes_a_zero_size_operand(overrides):
    """No program of any group hands its shard_map a zero-size operand, a
    closed-over constant included (such as the index array of a scatter
    whose slice covers the whole array): jaxlib 0.11.2 crashes compiling
    one. Checked on the traced programs, so under any JAX version."""
    from collapse_sim import keys
    from collapse_sim.engine import GroupRunner, make_world
    from collapse_sim.loop import padded

    devices = jax.local_devices()
    plan = planmod.make_plan(load(overrides), "test.yaml", devices)
    assert len(plan.groups) >= 5
    for group in plan.groups:
        runner = GroupRunner(group.spec, make_world(group.spec, group.source, group.heldout), devices)
        cells = padded(group.cells, group.chunk_size, len(devices))
        params = keys.cell_params(cells, group.source.digest, group.spec.family.traced)
        init, step = runner.programs.init.jitted, runner.programs.step.jitted
        state = jax.eval_shape(init, runner.world, params)[0]
        for name, closed in (
            ("init", jax.make_jaxpr(init)(runner.world, params)),
            ("step", jax.make_jaxpr(step)(runner.world, state, np.int32(1), params)),
        ):
            empty = [v.aval for v in _shard_map_operands(closed.jaxpr) if getattr(v.aval, "size", 1) == 0]
            assert not empty, (group.spec.corpus.policy, group.spec.filter.kind, name, empty)
