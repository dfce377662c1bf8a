"""Uniform random bits, exactly `jax.random.bits(key, shape, uint32)` and
`jax.random.fold_in(key, data)`, computed by an unrolled Threefry-2x32.

Why. On CPU, JAX lowers its threefry primitive as a rolled loop (five
iterations of four rounds) to keep compile times short; XLA then copies the
whole state between iterations: 12 ns a word on one CPU core, and about a
quarter of the op time of a bigram generation (benchmarks/RESULTS.md).
The same hash written out in twenty rounds of plain array operations fuses
into one pass over the counters. The numbers are the same, bit for bit:
this module reproduces JAX's default ("partitionable") threefry bits for
typed threefry keys and falls back to `jax.random` for anything else (another
key implementation, the flag off, more than 2**32 draws), so no caller ever
gets a different draw. Tested against `jax.random` and the Threefry
known-answer vectors (tests/kernels/test_rng.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA


def _rotl(x, d: int):
    return (x << jnp.uint32(d)) | (x >> jnp.uint32(32 - d))


def threefry2x32(k0, k1, x0, x1):
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011) of counters (x0, x1)
    under key (k0, k1); uint32 arrays that broadcast. Returns the two words."""
    ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(_PARITY))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = _rotl(x1, r) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
    return x0, x1


def _threefry_words(key):
    """The key's two uint32 words, or None when `key` is not a typed threefry
    key under JAX's default (partitionable) bits."""
    # the flag's default is True; a JAX without it has only partitionable bits
    if not getattr(jax.config, "jax_threefry_partitionable", True):
        return None
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.shape != ():
        return None
    if "threefry" not in str(jax.random.key_impl(key)):
        return None
    data = jax.random.key_data(key)
    return data[0], data[1]


def bits32(key, shape):
    """uint32 array of `shape`: `jax.random.bits(key, shape, jnp.uint32)`."""
    shape = tuple(shape)
    words = _threefry_words(key)
    size = int(np.prod(shape, dtype=np.int64))
    if words is None or size >= 1 << 32:
        return jax.random.bits(key, shape, jnp.uint32)
    # the element's flat index as a 64-bit counter: high word 0, low word the index
    lo = jax.lax.iota(jnp.uint32, size).reshape(shape)
    y0, y1 = threefry2x32(words[0], words[1], jnp.zeros((), jnp.uint32), lo)
    return y0 ^ y1


def fold_in(key, data):
    """`jax.random.fold_in(key, data)` for a scalar `data`."""
    words = _threefry_words(key)
    if words is None:
        return jax.random.fold_in(key, data)
    # the data as a threefry seed (two words: 0 and the uint32 value),
    # hashed as one pair of counters
    y0, y1 = threefry2x32(words[0], words[1], jnp.zeros((), jnp.uint32), jnp.asarray(data, jnp.uint32))
    return jax.random.wrap_key_data(jnp.stack([y0, y1]), impl=jax.random.key_impl(key))
