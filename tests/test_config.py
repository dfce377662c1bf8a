"""collapse_sim/config.py: defaults, overrides, sweeps and every kind of bad input."""

import pytest

from collapse_sim import config
from collapse_sim.config import ConfigError


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def error(tmp_path, text, overrides=()):
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, text), list(overrides))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path))
    return msg


def test_defaults_and_overrides(tmp_path):
    cfg = config.load(
        write(tmp_path, "name: x\nmodel: {order: 3}\n"),
        ["generate.temperature=0.5", "sweep.corpus.policy=[replace, mix]"],
    )
    assert cfg.model.order == 3 and cfg.generate.temperature == 0.5 and cfg.real.seq_len == 32
    assert [p.config.corpus.policy for p in config.sweep_points(cfg)] == ["replace", "mix"]
    assert config.load(None).name == "run"


def test_sweep_grid_is_the_product(tmp_path):
    cfg = config.load(
        write(tmp_path, "sweep:\n  corpus.policy: [replace, accumulate]\n  generate.sequences: [10, 20, 30]\n")
    )
    points = config.sweep_points(cfg)
    assert len(points) == 6 and points[1].values == (("corpus.policy", "replace"), ("generate.sequences", 20))


@pytest.mark.parametrize(
    "text,key,fragment",
    [
        ("modle: {order: 2}\n", "modle", "did you mean model"),
        ("model: {ordr: 2}\n", "model.ordr", "did you mean model.order"),
        ("replicates: many\n", "replicates", "expected an integer"),
        ("generate: {temperature: hot}\n", "generate.temperature", "expected a number"),
        ("real: {sequences: -5}\n", "real.sequences", "must be >= 1"),
        ("corpus: {real_fraction: 1.5}\n", "corpus.real_fraction", "must be in [0, 1]"),
        ("generate: {top_p: 0}\n", "generate.top_p", "must be in (0, 1]"),
        ("generate: {top_p: 1.2}\n", "generate.top_p", "must be in (0, 1]"),
        ("source: {kind: categorical, probs: [0.5, 0.4]}\n", "source.probs", "must sum to 1"),
        ("source: {kind: categorical, probs: [0.5, -0.1, 0.6]}\n", "source.probs", ">= 0"),
        (
            "corpus: {policy: mix, train_sequences: 100, real_fraction: 0.2}\ngenerate: {sequences: 50}\n",
            "generate.sequences",
            "too small",
        ),
        ("corpus: {policy: hoard}\n", "corpus.policy", "must be one of"),
        ("sweep: {corpus.polcy: [replace]}\n", "sweep.corpus.polcy", "did you mean corpus.policy"),
        (
            "sweep: {corpus.real_fraction: [0.1, 2.0]}\ncorpus: {policy: mix}\n",
            "sweep.corpus.real_fraction",
            "value 2.0",
        ),
        ("sweep: {replicates: [1, 2]}\n", "sweep.replicates", "cannot be swept"),
        ("model: {kind: transformer, d_model: 30, heads: 4}\n", "model.heads", "must divide model.d_model"),
        ("model: {kind: transformer, init: warm}\n", "model.init", "fresh or continue"),
        ("model: {kind: transformer, tie: 1}\n", "model.tie", "expected true or false"),
        ("model: {kind: transformer, learning_rate: 0}\n", "model.learning_rate", "must be > 0"),
        ("model: {kind: transformer, dtype: float16}\n", "model.dtype", "float32 or bfloat16"),
        ("model: {kind: transformer, schedule: linear}\n", "model.schedule", "cosine or constant"),
        ("model: {kind: lstm}\n", "model.kind", "must be ngram or transformer"),
        ("model: 3\n", "model", "expected a mapping"),
    ],
)
def test_bad_input_names_the_key(tmp_path, text, key, fragment):
    msg = error(tmp_path, text)
    assert f": {key}:" in msg and fragment in msg, msg


def test_bad_set_override_names_the_key(tmp_path):
    msg = error(tmp_path, "name: x\n", ["corpus.real_fraction=-1"])
    assert "corpus.real_fraction" in msg and "must be in [0, 1]" in msg
    with pytest.raises(ConfigError, match="unknown key; did you mean model.order"):
        config.load(write(tmp_path, "name: x\n"), ["model.oder=2"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        config.load(write(tmp_path, "name: x\n"), ["model.order"])


def test_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        config.load(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML at line [23]"):
        config.load(write(tmp_path, "a: 1\nb: [unclosed\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        config.load(write(tmp_path, "- 1\n- 2\n"))


def test_trajectory_identity_ignores_what_cannot_change_it(tmp_path):
    a = config.load(None, ["name=a", "generations=5", "corpus.real_fraction=0.3"])
    b = config.load(None, ["name=b", "generations=9", "corpus.real_fraction=0.7"])  # replace ignores rho
    assert config.stable_hash(config.trajectory_dict(a, "d")) == config.stable_hash(config.trajectory_dict(b, "d"))
    c = config.load(None, ["corpus.policy=mix", "corpus.real_fraction=0.3", "generate.sequences=2000"])
    d = config.load(None, ["corpus.policy=mix", "corpus.real_fraction=0.7", "generate.sequences=2000"])
    assert config.stable_hash(config.trajectory_dict(c, "d")) != config.stable_hash(config.trajectory_dict(d, "d"))


def test_keys_of_the_other_model_family_do_not_change_an_identity(tmp_path):
    """An n-gram cell's trajectory (and a run's fingerprint) ignore transformer
    keys, so adding them to the config left every n-gram result unchanged."""
    from collapse_sim import rundir

    base = config.load(write(tmp_path, "name: x\n"))
    other = config.load(write(tmp_path, "name: x\n"), ["model.d_model=128", "model.learning_rate=0.1"])
    assert config.trajectory_dict(base, "d")["model"] == {"kind": "ngram", "order": 2, "smoothing": 0.0}
    assert config.trajectory_dict(other, "d") == config.trajectory_dict(base, "d")
    assert rundir.fingerprint(other, ["d"]) == rundir.fingerprint(base, ["d"])
    assert "model.d_model" not in rundir.fingerprint(base, ["d"])


def test_floats_in_exponent_notation(tmp_path):
    cfg = config.load(write(tmp_path, "model: {smoothing: 1e-3}\n"), ["generate.temperature=5e-1"])
    assert cfg.model.smoothing == 0.001 and cfg.generate.temperature == 0.5


def test_set_on_a_section_says_so(tmp_path):
    with pytest.raises(ConfigError, match="model: is a section; set one of its keys"):
        config.load(write(tmp_path, "name: x\n"), ["model=3"])


def test_sweep_values_replace_an_invalid_base(tmp_path):
    """Only effective configs run, so only they are validated: k = 10 is never used."""
    text = (
        "corpus: {policy: mix, train_sequences: 500}\ngenerate: {sequences: 10}\n"
        "sweep: {generate.sequences: [500, 600]}\n"
    )
    assert len(config.sweep_points(config.load(write(tmp_path, text)))) == 2
    msg = error(tmp_path, text.replace("[500, 600]", "[500, 60]"))
    assert "sweep.generate.sequences: value 60" in msg


def test_model_order_needs_a_full_context(tmp_path):
    msg = error(tmp_path, "model: {order: 5}\nreal: {seq_len: 4}\n")
    assert ": model.order:" in msg and "real.seq_len > 4" in msg


def test_swept_probs_have_the_identity_of_set_probs(tmp_path):
    swept = config.load(
        write(tmp_path, "source: {kind: categorical}\nsweep: {source.probs: [[0.5, 0.5], [0.2, 0.8]]}\n")
    )
    direct = config.load(write(tmp_path, "source: {kind: categorical, probs: [0.2, 0.8]}\n", "d.yaml"))
    point = config.sweep_points(swept)[1].config
    assert point.source.vocab_size == direct.source.vocab_size == 2
    assert config.trajectory_dict(point, "d") == config.trajectory_dict(direct, "d")


POINTS = """\
sweep:
  grid: {corpus.policy: [replace, accumulate]}
  points:
    - {generate.sequences: 100, corpus.train_sequences: 100}
    - {generate.sequences: 1000, corpus.train_sequences: 1000, generate.temperature: 0.8}
"""


def test_explicit_points_crossed_with_the_grid(tmp_path):
    """Each point (in order) crossed with the grid; every point names every
    swept key, a key a point does not set taking the base value; the config
    written to a run directory reads back the same."""
    cfg = config.load(write(tmp_path, POINTS))
    points = config.sweep_points(cfg)
    assert cfg.sweep_keys == ["generate.sequences", "corpus.train_sequences", "generate.temperature", "corpus.policy"]
    assert [p.values for p in points[:2]] == [
        (
            ("generate.sequences", 100),
            ("corpus.train_sequences", 100),
            ("generate.temperature", 1.0),
            ("corpus.policy", "replace"),
        ),
        (
            ("generate.sequences", 100),
            ("corpus.train_sequences", 100),
            ("generate.temperature", 1.0),
            ("corpus.policy", "accumulate"),
        ),
    ]
    assert len(points) == 4 and points[3].config.generate.temperature == 0.8
    assert points[3].config.corpus.train_sequences == 1000 and points[3].config.corpus.policy == "accumulate"
    again = config.load(write(tmp_path, config.dump(cfg), "dumped.yaml"))
    assert again == cfg
    only = config.load(write(tmp_path, "sweep: {points: [{generate.sequences: 5}, {generate.sequences: 7}]}\n"))
    assert [p.config.generate.sequences for p in config.sweep_points(only)] == [5, 7]


def test_a_point_has_the_identity_of_the_same_setting_in_a_grid_or_set(tmp_path):
    digest = "d"
    named = config.sweep_points(config.load(write(tmp_path, POINTS)))[3].config
    grid = config.sweep_points(
        config.load(
            None,
            [
                "generate.sequences=1000",
                "corpus.train_sequences=1000",
                "generate.temperature=0.8",
                "sweep.corpus.policy=[replace, accumulate]",
            ],
        )
    )[1].config
    assert config.trajectory_dict(named, digest) == config.trajectory_dict(grid, digest)


@pytest.mark.parametrize(
    "text, key, fragment",
    [
        ("sweep: {points: []}", "sweep.points", "non-empty list"),
        ("sweep: {points: [7]}", "sweep.points[0]", "mapping"),
        ("sweep: {points: [{generate.sequence: 5}]}", "sweep.points[0].generate.sequence", "did you mean"),
        ("sweep: {points: [{replicates: 5}]}", "sweep.points[0].replicates", "cannot be swept"),
        ("sweep: {points: [{generate.sequences: many}]}", "sweep.points[0].generate.sequences", "an integer"),
        ("sweep: {points: [{seed: 1}, {seed: 1}]}", "sweep.points[1]", "repeats"),
        ("sweep: {points: [{seed: 1}], grid: {seed: [2, 3]}}", "sweep.grid.seed", "also set by sweep.points"),
        ("sweep: {points: [{seed: 1}], seed: [2, 3]}", "sweep.seed", "under sweep.grid"),
        ("sweep: {points: [{generate.sequences: 0}]}", "sweep.generate.sequences", "must be >= 1"),
    ],
)
def test_bad_points_name_the_key(tmp_path, text, key, fragment):
    msg = error(tmp_path, text + "\n")
    assert f": {key}:" in msg and fragment in msg, msg
