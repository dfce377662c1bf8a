"""kernels/transformer.py against a numpy reference (logits and held-out
statistics), its KV cache, its sampling, and vmap over cells. That it learns
a Markov source is tested through the engine (test_transformer_engine.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapse_sim.kernels import transformer as T
from tests import reference

# one compiled program per shape (an eager flax init compiles op by op, seconds each)
init = jax.jit(T.init, static_argnums=0)


def randomised(params, rng, scale=0.3):
    """Parameters with every leaf redrawn (biases and norms included), so the
    reference comparison exercises every term."""
    return jax.tree.map(
        lambda x: jnp.asarray(rng.normal(0, scale, x.shape), jnp.float32) + (x if x.ndim == 1 else 0), params
    )


@pytest.mark.parametrize("tie", [False, True])
def test_forward_matches_numpy_reference(rng, tie):
    arch = T.Arch(vocab_size=7, seq_len=6, d_model=16, layers=2, heads=4, mlp_ratio=2, tie=tie)
    params = randomised(init(arch, jax.random.key(1)), rng)
    tokens = rng.integers(0, 7, (5, 6))
    got = np.asarray(jax.jit(T.logits, static_argnums=0)(arch, params, jnp.asarray(tokens, jnp.int32)))
    want = reference.transformer_logits(jax.device_get(params), tokens, 7, 4, tie)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def reference_nll(params, tokens, V, heads):
    logits = reference.transformer_logits(params, tokens, V, heads, False)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, tokens[..., None], -1).mean()


def test_training_gradient_matches_finite_differences_of_the_reference(rng):
    """The gradient training uses (attention's hand-written backward pass
    included) against central differences of the float64 numpy reference's
    mean NLL, for 8 random elements of every parameter of a small model (all
    of a smaller one). A wrong term of the attention backward (dq, dk or dv)
    moves every gradient of its block by O(1), so 8 elements of each see it."""
    V, heads = 5, 2
    arch = T.Arch(vocab_size=V, seq_len=5, d_model=8, layers=2, heads=heads, mlp_ratio=2)
    params = randomised(init(arch, jax.random.key(3)), rng, scale=0.5)
    tokens = rng.integers(0, V, (3, 5))
    grads = jax.jit(jax.grad(lambda p: T.nll(arch, p, jnp.asarray(tokens, jnp.int32))))(params)
    host = jax.tree.map(lambda a: np.asarray(a, np.float64), jax.device_get(params))
    leaves, tree = jax.tree.flatten(host)
    names = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(host)[0]]
    got_leaves = jax.tree.leaves(jax.device_get(grads))
    eps = 1e-6
    for i, leaf in enumerate(leaves):
        every = list(np.ndindex(leaf.shape))
        picked = [every[k] for k in rng.choice(len(every), min(8, len(every)), replace=False)]
        fd, got = [], []
        for j in picked:
            step = []
            for sign in (1, -1):
                moved = [a.copy() for a in leaves]
                moved[i][j] += sign * eps
                step.append(reference_nll(jax.tree.unflatten(tree, moved), tokens, V, heads))
            fd.append((step[0] - step[1]) / (2 * eps))
            got.append(np.asarray(got_leaves[i])[j])
        np.testing.assert_allclose(got, fd, rtol=1e-3, atol=2e-5, err_msg=names[i])


@pytest.mark.parametrize("k,d", [(12, 5), (5, 12), (7, 7)])
def test_dense_product_gradients_match_numpy(rng, k, d):
    """_dense_product's hand-written backward pass (the kernel gradient of a
    wide-input layer computed as a transposed product) against the gradients
    of sum(w_out * (x @ w)) in numpy: dx = w_out @ w^T, dw = x^T @ w_out."""
    x = rng.standard_normal((3, 4, k)).astype(np.float32)
    w = rng.standard_normal((k, d)).astype(np.float32)
    w_out = rng.standard_normal((3, 4, d)).astype(np.float32)
    y, (dx, dw) = jax.value_and_grad(lambda x, w: jnp.sum(T._dense_product(x, w) * w_out), argnums=(0, 1))(x, w)
    x64, w64, o64 = (a.astype(np.float64) for a in (x, w, w_out))
    np.testing.assert_allclose(float(y), np.sum((x64 @ w64) * o64), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), o64 @ w64.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dw), x64.reshape(-1, k).T @ o64.reshape(-1, d), rtol=1e-5, atol=1e-5)


def test_kv_cache_decoding_equals_full_recomputation(rng):
    arch = T.Arch(vocab_size=9, seq_len=8, d_model=16, layers=3, heads=2)
    params = randomised(init(arch, jax.random.key(2)), rng)
    tokens = jnp.asarray(rng.integers(0, 9, (4, 8)), jnp.int32)
    full = np.asarray(jax.jit(T.logits, static_argnums=0)(arch, params, tokens))
    caches = T.init_caches(arch, 4)
    prev = jnp.full((4,), 9, jnp.int32)
    decode = jax.jit(T.decode_step, static_argnums=0)  # one program, the position traced
    for pos in range(8):
        step, caches = decode(arch, params, prev, jnp.int32(pos), caches)
        np.testing.assert_allclose(np.asarray(step), full[:, pos], rtol=1e-5, atol=1e-5)
        prev = tokens[:, pos]


def known_logits_params(arch, logits_V):
    """A model whose every output is `logits_V`: head kernel 0, head bias = logits."""
    params = init(arch, jax.random.key(0))
    params["head"] = {"kernel": jnp.zeros_like(params["head"]["kernel"]), "bias": jnp.asarray(logits_V, jnp.float32)}
    return params


def chi_square(counts, probs):
    n = counts.sum()
    return float(((counts - n * probs) ** 2 / (n * probs)).sum())


def test_sampling_frequencies_match_known_logits():
    """Tolerance: the chi-square statistic of each position's token counts
    against softmax(logits), df = V - 1, must lie below df + 5 sd
    (sd = sqrt(2 df)); the same statistic against a distribution with one
    probability moved by 2 % must exceed it (the test has power)."""
    V, L, n = 6, 4, 40_000
    logits_V = np.array([1.5, 0.2, -0.7, 0.9, -2.0, 0.0])
    probs = np.exp(logits_V) / np.exp(logits_V).sum()
    arch = T.Arch(vocab_size=V, seq_len=L, d_model=8, layers=1, heads=2)
    tokens = np.asarray(
        jax.jit(lambda k: T.sample(arch, known_logits_params(arch, logits_V), k, n, 1.0, 0, 1.0))(jax.random.key(3))
    )
    df = V - 1
    bound = df + 5 * np.sqrt(2 * df)
    wrong = probs.copy()
    wrong[0] -= 0.02
    wrong[1] += 0.02
    for pos in range(L):
        counts = np.bincount(tokens[:, pos], minlength=V)
        assert chi_square(counts, probs) < bound, (pos, counts)
        assert chi_square(counts, wrong) > bound, pos


def test_sampling_applies_temperature_and_top_k_like_the_ngram_family():
    """Greedy (temperature 0) always draws the argmax; top-k = 2 draws only the two largest."""
    V, L = 6, 3
    logits_V = np.array([1.5, 0.2, -0.7, 0.9, -2.0, 0.0])
    arch = T.Arch(vocab_size=V, seq_len=L, d_model=8, layers=1, heads=2)
    params = known_logits_params(arch, logits_V)
    sample = jax.jit(T.sample, static_argnums=(0, 3))  # one program, the filter's values traced
    greedy = np.asarray(sample(arch, params, jax.random.key(4), 4000, 0.0, 0, 1.0))
    assert (greedy == 0).all()
    top2 = np.asarray(sample(arch, params, jax.random.key(5), 4000, 1.0, 2, 1.0))
    assert set(np.unique(top2)) == {0, 3}


@pytest.mark.slow  # the engine's chunk-independence test checks the same through vmap, in the default suite
def test_vmap_over_cells_equals_a_loop():
    """Training and sampling batched over cells (vmap over parameters, data,
    keys and a traced learning rate) equal one cell at a time within 1e-5."""
    arch = T.Arch(vocab_size=5, seq_len=8, d_model=16, layers=1, heads=2)
    n_cells, N = 3, 64
    rng = np.random.default_rng(7)
    rows = jnp.asarray(rng.integers(0, 5, (n_cells, N, 8)), jnp.int32)
    n_valid = jnp.asarray([64, 40, 17], jnp.int32)
    lrs = jnp.asarray([3e-3, 1e-3, 5e-3], jnp.float32)
    keys = jax.vmap(lambda i: jax.random.key_data(jax.random.fold_in(jax.random.key(0), i)))(jnp.arange(n_cells))

    def cell(key_data, rows_NxL, nv, lr):
        key = jax.random.wrap_key_data(key_data)
        params = init(arch, jax.random.fold_in(key, 0))
        tx = T.optimizer(lr, 0.01, steps=20, warmup=5, schedule="cosine", clip=1.0)
        params, losses = T.train(arch, tx, params, jax.random.fold_in(key, 1), rows_NxL, nv, 20, 16)
        sample = T.sample(arch, params, jax.random.fold_in(key, 2), 10, 1.0, 0, 1.0)
        return losses, sample, T.logits(arch, params, probe)

    # Parameters themselves are not compared element-wise: AdamW moves a
    # parameter whose gradient is ~0 by about the learning rate in the
    # direction of the gradient's sign, so last-bit differences in such a
    # gradient (a batched matmul sums in another order) move it by ~1e-3
    # without changing what the model computes. The model's outputs are compared.
    probe = jnp.asarray(rng.integers(0, 5, (6, 8)), jnp.int32)
    batched = jax.jit(jax.vmap(cell))(keys, rows, n_valid, lrs)
    for i in range(n_cells):
        one = jax.jit(cell)(keys[i], rows[i], n_valid[i], lrs[i])
        np.testing.assert_allclose(
            np.asarray(batched[0][i]), np.asarray(one[0]), rtol=1e-5, atol=1e-6
        )  # every step's loss
        np.testing.assert_allclose(
            np.asarray(batched[2][i]), np.asarray(one[2]), rtol=1e-5, atol=1e-5
        )  # the trained model
        np.testing.assert_array_equal(np.asarray(batched[1][i]), np.asarray(one[1]))  # its samples


def test_position_sums_match_numpy(rng):
    """Held-out statistics per sequence (NLL, entropy, and KL / TV / squared
    L2 against given true next-token rows, zeros included) against float64
    numpy on the reference logits."""
    arch = T.Arch(vocab_size=5, seq_len=6, d_model=8, layers=1, heads=2, mlp_ratio=2)
    params = randomised(init(arch, jax.random.key(4)), rng)
    tokens = rng.integers(0, 5, (7, 6))
    truth = rng.dirichlet(np.ones(5), (7, 6))
    truth[:, :, 0] = 0.0  # a token the truth never emits
    truth /= truth.sum(-1, keepdims=True)
    sums = jax.jit(T.position_sums, static_argnums=0)
    got = sums(arch, params, jnp.asarray(tokens, jnp.int32), jnp.asarray(truth, jnp.float32))
    lg = reference.transformer_logits(jax.device_get(params), tokens, 5, 2, False).astype(np.float64)
    logm = lg - np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1, keepdims=True)) - lg.max(-1, keepdims=True)
    m = np.exp(logm)
    want = {
        "nll": -np.take_along_axis(logm, tokens[..., None], -1)[..., 0].sum(-1),
        "entropy": -(m * logm).sum((-1, -2)),
        "kl": np.where(truth > 0, truth * (np.log(np.where(truth > 0, truth, 1)) - logm), 0).sum((-1, -2)),
        "tv": 0.5 * np.abs(truth - m).sum((-1, -2)),
        "sq": ((truth - m) ** 2).sum((-1, -2)),
    }
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(np.asarray(got[name]), want[name], rtol=2e-4, atol=1e-5, err_msg=name)
