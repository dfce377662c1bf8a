"""Temperature / top-k / top-p on a row of probabilities, and exact integer draws.

Shared by every model family. A filtered row is turned into an integer CDF
(`cdf_row`) whose widths sum to ``CDF_TOTAL = 2**31``; a draw is 31 random
bits ``r`` and the token is the number of CDF entries ``<= r`` (`search_cdf`).
A token of probability 0 has zero width in the CDF and can never be drawn, so
maximum-likelihood collapse (a token lost is lost for good) is exact; a token
of positive probability always has a width of at least 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import rng
from .reduce import next_pow2, prefix_sum, total

CDF_BITS = 31
CDF_TOTAL = 1 << CDF_BITS
# rows up to this wide are ranked by comparing every pair (V^2 compares, all
# vectorised, RANK_BLOCK columns at a time); wider rows by a stable sort. The
# two give the same ranks, so the choice never changes a number. On XLA CPU
# the pairs beat the sort from V = 8 (9x) to V = 1024 (1.3x): in the
# transformer's sampling scan a sort of 16 floats per position was a quarter
# of the time, and an n-gram group's table of 64-token rows took 100 ms a
# generation to sort (benchmarks/RESULTS.md). Blocks of 32 columns keep each
# comparison fused with its sum: one [V, V] comparison at V = 64 was written
# out whole and took 20x as long as two [V, 32] blocks.
RANK_BY_PAIRS_MAX = 256
RANK_BLOCK = 32


def filter_probs(probs_V, temperature, top_k, top_p):
    """Apply temperature, then top-k, then top-p to one row of probabilities.

    probs_V: float32 [V], non-negative, summing to 1.
    temperature: scalar >= 0; 0 means greedy (the most probable token, lowest
      index on ties).
    top_k: int scalar; 0 = off, else keep the k most probable tokens (ties
      broken by lower index, so exactly min(k, V) tokens stay).
    top_p: scalar in (0, 1]; 1 = off, else keep the smallest prefix of tokens in
      descending probability whose mass reaches top_p.
    Returns float32 [V] summing to 1 (zeros where filtered out).
    All three may be traced: a new value never recompiles. top_k and top_p
    may both be None: off, known when tracing (no cell of a group truncates),
    so the program skips the ranking; the result is the same as with 0 and 1.
    """
    V = probs_V.shape[-1]
    probs_V = probs_V.astype(jnp.float32)
    logp_V = jnp.log(probs_V)
    safe_t = jnp.where(temperature > 0, temperature, 1.0).astype(jnp.float32)
    tempered_V = jnp.exp((logp_V - jnp.max(logp_V)) / safe_t)
    greedy_V = (jnp.arange(V) == jnp.argmax(probs_V)).astype(jnp.float32)
    w_V = jnp.where(temperature > 0, tempered_V, greedy_V)
    if top_k is None and top_p is None:
        return w_V / total(w_V)

    order_V, rank_V = descending_order(w_V)
    w_V = jnp.where((top_k <= 0) | (rank_V < top_k), w_V, 0.0)

    p_V = w_V / total(w_V)
    sorted_V = p_V[order_V]
    before_V = prefix_sum(sorted_V) - sorted_V
    keep_V = (before_V < top_p)[rank_V] | (top_p >= 1.0)
    w_V = jnp.where(keep_V, w_V, 0.0)
    return w_V / total(w_V)


def descending_order(w_V):
    """(order, rank) of a row by descending value, ties by lower index, NaN
    last: order[r] is the index ranked r and rank[order[r]] = r, int32 [V]
    each; what a stable argsort of -w gives."""
    V = w_V.shape[-1]
    idx_V = jnp.arange(V, dtype=jnp.int32)
    if V > RANK_BY_PAIRS_MAX:
        order_V = jnp.argsort(-w_V, stable=True).astype(jnp.int32)
        return order_V, jnp.zeros(V, jnp.int32).at[order_V].set(idx_V)
    key_V = jnp.where(jnp.isnan(w_V), -jnp.inf, w_V)  # NaN last, as the sort puts it
    blocks = [slice(s, s + RANK_BLOCK) for s in range(0, V, RANK_BLOCK)]

    def ahead(b):  # [i, j in b]: j is ranked before i
        kj, ki = key_V[None, b], key_V[:, None]
        return (kj > ki) | ((kj == ki) & (idx_V[None, b] < idx_V[:, None]))

    rank_V = sum(jnp.sum(ahead(b), axis=1, dtype=jnp.int32) for b in blocks)  # how many j are before each i
    order_V = sum(  # order[r] = the i whose rank is r
        jnp.sum(jnp.where(rank_V[b, None] == idx_V[None, :], idx_V[b, None], 0), axis=0, dtype=jnp.int32)
        for b in blocks
    )
    return order_V, rank_V


def cdf_row(probs_V, width):
    """Integer CDF of one probability row, padded to ``width`` (a power of two).

    Each token's width is floor(p * 2**31), at least 1 where p > 0 and exactly
    0 where p = 0; the rounding remainder goes to the most probable token, and
    the prefix sum is exact integer arithmetic. So every token keeps its
    probability to about 1e-7 relative (float32 p), however small it is.
    Returns uint32 [width], non-decreasing, last entry CDF_TOTAL.
    """
    V = probs_V.shape[-1]
    p_V = probs_V.astype(jnp.float32)
    w_V = jnp.floor(p_V * float(CDF_TOTAL)).astype(jnp.int32)  # p <= 1 - 2**-24 < 2**31 fits
    w_V = jnp.where(p_V >= 1.0, CDF_TOTAL - 1, w_V)
    w_V = jnp.where(p_V > 0, jnp.maximum(w_V, 1), 0).astype(jnp.uint32)
    short = jnp.uint32(CDF_TOTAL) - jnp.sum(w_V, dtype=jnp.uint32)  # mod 2**32: may wrap "negative"
    top = jnp.argmax(p_V)
    w_V = w_V.at[top].add(short)  # wraps back: the widths sum to CDF_TOTAL exactly
    cum_V = jnp.cumsum(w_V, dtype=jnp.uint32)
    pad = jnp.full((width - V,), CDF_TOTAL, jnp.uint32)
    return jnp.concatenate([cum_V, pad])


def search_cdf(cdf_RxW, row_N, r_N):
    """Inverse-CDF lookup: for each draw, the token whose CDF interval holds r.

    cdf_RxW: uint32 [rows, W], rows of `cdf_row` (W a power of two).
    row_N: int32 [N], the row of each draw; None: row i for draw i (R = N).
    r_N: uint32 [N], uniform in [0, CDF_TOTAL).
    Returns int32 [N]: the number of entries of the row that are <= r.

    Two levels, each one contiguous read and a count: the last entries of the
    row's blocks of S = 2**ceil(log2(W) / 2) entries give the block, then
    that block's S entries the token. A row is sorted, so the count is the
    same as a binary search's. The binary search made log2(W) dependent
    single-element gathers: in a profile of a bigram generation (W = 64)
    they were 28 % of the step's op time, and two levels sampled rows of
    random probabilities 1.3x as fast (benchmarks/RESULTS.md).
    """
    W = cdf_RxW.shape[1]
    S = 1 << (W.bit_length() // 2)  # W = 2**j: S = 2**ceil(j / 2)
    coarse = cdf_RxW[:, S - 1 :: S]  # [R, W / S]
    if row_N is not None:
        coarse = coarse[row_N]
    blocks = jnp.sum(coarse <= r_N[:, None], axis=1, dtype=jnp.int32)
    # every entry <= r (never, for a row of cdf_row): the last block, all S counted
    blocks = jnp.minimum(blocks, W // S - 1)
    rows = jnp.arange(r_N.shape[0], dtype=jnp.int32) if row_N is None else row_N
    fine = jax.vmap(lambda row, start: jax.lax.dynamic_slice(cdf_RxW, (row, start), (1, S))[0])(rows, blocks * S)
    return blocks * S + jnp.sum(fine <= r_N[:, None], axis=1, dtype=jnp.int32)


def position_bits(key, pos, n):
    """The draws of position `pos` of an ancestral sampler, `draw_bits(fold_in(key, pos), n)`.

    Samplers make position t + 1's draws in the scan step of position t and
    carry them (the last step's are not used): drawn in the step that used
    them, XLA fused the hash into every consumer (the search's gathers, the
    counting scatter) and computed it up to 7 times (benchmarks/RESULTS.md);
    a loop-carried array is written out once."""
    return draw_bits(rng.fold_in(key, pos), n)


def draw_bits(key, n):
    """31 uniform random bits per draw, uint32 [n]; element j depends only on
    (key, j): the top bits of `jax.random.bits(key, (n,), uint32)` (kernels/rng.py)."""
    return rng.bits32(key, (n,)) >> (32 - CDF_BITS)


def cdf_width(vocab_size):
    """Row width of an integer CDF table: the smallest power of two >= vocab_size."""
    return next_pow2(vocab_size)
