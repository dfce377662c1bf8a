"""Metrics of one cell's model and sample (DESIGN §6), in nats.

Held-out metrics take the held-out set as counts of (context, token) pairs
(`hcounts_CxV`, the same for every cell), so their cost is the table's size,
not the held-out set's.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from .reduce import total, tree_sum


def heldout_nll(probs_CxV, hcounts_CxV):
    """Mean -ln M(token | context) over held-out tokens; +inf if any has probability 0."""
    logp = jnp.log(probs_CxV)
    contrib = jnp.where(hcounts_CxV > 0, hcounts_CxV * logp, 0.0)
    return -total(contrib) / total(hcounts_CxV)


def row_entropy(probs_CxV):
    """Entropy of every row, float32 [C] (0 ln 0 = 0)."""
    plogp = jnp.where(probs_CxV > 0, probs_CxV * jnp.log(jnp.where(probs_CxV > 0, probs_CxV, 1.0)), 0.0)
    return -tree_sum(plogp, axis=-1)


def heldout_entropy(probs_CxV, hcounts_CxV):
    """Mean over held-out positions of the entropy of M's next-token distribution."""
    ctx_weight_C = tree_sum(hcounts_CxV, axis=-1)
    return total(ctx_weight_C * row_entropy(probs_CxV)) / total(ctx_weight_C)


def truth_divergences(model_FxV, true_FxV, weight_F):
    """KL(P || M), total variation and squared L2, averaged over contexts.

    model_FxV, true_FxV: next-token distributions of the F full-length contexts.
    weight_F: the true stationary probability of each context (sums to 1).
    Returns (kl, tv, sq) scalars; kl is +inf where M gives 0 to a token P does
    not, never NaN (zero-weight contexts contribute nothing).
    """

    def average(row_F):
        return total(jnp.where(weight_F > 0, weight_F * row_F, 0.0))

    return tuple(average(row) for row in divergence_rows(model_FxV, true_FxV))


def divergence_rows(model_xV, true_xV):
    """Per row (any leading shape): KL(P || M), total variation and squared L2.

    KL is summed as sum_{P>0} P (x - log1p x) + sum_{P=0} M with
    x = (M - P) / P: equal to sum P ln(P/M) when both rows sum to 1, but every
    term is >= 0 and second order in M - P, so a KL of 1e-7 is not lost to
    float32 rounding (and a model close to the truth never scores below 0).
    """
    pos = true_xV > 0
    diff = true_xV - model_xV
    x = -diff / jnp.where(pos, true_xV, 1.0)
    kl_terms = jnp.where(pos, true_xV * (x - jnp.log1p(x)), model_xV)
    return tree_sum(kl_terms, axis=-1), 0.5 * tree_sum(jnp.abs(diff), axis=-1), tree_sum(diff * diff, axis=-1)


def support(counts_CxV, probs_CxV):
    """(context, token) pairs of positive probability, over contexts seen in training."""
    seen_C = jnp.sum(counts_CxV, axis=-1) > 0
    return jnp.sum((probs_CxV > 0) & seen_C[:, None])


def distinct_2(tokens_NxL, n_valid, vocab_size):
    """Distinct within-sequence bigrams over all bigrams of the first n_valid rows.

    Uses a V*V bitmap when it is small, else a sort of the bigram codes.
    """
    N, L = tokens_NxL.shape
    t = tokens_NxL.astype(jnp.int32)
    codes = (t[:, :-1] * vocab_size + t[:, 1:]).reshape(-1)
    valid = jnp.broadcast_to((jnp.arange(N) < n_valid)[:, None], (N, L - 1)).reshape(-1)
    size = vocab_size * vocab_size
    if size <= (1 << 22):
        seen = jnp.zeros(size, jnp.int32).at[jnp.where(valid, codes, size)].max(1, mode="drop")
        distinct = jnp.sum(seen)
    else:
        big = jnp.iinfo(jnp.int32).max
        s = jnp.sort(jnp.where(valid, codes, big))
        new = jnp.concatenate([jnp.ones(1, bool), s[1:] != s[:-1]]) & (s != big)
        distinct = jnp.sum(new)
    return distinct / (n_valid * (L - 1))


def distinct_2_from_counts(counts_CxV, n_valid, seq_len):
    """distinct_2 of a sample from its bigram-model counts (order 2, BOS layout).

    Rows 0..V-1 of an order-2 table are the contexts of one real token, so
    their non-zero entries are exactly the distinct within-sequence bigrams.
    """
    V = counts_CxV.shape[-1]
    return jnp.sum(counts_CxV[:V] > 0) / (n_valid * (seq_len - 1))


def _fmix32(h):
    """MurmurHash3's 32-bit finaliser: a bijective mixer of uint32."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def hash_start(n):
    """The two running hashes of n empty sequences, uint32 [n] each."""
    return jnp.full(n, 0x811C9DC5, jnp.uint32), jnp.full(n, 0x01000193, jnp.uint32)


def hash_step(hashes, tok_N):
    """The running hashes after one more token of every sequence (int32 [N])."""
    h1, h2 = hashes
    t = tok_N.astype(jnp.uint32)
    h1 = _fmix32(h1 ^ (t * jnp.uint32(0x9E3779B1) + jnp.uint32(0x7F4A7C15)))
    h2 = _fmix32(h2 + (t ^ jnp.uint32(0x27D4EB2F)) * jnp.uint32(0x165667B1))
    return h1, h2


def sequence_hashes(tokens_NxL):
    """Two independent 32-bit hashes of every row, uint32 [N] each; a sampler
    that runs `hash_step` on each position's tokens gets the same hashes."""
    hashes, _ = lax.scan(lambda h, col_N: (hash_step(h, col_N), None), hash_start(tokens_NxL.shape[0]), tokens_NxL.T)
    return hashes


def unique_sequences(tokens_NxL, n_valid, hashes=None):
    """Distinct sequences among the first n_valid rows, over n_valid.

    Rows are compared by a 64-bit hash (two mixed 32-bit lanes) and sorted:
    two different rows are counted as one with probability about N**2 / 2**65
    (below 1e-12 for N = 4096). `hashes`: the rows' `sequence_hashes`, if
    already made (then tokens_NxL is not read).
    """
    h1, h2 = sequence_hashes(tokens_NxL) if hashes is None else hashes
    N = h1.shape[0]
    invalid = (jnp.arange(N) >= n_valid).astype(jnp.uint32)
    inv, s1, s2 = lax.sort([invalid, h1, h2], num_keys=3)
    differs = (s1[1:] != s1[:-1]) | (s2[1:] != s2[:-1])
    new = jnp.concatenate([jnp.ones(1, bool), differs]) & (inv == 0)
    return jnp.sum(new) / n_valid
