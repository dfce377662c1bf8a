"""kernels/rng.py: the unrolled threefry against the paper's known answers, a
numpy reference, and jax.random itself (bit for bit, on the fast path)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapse_sim.kernels import rng
from tests import reference as ref

# Random123's known-answer vectors for threefry2x32_20: (key, counter, output)
KNOWN = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


@pytest.mark.parametrize("key,ctr,want", KNOWN)
def test_known_answers(key, ctr, want):
    k0, k1, x0, x1 = (jnp.uint32(v) for v in (*key, *ctr))
    got = rng.threefry2x32(k0, k1, x0, x1)
    assert (int(got[0]), int(got[1])) == want
    wref = ref.threefry2x32(np.array(key, np.uint32), (np.array([ctr[0]], np.uint32), np.array([ctr[1]], np.uint32)))
    assert (int(wref[0][0]), int(wref[1][0])) == want


def test_matches_reference_on_random_inputs(rng):
    for _ in range(5):
        key = rng.integers(0, 2**32, 2, dtype=np.uint32)
        x = rng.integers(0, 2**32, (2, 37), dtype=np.uint32)
        got = jax.jit(rng_hash)(jnp.asarray(key), jnp.asarray(x))
        want = ref.threefry2x32(key, (x[0], x[1]))
        np.testing.assert_array_equal(np.asarray(got[0]), want[0])
        np.testing.assert_array_equal(np.asarray(got[1]), want[1])


def rng_hash(key, x):
    return rng.threefry2x32(key[0], key[1], x[0], x[1])


@pytest.mark.parametrize("shape", [(1,), (2,), (7,), (1024,), (3, 5), (2, 3, 4), (0,)])
def test_bits_equal_jax_random(shape):
    for seed in (0, 1, 12345):
        key = jax.random.fold_in(jax.random.key(seed), 7)
        np.testing.assert_array_equal(rng.bits32(key, shape), jax.random.bits(key, shape, jnp.uint32))


def test_fold_in_equals_jax_random():
    key = jax.random.key(3)
    for data in (0, 1, 5, 2**31 + 3, 2**32 - 1):
        np.testing.assert_array_equal(
            jax.random.key_data(rng.fold_in(key, data)), jax.random.key_data(jax.random.fold_in(key, data))
        )


def _draws(fold, bits):
    """A sampler's pattern: per cell (vmapped keys) and position (traced), a fold-in, then bits."""

    def one(key):
        return jax.vmap(lambda pos: bits(fold(key, pos), (33,)))(jnp.arange(5))

    return jax.jit(jax.vmap(one))


def test_vmapped_and_traced_takes_the_fast_path():
    keys = jax.random.split(jax.random.key(11), 6)
    ours = _draws(rng.fold_in, rng.bits32)
    theirs = _draws(jax.random.fold_in, lambda k, s: jax.random.bits(k, s, jnp.uint32))
    np.testing.assert_array_equal(ours(keys), theirs(keys))
    # the fast path: none of jax.random's primitives (whose threefry is a rolled loop on CPU)
    prims = ("random_bits", "random_fold_in", "threefry2x32")
    assert not any(p in str(jax.make_jaxpr(ours)(keys)) for p in prims)
    assert all(p in str(jax.make_jaxpr(theirs)(keys)) for p in prims[:2])


def test_other_keys_fall_back_to_jax_random():
    raw = jax.random.PRNGKey(5)  # a legacy uint32 [2] key
    np.testing.assert_array_equal(rng.bits32(raw, (9,)), jax.random.bits(raw, (9,), jnp.uint32))
    rbg = jax.random.key(5, impl="rbg")
    np.testing.assert_array_equal(rng.bits32(rbg, (9,)), jax.random.bits(rbg, (9,), jnp.uint32))
    np.testing.assert_array_equal(
        jax.random.key_data(rng.fold_in(rbg, 4)), jax.random.key_data(jax.random.fold_in(rbg, 4))
    )
