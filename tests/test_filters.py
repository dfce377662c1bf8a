"""Quality filters (`generate.filter`): the config keys, which candidates pass
and which are admitted (against numpy), accept_rate and admitted, dedup,
oversample and shortfall, and the invariants (alone = in a sweep, resumed =
uninterrupted)."""

from __future__ import annotations

from math import erf, sqrt

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapse_sim import ConfigError, engine, filters, keys, load_metrics
from collapse_sim import plan as planmod
from collapse_sim.config import trajectory_dict
from tests.helpers import SignalAfter, assert_same_metrics, load, run_cli, run_rows, write

FILTERED = """\
name: filtered
seed: 5
replicates: 2
generations: 5
source: {kind: markov, vocab_size: 5, order: 1, seed: 1}
real: {sequences: 40, seq_len: 6, heldout: 30}
model: {order: 2, smoothing: 0.05}
generate:
  sequences: 20
  filter: {kind: truth, threshold: -1.8, keep_fraction: 0.5, oversample: 3, noise: 0.3, reference_sequences: 50}
corpus: {policy: accumulate_subsample, train_sequences: 30, real_fraction: 0.25}
checkpoint: {every: 2, keep: 2, seconds: 0}
sweep:
  generate.filter.kind: [noisy_truth, self, reference, dedup]   # truth: noisy_truth's path without the noise
  generate.sequences: [12, 20]
"""


@pytest.mark.parametrize(
    "override, key",
    [
        ("generate.filter.kind=best", "generate.filter.kind"),
        ("generate.filter.keep_fraction=0", "generate.filter.keep_fraction"),
        ("generate.filter.oversample=0", "generate.filter.oversample"),
        ("generate.filter.noise=-1", "generate.filter.noise"),
        ("generate.filter.reference_sequences=0", "generate.filter.reference_sequences"),
        ("generate.filter.threshold=high", "generate.filter.threshold"),
        ("generate.filter.treshold=1", "generate.filter.treshold"),
    ],
)
def test_filter_keys_are_checked(override, key):
    with pytest.raises(ConfigError) as e:
        load(["source.kind=markov", override])
    assert e.value.key == key and "\n" not in str(e.value)


def test_truth_filters_are_refused_for_text_from_the_command_line(tmp_path, capsys):
    path = write(tmp_path, "source: {kind: text}\ngenerate: {filter: {kind: noisy_truth}}\n")
    assert run_cli("run", path, "--out", tmp_path / "r", "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "generate.filter.kind" in err and "reference" in err, err
    assert not (tmp_path / "r").exists()


def test_no_filter_keeps_the_trajectory_identity():
    """Configs without a filter keep their random streams: the filter's keys
    are not part of a cell's identity unless a filter is on, and then only
    those its kind reads."""
    plain = load(["source.kind=markov"])
    same = load(["source.kind=markov", "generate.filter.oversample=4", "generate.filter.noise=2"])
    assert (
        trajectory_dict(plain, "d") == trajectory_dict(same, "d")
        and "filter" not in trajectory_dict(plain, "d")["generate"]
    )
    truth = trajectory_dict(load(["source.kind=markov", "generate.filter.kind=truth"]), "d")["generate"]["filter"]
    assert set(truth) == {"kind", "threshold", "keep_fraction", "oversample"}


# ---------------------------------------------------------------- which candidates pass


def _direct(overrides, seq_len=1):
    """A group's spec, world and first cell's traced values, for calling filters.admit."""
    cfg = load(
        [
            "source.kind=categorical",
            "source.vocab_size=8",
            "source.zipf=1.0",
            f"real.seq_len={seq_len}",
            "real.sequences=20",
            "model.order=1",
            "generate.sequences=40",
            "replicates=1",
            "generations=1",
        ]
        + overrides
    )
    group = planmod.make_plan(cfg, "t", jax.local_devices()).groups[0]
    spec = group.spec
    world = engine.make_world(spec, group.source, group.heldout)
    cell = jax.tree.map(lambda a: a[0], keys.cell_params(group.cells, group.source.digest, spec.family.traced))
    probs = group.source.truth(0)[1][0]
    return spec, world, cell, probs


def _admit(spec, world, cell, cand):
    fn = jax.jit(lambda c: filters.admit(spec, world, cell, None, None, jax.random.key(9), c))
    rows, admitted, accept = fn(jnp.asarray(cand, jnp.int32))
    return np.asarray(rows), int(admitted), float(accept)


def test_a_truth_threshold_removes_exactly_the_tokens_below_it(rng):
    """seq_len 1: a token passes iff ln P(token) >= threshold; the first k
    that pass are admitted, in draw order; accept_rate counts every candidate."""
    spec, world, cell, probs = _direct(
        ["generate.filter.kind=truth", "generate.filter.threshold=-2.2", "generate.filter.oversample=2"]
    )
    assert spec.sample_rows == 80
    below = np.log(probs.astype(np.float32)) < -2.2
    assert below.any() and not below.all()
    cand = rng.integers(0, 8, (80, 1))
    rows, admitted, accept = _admit(spec, world, cell, cand)
    ok = ~below[cand[:, 0]]
    want = cand[ok][:40]
    assert admitted == len(want) and accept == pytest.approx(ok.mean(), abs=1e-7)
    np.testing.assert_array_equal(rows[:admitted], want)
    assert not below[rows[:admitted, 0]].any()


def test_keep_fraction_keeps_the_best_ranked_candidates(rng):
    """keep_fraction 0.25 of 3 x 40 candidates: the 30 best by truth score
    (ties by draw order) pass, and the first 30 of them, in draw order, are admitted."""
    spec, world, cell, probs = _direct(
        ["generate.filter.kind=truth", "generate.filter.keep_fraction=0.25", "generate.filter.oversample=3"]
    )
    assert int(cell.keep_count) == 30
    cand = rng.integers(0, 8, (120, 1))
    rows, admitted, accept = _admit(spec, world, cell, cand)
    score = np.log(probs.astype(np.float32))[cand[:, 0]]
    best = sorted(range(120), key=lambda j: (-score[j], j))[:30]
    ok = np.zeros(120, bool)
    ok[best] = True
    assert admitted == 30 and accept == pytest.approx(0.25)
    np.testing.assert_array_equal(rows[:30], cand[ok])


def test_noisy_truth_without_noise_is_truth(rng):
    cand = rng.integers(0, 8, (40, 3))
    got = [
        _admit(*_direct([f"generate.filter.kind={kind}", "generate.filter.threshold=-2.0"], seq_len=3)[:3], cand)
        for kind in ("truth", "noisy_truth")
    ]
    np.testing.assert_array_equal(got[0][0], got[1][0])
    assert got[0][1:] == got[1][1:] and got[0][1] < 40


def test_noisy_truth_passes_a_candidate_with_the_probability_its_noise_gives(rng):
    """seq_len 1, noise sd s: token v passes with probability
    Phi((ln P(v) - threshold) / s), independently per candidate; the accept
    rate of 4000 candidates is within 4 standard errors of the mean of those
    probabilities (a filter that ignored the noise would accept the fixed
    share of tokens above the threshold, many standard errors away)."""
    t, sd = -2.0, 0.5
    spec, world, cell, probs = _direct(
        [
            "generate.filter.kind=noisy_truth",
            f"generate.filter.threshold={t}",
            f"generate.filter.noise={sd}",
            "generate.sequences=2000",
            "generate.filter.oversample=2",
        ]
    )
    cand = rng.integers(0, 8, (4000, 1))
    _, _, accept = _admit(spec, world, cell, cand)
    logp = np.log(probs.astype(np.float32))[cand[:, 0]]
    q = np.array([0.5 * (1 + erf((lp - t) / (sd * sqrt(2)))) for lp in logp])
    se = np.sqrt((q * (1 - q)).sum()) / len(q)
    assert abs(accept - q.mean()) < 4 * se, (accept, q.mean(), se)
    assert abs((logp >= t).mean() - q.mean()) > 4 * se  # the noise matters at this size


# ---------------------------------------------------------------- through the engine


def test_a_shortfall_admits_nothing_and_oversample_draws_more():
    """The self filter (scores under M_g), 3k candidates. A threshold no
    sequence reaches (scores are <= 0): nothing is admitted, ever; under
    replace T_g is then empty and the maximum-likelihood n-gram is uniform
    (held-out NLL = ln V), and T_g has no tokens (real_fraction 0/0). No
    threshold and keep_fraction 1/3 of the 3k candidates: exactly k admitted."""
    common = [
        "source.kind=markov",
        "source.vocab_size=5",
        "real.sequences=30",
        "real.seq_len=4",
        "real.heldout=20",
        "generate.sequences=10",
        "model.smoothing=0",
        "replicates=2",
        "generations=3",
        "generate.filter.kind=self",
        "generate.filter.oversample=3",
        "generate.filter.keep_fraction=0.3333333",
        "corpus.policy=replace",
        "sweep.generate.filter.threshold=[0.5, null]",
    ]
    df = run_rows(load(common))
    none = df[df["generate.filter.threshold"] == 0.5]
    assert (none["admitted"] == 0).all() and (none["accept_rate"] == 0).all()
    later = none[none.generation > 0]
    np.testing.assert_allclose(later["heldout_nll"], np.log(5), rtol=1e-6)
    assert later["real_fraction"].isna().all()
    third = df[df["generate.filter.threshold"].isna()]
    assert len(third) == 2 * 4 and (third["admitted"] == 10).all() and np.allclose(third["accept_rate"], 1 / 3)


def test_dedup_admits_no_repeat():
    """Two tokens, three positions: 8 possible sequences. Under accumulate a
    dedup filter admits each at most once over the whole run (never one that
    R holds), so admissions stop; within a generation S_g has no repeat."""
    df = run_rows(
        load(
            [
                "source.kind=categorical",
                "source.vocab_size=2",
                "real.sequences=3",
                "real.seq_len=3",
                "real.heldout=10",
                "model.order=1",
                "model.smoothing=0.5",
                "generate.sequences=6",
                "generate.filter.kind=dedup",
                "generate.filter.oversample=4",
                "corpus.policy=accumulate",
                "replicates=4",
                "generations=6",
            ]
        )
    )
    total = df.groupby("cell")["admitted"].sum()
    assert (total <= 8 - 1).all() and (total > 0).all()
    assert (df.loc[df.admitted > 0, "unique_seq"] == 1).all()
    assert (df[df.generation == 6]["admitted"] == 0).all()


@pytest.fixture(scope="module")
def filtered_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("filtered")
    assert run_cli("run", write(d, FILTERED), "--out", d / "ref", "--quiet") == 0
    return d


def test_every_filter_and_metric_recorded(filtered_run):
    df = load_metrics(filtered_run / "ref")
    assert set(df["generate.filter.kind"]) == {"noisy_truth", "self", "reference", "dedup"}
    assert df["accept_rate"].between(0, 1).all() and (df["admitted"] <= df["generate.sequences"]).all()
    scoring = df[df["generate.filter.kind"] != "dedup"]
    assert (scoring["accept_rate"] <= 0.5 + 1e-6).all()  # keep_fraction 0.5
    assert df["admitted"].dtype == np.int64


def test_a_filtered_cell_alone_equals_it_in_the_sweep(filtered_run):
    df = load_metrics(filtered_run / "ref")
    cfg = load([], filtered_run / "c.yaml")
    for kind in ("noisy_truth", "self", "reference", "dedup"):
        cell = int(df[(df["generate.filter.kind"] == kind) & (df["generate.sequences"] == 12)].cell.iloc[-1])
        alone = run_rows(cfg, keep=lambda c, cell=cell: c.index == cell)
        want = df[df.cell == cell].reset_index(drop=True)
        for col in ("heldout_nll", "tv_true", "accept_rate", "admitted", "unique_seq"):
            np.testing.assert_array_equal(alone[col].to_numpy(), want[col].to_numpy(), err_msg=(kind, col))


def test_a_filtered_run_resumed_equals_it_uninterrupted(filtered_run, monkeypatch):
    out = filtered_run / "stopped"
    SignalAfter(monkeypatch, 4)
    assert run_cli("run", filtered_run / "c.yaml", "--out", out, "--quiet") == 143
    monkeypatch.undo()
    assert run_cli("resume", out, "--quiet") == 0
    assert_same_metrics(out, filtered_run / "ref")
