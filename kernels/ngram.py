"""Count-based n-gram language model over a dense table, one cell at a time.

Tokens are ints in [0, V). A model of order n conditions on the previous
m = n - 1 tokens. Positions before the start of a sequence are filled with a
beginning-of-sequence symbol BOS = V, so the context of position i is the
radix-(V+1) number of tokens i-m .. i-1 (oldest digit most significant) and a
table has C = (V+1)**m rows: the "start distribution" of a sequence is the row
of the all-BOS context, C - 1. Unigram: m = 0, C = 1.

Every function is pure, takes arrays and static ints, and is jit- and
vmap-able; none sees a config object.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import metrics, sampling


def num_contexts(order, vocab_size):
    """Rows of an order-`order` table over `vocab_size` tokens: (V+1)**(order-1)."""
    return (vocab_size + 1) ** (order - 1)


def context_ids(tokens_NxL, order, vocab_size):
    """Context row of every position: int32 [N, L] in [0, C)."""
    m = order - 1
    N, L = tokens_NxL.shape
    if m == 0:
        return jnp.zeros((N, L), jnp.int32)
    radix = vocab_size + 1
    pad_NxM = jnp.full((N, m), vocab_size, jnp.int32)
    padded = jnp.concatenate([pad_NxM, tokens_NxL.astype(jnp.int32)], axis=1)
    ctx_NxL = jnp.zeros((N, L), jnp.int32)
    for t in range(m):  # static: one term per context digit
        ctx_NxL = ctx_NxL + padded[:, t : t + L] * (radix ** (m - 1 - t))
    return ctx_NxL


def fit_counts(tokens_NxL, weight_N, order, vocab_size):
    """Counts of (context, next token) pairs, int32 [C, V].

    weight_N: int32 [N], how many times each sequence is counted (0 excludes it).
    """
    N, L = tokens_NxL.shape
    C = num_contexts(order, vocab_size)
    ctx_NxL = context_ids(tokens_NxL, order, vocab_size)
    flat_NxL = ctx_NxL * vocab_size + tokens_NxL.astype(jnp.int32)
    w_NxL = jnp.broadcast_to(weight_N.astype(jnp.int32)[:, None], (N, L))
    counts = jnp.zeros(C * vocab_size, jnp.int32).at[flat_NxL.reshape(-1)].add(w_NxL.reshape(-1))
    return counts.reshape(C, vocab_size)


def probs_from_counts(counts_CxV, smoothing):
    """Additive (Lidstone) smoothed next-token probabilities, float32 [C, V].

    smoothing: scalar >= 0 (may be traced); 0 = maximum likelihood. A context
    never seen in training backs off to the (equally smoothed) unigram
    distribution of the training set, so under maximum likelihood no token
    absent from the training set ever gets probability > 0.
    """
    V = counts_CxV.shape[-1]
    unigram_V = jnp.sum(counts_CxV, axis=0)
    n_C = jnp.sum(counts_CxV, axis=-1, keepdims=True)
    seen_C = n_C > 0
    rows = jnp.where(seen_C, counts_CxV, unigram_V[None, :])
    num = rows.astype(jnp.float32) + smoothing
    den = jnp.where(seen_C, n_C, jnp.sum(unigram_V)).astype(jnp.float32) + V * smoothing
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 1.0 / V)


def log_probs(tokens_NxL, probs_CxV, order):
    """ln M(token | context) of every position, float32 [N, L] (-inf where 0)."""
    V = probs_CxV.shape[-1]
    ctx_NxL = context_ids(tokens_NxL, order, V)
    return jnp.log(probs_CxV[ctx_NxL, tokens_NxL.astype(jnp.int32)])


def cdf_table(probs_CxV, temperature, top_k, top_p):
    """Integer sampling CDF of every context row after filtering, uint32 [C, W].

    W = sampling.cdf_width(V). Filtering happens once per row, not per token.
    """
    V = probs_CxV.shape[-1]
    width = sampling.cdf_width(V)

    def row(p_V):
        return sampling.cdf_row(sampling.filter_probs(p_V, temperature, top_k, top_p), width)

    return jax.vmap(row)(probs_CxV)


def sample(key, cdf_CxW, order, vocab_size, n, seq_len, weight_n=None):
    """Ancestral sampling of n sequences of seq_len tokens, int32 [n, seq_len].

    One lax.scan over positions; every draw is 31 random bits from
    fold_in(key, position), so sequence j depends only on (key, j): the first
    n' rows of a draw of n > n' sequences equal a draw of n' sequences.

    weight_n: optional int32 [n]; if given, also returns the (context, token)
    counts of the sample with these sequence weights, int32 [C, V], equal to
    fit_counts(tokens, weight_n, ...) but counted while sampling, with the
    table in cache instead of a second pass over the tokens, and the
    sequences' `metrics.sequence_hashes`, hashed as they are drawn: a caller
    that needs only those never has the [n, seq_len] tokens written out.
    """
    C = cdf_CxW.shape[0]
    radix = vocab_size + 1
    counting = weight_n is not None

    def step(carry, pos):
        ctx_N, counts, hashes, r_N = carry
        tok_N = sampling.search_cdf(cdf_CxW, ctx_N, r_N)
        if counting:
            counts = counts.at[ctx_N * vocab_size + tok_N].add(weight_n)
            hashes = metrics.hash_step(hashes, tok_N)
        return ((ctx_N * radix + tok_N) % C, counts, hashes, sampling.position_bits(key, pos + 1, n)), tok_N

    ctx0_N = jnp.full((n,), C - 1, jnp.int32)
    counts0 = jnp.zeros(C * vocab_size if counting else 0, jnp.int32)
    hashes0 = metrics.hash_start(n if counting else 0)
    start = (ctx0_N, counts0, hashes0, sampling.position_bits(key, 0, n))
    (_, counts, hashes, _), tokens_LxN = jax.lax.scan(step, start, jnp.arange(seq_len))
    if counting:
        return tokens_LxN.T, counts.reshape(C, vocab_size), hashes
    return tokens_LxN.T
