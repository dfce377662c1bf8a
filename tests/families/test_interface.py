"""collapse_sim/families: every family through the one interface, its score
against a numpy reference, parameters named by path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapse_sim import families, keys
from collapse_sim import plan as planmod
from collapse_sim.corpus import TrainingSet
from collapse_sim.families import transformer as ftransformer
from collapse_sim.families.base import Family
from collapse_sim.kernels import ngram
from collapse_sim.kernels import transformer as T
from tests import reference
from tests.helpers import load

MARKOV = [
    "source.kind=markov",
    "source.vocab_size=5",
    "source.order=1",
    "real.sequences=30",
    "real.seq_len=6",
    "real.heldout=20",
    "generate.sequences=10",
    "replicates=2",
    "generations=1",
]
TRANSFORMER = [
    "model.kind=transformer",
    "model.d_model=8",
    "model.layers=1",
    "model.heads=2",
    "model.mlp_ratio=2",
    "model.steps=3",
    "model.batch_size=4",
]


init = jax.jit(T.init, static_argnums=0)  # one program (an eager flax init compiles op by op)


def test_every_family_implements_the_interface():
    """A registered family overrides every method its base leaves abstract,
    declares the traced keys its config has, and no family is named twice."""
    from collapse_sim.config import MODEL_KEYS

    for method in Family.REQUIRED + Family.REQUIRED_COUNTING:  # the base's are placeholders
        with pytest.raises(NotImplementedError):
            getattr(Family(), method)(*[None] * (getattr(Family, method).__code__.co_argcount - 1))
    for name, fam in families.FAMILIES.items():
        assert fam.name == name and name in MODEL_KEYS
        assert set(fam.traced) <= set(MODEL_KEYS[name])
        counting = fam.count_rows(_spec(name).model) > 0
        for method in Family.REQUIRED + (Family.REQUIRED_COUNTING if counting else ()):
            assert getattr(type(fam), method) is not getattr(Family, method), (name, method)


def _spec(kind: str):
    cfg = load(MARKOV + (TRANSFORMER if kind == "transformer" else ["model.order=2", "model.smoothing=0.1"]))
    return planmod.make_plan(cfg, "t", jax.local_devices()).groups[0].spec


def _model(spec, rng):
    """A trained model of the family, by its own train method, on random rows."""
    rows = jnp.asarray(rng.integers(0, spec.vocab_size, (30, spec.seq_len)), jnp.int32)
    cell = keys.CellParams(
        None,
        None,
        jnp.int32(10),
        jnp.float32(1),
        jnp.int32(0),
        jnp.float32(1),
        jnp.int32(0),
        {
            "smoothing": jnp.float32(0.1),
            "learning_rate": jnp.float32(0.01),
            "weight_decay": jnp.float32(0.0),
            "grad_clip": jnp.float32(1.0),
        },
        jnp.float32(-np.inf),
        jnp.int32(10),
        jnp.float32(0),
    )
    fam = spec.family
    if spec.corpus.counting:
        tset = TrainingSet(fam.count(spec, rows, jnp.ones(30, jnp.int32)), None, None, 0, 0)
    else:
        tset = TrainingSet(None, lambda idx: rows[idx], jnp.int32(30), 0, 0)
    return fam.train(spec, jax.random.key(0), cell, tset, None)[0]


def test_ngram_score_is_the_sum_of_reference_log_probabilities(rng):
    spec = _spec("ngram")
    model = _model(spec, rng)
    tokens = rng.integers(0, 5, (7, 6))
    got = np.asarray(spec.family.score(spec, model, jnp.asarray(tokens, jnp.int32)))
    p = reference.probs(np.asarray(model.counts), 0.1)
    want = [sum(np.log(p[reference.context_of(s, i, 2, 5), s[i]]) for i in range(6)) for s in tokens]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_transformer_score_is_the_sum_of_reference_log_probabilities(rng):
    spec = _spec("transformer")
    params = jax.tree.map(  # every leaf redrawn, so every term of the model counts
        lambda x: jnp.asarray(rng.normal(0, 0.3, x.shape), jnp.float32), init(spec.model.arch, jax.random.key(2))
    )
    tokens = rng.integers(0, 5, (7, 6))
    got = np.asarray(spec.family.score(spec, params, jnp.asarray(tokens, jnp.int32)))
    logits = reference.transformer_logits(jax.device_get(params), tokens, 5, 2, False)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    want = np.take_along_axis(logp, tokens[..., None], -1)[..., 0].sum(-1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_transformer_scores_many_rows_in_passes(rng):
    """More rows than a held-out pass holds: scored in passes (padded), the
    same as one pass over all of them."""
    spec = _spec("transformer")
    params = init(spec.model.arch, jax.random.key(3))
    n = 2 * spec.model.heldout_chunk + 3
    tokens = jnp.asarray(rng.integers(0, 5, (n, 6)), jnp.int32)
    got = np.asarray(jax.jit(lambda p, t: spec.family.score(spec, p, t))(params, tokens))
    want = np.asarray(T.token_log_probs(spec.model.arch, params, tokens)).sum(-1)
    assert got.shape == (n,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_score_gives_minus_infinity_to_an_impossible_sequence():
    """Maximum likelihood: a token never seen after its context has probability 0."""
    spec = _spec("ngram")
    counts = ngram.fit_counts(jnp.zeros((3, 6), jnp.int32), jnp.ones(3, jnp.int32), 2, 5)  # only token 0, ever
    model = spec.family.train(
        spec,
        None,
        keys.CellParams(*[None] * 7, {"smoothing": jnp.float32(0)}, *[None] * 3),
        TrainingSet(counts, None, None, 0, 0),
        None,
    )[0]
    got = np.asarray(spec.family.score(spec, model, jnp.asarray([[0] * 6, [0, 0, 1, 0, 0, 0]], jnp.int32)))
    assert got[0] == 0.0 and got[1] == -np.inf


def test_parameters_are_named_by_their_path_and_round_trip():
    arch = T.Arch(vocab_size=5, seq_len=6, d_model=8, layers=2, heads=2, mlp_ratio=2)
    params = init(arch, jax.random.key(4))
    named = ftransformer.named(params)
    assert {"blocks_0.attn.qkv.kernel", "blocks_1.up.bias", "embed.embedding", "pos", "head.kernel"} <= set(named)
    back = ftransformer.from_named(arch, named)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        assert a is b
    with pytest.raises(KeyError):
        ftransformer.from_named(arch, {k: v for k, v in named.items() if k != "pos"})
