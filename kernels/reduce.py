"""Float sums in a fixed order, bit-identical whatever the batch around them.

XLA may vectorise a reduction differently for different batch sizes or device
counts, which changes the last bits of a float sum. A cell's results must not
depend on which other cells share its batch (DESIGN §7.1), so every float sum
on the trajectory or in a metric goes through these: explicit pairwise trees
of elementwise adds, which XLA does not reassociate. The summands are
materialised first (an optimisation barrier), so the compiler cannot contract
a product into the first add as a fused multiply-add in some batch shapes and
not in others.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    width = 1
    while width < n:
        width *= 2
    return width


def _pad_pow2(x, axis):
    n = x.shape[axis]
    width = next_pow2(n)
    if width == n:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, width - n)
    return jnp.pad(x, pad)


def tree_sum(x, axis=-1):
    """Sum over one axis by halving: ((x0 + x_h) + ...), a fixed pairwise order."""
    x = lax.optimization_barrier(jnp.moveaxis(x, axis, -1))
    x = _pad_pow2(x, -1)
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0]


def total(x):
    """Sum of every element in a fixed order."""
    return tree_sum(x.reshape(-1))


def prefix_sum(x):
    """Inclusive cumulative sum over the last axis (Hillis-Steele, fixed order)."""
    x = lax.optimization_barrier(x)
    n = x.shape[-1]
    shift = 1
    while shift < n:
        pad = jnp.zeros(x.shape[:-1] + (shift,), x.dtype)
        x = x + jnp.concatenate([pad, x[..., : n - shift]], axis=-1)
        shift *= 2
    return x
