"""Which generated candidates pass a quality filter, and which are admitted.

One cell at a time; pure, jit- and vmap-able. Candidates are indexed in draw
order; only the first `n_valid` of a buffer are real (the rest are padding of
a group whose cells draw different numbers).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from .metrics import sequence_hashes


def ranked(score_N, n_valid, keep_count):
    """True for the `keep_count` best valid candidates by score (highest
    first, ties broken by draw order); NaN scores rank last."""
    N = score_N.shape[0]
    valid = jnp.arange(N) < n_valid
    key = jnp.where(valid & ~jnp.isnan(score_N), -score_N, jnp.inf)
    order = jnp.argsort(key, stable=True)
    rank = jnp.zeros(N, jnp.int32).at[order].set(jnp.arange(N, dtype=jnp.int32))
    return valid & (rank < keep_count)


def novel(corpus_MxL, corpus_valid_M, cand_NxL, n_valid):
    """True for each valid candidate that repeats neither a valid corpus row
    nor an earlier candidate. Rows are compared by a 64-bit hash
    (`metrics.sequence_hashes`): two different rows are taken for one with
    probability about (M + N)**2 / 2**65.

    One sort of (hash, origin), origin 0 for a valid corpus row, 1 + j for
    candidate j and the largest value for an invalid corpus row (so it never
    precedes a candidate of the same hash): a candidate passes where it
    comes first among its equal hashes."""
    M, N = corpus_MxL.shape[0], cand_NxL.shape[0]
    c1, c2 = sequence_hashes(corpus_MxL)
    n1, n2 = sequence_hashes(cand_NxL)
    big = jnp.iinfo(jnp.int32).max
    origin = jnp.concatenate(
        [jnp.where(corpus_valid_M, 0, big).astype(jnp.int32), jnp.arange(1, N + 1, dtype=jnp.int32)]
    )
    position = jnp.arange(M + N, dtype=jnp.int32)
    h1, h2, _, pos = lax.sort([jnp.concatenate([c1, n1]), jnp.concatenate([c2, n2]), origin, position], num_keys=3)
    first = jnp.concatenate([jnp.ones(1, bool), (h1[1:] != h1[:-1]) | (h2[1:] != h2[:-1])])
    is_first = jnp.zeros(M + N, bool).at[pos].set(first)
    return is_first[M:] & (jnp.arange(N) < n_valid)


def first_passing(cand_NxL, ok_N, k, capacity: int):
    """The first k passing candidates in draw order, compacted to the front of
    `capacity` rows (zeros after them), and how many there are (<= k)."""
    taken = ok_N & (jnp.cumsum(ok_N.astype(jnp.int32)) <= k)
    n = jnp.sum(taken.astype(jnp.int32))
    (idx,) = jnp.nonzero(taken, size=capacity, fill_value=0)
    rows = jnp.where((jnp.arange(capacity) < n)[:, None], cand_NxL[idx], 0).astype(cand_NxL.dtype)
    return rows, n
