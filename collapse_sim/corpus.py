"""Fixed-capacity per-cell token buffers and the corpus policies of DESIGN §4.

One cell at a time (the engine vmaps). A policy turns the corpus state into
the counts of the training set T_g, and admits the new sample S_g. Every
buffer has a fixed capacity and a valid length; nothing past the valid length
is ever read (rows there carry weight 0 or are masked out of selection).

Memory per cell (L = seq_len, k = generate.sequences, N0 = real.sequences,
G = generations, C x V the n-gram table):

| policy                 | token buffers                  | other          |
|------------------------|--------------------------------|----------------|
| replace                | none (counts of S_{g-1})       | C x V counts   |
| accumulate             | none (counts of C_g)           | C x V counts   |
| accumulate_subsample   | (N0 + (G + 1) k) x L           |                |
| mix                    | (N0 + k) x L                   |                |
| fresh                  | k x L                          |                |

Only accumulate_subsample grows with the number of generations. For the two
count policies the counts are sufficient statistics of the training set, so
no tokens are kept: S_g is counted once, when it is admitted.

A neural model (`counts=False`) has no sufficient statistics: it trains on
tokens, so `replace` keeps S_{g-1} (k x L, like mix) and `accumulate` keeps
R and every S_g ((N0 + (G + 1) k) x L, like accumulate_subsample).
`training_rows` hands the trainer a row-fetch function over T_g instead of
counts. Under `model.init: continue` the state also carries the previous
generation's parameters (`model`, the leaves of the parameter tree).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kernels import ngram

SELECT, FRESH = 1, 2  # key purposes under a generation's key (0 is sampling)
MODEL_PREFIX = "param_"  # checkpoint names of the parameter leaves a state carries


class CorpusState(NamedTuple):
    real: jax.Array  # [N0 or 0, L] the real set R, kept where the policy rereads it
    synth: jax.Array  # [capacity, L] generated sequences
    n_synth: jax.Array  # int32: valid rows of synth (accumulate: sequences admitted so far)
    counts: jax.Array  # [C, V] int32: counts of T_{g+1} for the count policies ([0, V] otherwise)
    model: tuple = ()  # the previous model's parameter leaves (transformer, init: continue)


def token_dtype(vocab_size: int):
    """Smallest unsigned integer dtype that holds every token id."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dt).max:
            return dt
    raise ValueError(vocab_size)  # pragma: no cover


COUNT_POLICIES = ("replace", "accumulate")  # T_g's counts are kept, not its tokens


def keeps_counts(policy: str, counts: bool = True) -> bool:
    """Whether T_g lives as counts: the count policies of a count model."""
    return counts and policy in COUNT_POLICIES


def capacity(policy: str, gen_capacity: int, generations: int, counts: bool = True) -> int:
    """Rows of the synth buffer a policy needs for a whole run (`counts`:
    the model is trained from counts, the n-gram family)."""
    if keeps_counts(policy, counts):
        return 0
    if policy in ("accumulate_subsample", "accumulate"):
        return (generations + 1) * gen_capacity
    return gen_capacity


def keeps_real(policy: str, counts: bool = True) -> bool:
    return policy in ("accumulate_subsample", "mix") or (policy == "accumulate" and not counts)


def state_shapes(policy, real_sequences, seq_len, cap, contexts, vocab_size, dtype, counts=True, model=()) -> CorpusState:
    """(shape, dtype) of each field of one cell's state, as `init_state` makes
    it; `model`: (shape, dtype) of each parameter leaf carried."""
    real_rows = real_sequences if keeps_real(policy, counts) else 0
    count_rows = contexts if keeps_counts(policy, counts) else 0
    return CorpusState(
        ((real_rows, seq_len), np.dtype(dtype)),
        ((cap, seq_len), np.dtype(dtype)),
        ((), np.dtype(np.int32)),
        ((count_rows, vocab_size), np.dtype(np.int32)),
        tuple((tuple(shape), np.dtype(dt)) for shape, dt in model),
    )


def zeros(shapes: CorpusState, n: int) -> CorpusState:
    """A batch of n all-zero states of the given `state_shapes`."""
    z = lambda sd: np.zeros((n, *sd[0]), sd[1])  # noqa: E731
    return CorpusState(*(z(sd) for sd in shapes[:4]), tuple(z(sd) for sd in shapes.model))


def init_state(policy, real_NxL, order, vocab_size, cap, dtype, counts=True, model=()):
    """Corpus state after R is drawn (before S_0 is admitted)."""
    N0, L = real_NxL.shape
    table = jnp.zeros((0, vocab_size), jnp.int32)
    if keeps_counts(policy, counts):
        table = (ngram.fit_counts(real_NxL, jnp.ones(N0, jnp.int32), order, vocab_size) if policy == "accumulate"
                 else jnp.zeros((ngram.num_contexts(order, vocab_size), vocab_size), jnp.int32))
    real = real_NxL.astype(dtype) if keeps_real(policy, counts) else jnp.zeros((0, L), dtype)
    return CorpusState(real, jnp.zeros((cap, L), dtype), jnp.int32(0), table, tuple(model))


def _top_rows(key, n_valid, size, take):
    """`take` distinct row indices drawn uniformly without replacement from
    [0, n_valid) among `size` slots, in random order (valid slots first).

    Each slot gets 30 random bits, offset into the normal range and bitcast
    to float32 (positive floats order like their bit patterns), so the
    selection is XLA's fast float top_k with 2**30 distinct scores; slot j's
    score depends only on (key, j)."""
    bits = (jax.random.bits(key, (size,), jnp.uint32) >> 2) + jnp.uint32(0x00800000)
    score = jax.lax.bitcast_convert_type(bits, jnp.float32)
    score = jnp.where(jnp.arange(size) < n_valid, score, -1.0)
    return jax.lax.top_k(score, take)[1]


def _corpus_rows(state, idx, real_sequences):
    """Rows idx of C_g = R followed by the synth buffer (indices < N0 are R's)."""
    N0, cap = real_sequences, state.synth.shape[0]
    real = state.real[jnp.clip(idx, 0, N0 - 1)]
    synth = state.synth[jnp.clip(idx - N0, 0, cap - 1)]
    return jnp.where((idx < N0)[:, None], real, synth)


def _selection(policy, state, key, real_count, train_sequences, real_sequences, fresh_fn):
    """The rows of T_g for the selecting policies (accumulate_subsample, mix,
    fresh): (rows, weight 0/1 per row, real tokens, total tokens)."""
    N0, L = real_sequences, state.synth.shape[1]
    cap = state.synth.shape[0]
    m = train_sequences
    select_key = jax.random.fold_in(key, SELECT)
    if policy == "accumulate_subsample":
        idx = _top_rows(select_key, N0 + state.n_synth, N0 + cap, m)
        rows = _corpus_rows(state, idx, N0)
        return rows, jnp.ones(m, jnp.int32), jnp.sum(idx < N0).astype(jnp.int32) * L, jnp.int32(m * L)
    # mix / fresh: r real sequences and m - r generated ones
    take_s = min(m, cap)
    s_idx = _top_rows(select_key, state.n_synth, cap, take_s)
    s_rows = state.synth[s_idx]
    s_w = (jnp.arange(take_s) < m - real_count).astype(jnp.int32)
    if policy == "mix":
        take_r = min(m, N0)
        r_idx = _top_rows(jax.random.fold_in(select_key, 1), N0, N0, take_r)
        r_rows = state.real[r_idx]
    else:
        take_r = m
        r_rows = fresh_fn(jax.random.fold_in(key, FRESH), m)
    r_w = (jnp.arange(take_r) < real_count).astype(jnp.int32)
    rows = jnp.concatenate([r_rows.astype(state.synth.dtype), s_rows])
    return rows, jnp.concatenate([r_w, s_w]), real_count * L, jnp.int32(m * L)


def training_counts(policy, state, key, real_count, train_sequences, real_sequences, order, vocab_size, fresh_fn):
    """Counts of T_g for g >= 1, and (real tokens, total tokens) of T_g.

    real_count: int32 r = round(rho * m) (mix / fresh).
    fresh_fn: key, n -> n fresh real sequences (fresh only).
    """
    N0, L = real_sequences, state.synth.shape[1]
    if policy == "replace":
        return state.counts, jnp.int32(0), state.n_synth * L
    if policy == "accumulate":
        return state.counts, jnp.int32(N0 * L), (N0 + state.n_synth) * L
    rows, weight, real_tokens, train_tokens = _selection(policy, state, key, real_count, train_sequences, N0, fresh_fn)
    return ngram.fit_counts(rows, weight, order, vocab_size), real_tokens, train_tokens


def training_rows(policy, state, key, real_count, train_sequences, real_sequences, fresh_fn):
    """T_g for g >= 1 as rows to train on, for a model that trains on tokens:
    (fetch, n, real tokens, total tokens), where fetch(idx) gives the rows
    idx (int32 [B], each in [0, n)) of T_g, int32 [B, L].

    replace and accumulate read the buffers in place (no copy of C_g per
    generation); the selecting policies gather their m rows once, with the
    real rows of mix / fresh first and the generated ones after them.
    """
    N0, L = real_sequences, state.synth.shape[1]
    cap = state.synth.shape[0]
    as_int = lambda rows: rows.astype(jnp.int32)  # noqa: E731
    if policy == "replace":
        return (lambda idx: as_int(state.synth[idx])), state.n_synth, jnp.int32(0), state.n_synth * L
    if policy == "accumulate":
        fetch = lambda idx: as_int(_corpus_rows(state, idx, N0))  # noqa: E731
        return fetch, N0 + state.n_synth, jnp.int32(N0 * L), (N0 + state.n_synth) * L
    rows, weight, real_tokens, train_tokens = _selection(policy, state, key, real_count, train_sequences, N0, fresh_fn)
    m = train_sequences
    if policy != "accumulate_subsample":  # compact: the r weighted real rows, then the m - r generated ones
        take_r = len(rows) - min(m, cap)
        i = jnp.arange(m)
        rows = rows[jnp.where(i < real_count, i, take_r + i - real_count)]
    return (lambda idx: as_int(rows[idx])), jnp.int32(m), real_tokens, train_tokens


def admit(policy, state, sample_kxL, k, counts=None):
    """The corpus after S_g (its first k rows valid) is admitted.

    counts: the counts of S_g's first k rows, for the count policies of a
    count model; None when the model trains on tokens.
    """
    if counts is not None and policy == "replace":
        return state._replace(counts=counts, n_synth=jnp.asarray(k, jnp.int32))
    if counts is not None and policy == "accumulate":
        return state._replace(counts=state.counts + counts, n_synth=state.n_synth + k)
    sample = sample_kxL.astype(state.synth.dtype)
    if policy in ("accumulate_subsample", "accumulate"):
        synth = jax.lax.dynamic_update_slice(state.synth, sample, (state.n_synth, 0))
        return state._replace(synth=synth, n_synth=state.n_synth + k)
    return state._replace(synth=sample, n_synth=jnp.asarray(k, jnp.int32))


# ---------------------------------------------------------------- host form (checkpoints)


def to_host(parts: CorpusState) -> dict[str, np.ndarray]:
    """A batch of cell states as checkpoint arrays.

    Each field of `parts` is a list of host arrays that split the batch along
    its cells axis (one per device shard, viewed in place where the backend
    allows). The synth buffer is packed: only each cell's valid rows
    [0, n_synth) are kept, concatenated in cell order, so a checkpoint of
    accumulate_subsample holds what has been admitted so far, not the
    capacity for the whole run; it is the one copy made of it.
    """
    def cat(xs):
        return np.concatenate(xs) if len(xs) > 1 else np.array(xs[0])

    n_synth = cat(parts.n_synth)
    L = parts.synth[0].shape[2]
    rows, i = [], 0
    for block in parts.synth:
        for cell in block:
            rows.append(cell[: min(int(n_synth[i]), len(cell))])
            i += 1
    packed = np.concatenate(rows) if rows else np.zeros((0, L), parts.synth[0].dtype)
    out = {"real": cat(parts.real), "synth_rows": packed, "n_synth": n_synth, "counts": cat(parts.counts)}
    for i, leaf in enumerate(parts.model):
        out[f"{MODEL_PREFIX}{i:03d}"] = cat(leaf)
    return out


def from_host(arrays: dict[str, np.ndarray], capacity: int) -> CorpusState:
    """The inverse of `to_host`: a batch of full states with `capacity` synth
    rows per cell (which may exceed the capacity they were saved with, when a
    run is extended). Rows past a cell's valid length are zero; no policy
    reads them (DESIGN §7.4)."""
    real, rows, n_synth = arrays["real"], arrays["synth_rows"], arrays["n_synth"]
    n, L = len(n_synth), real.shape[2]
    valid = np.minimum(n_synth, capacity).astype(np.int64)
    if int(valid.sum()) != len(rows):
        raise ValueError(f"{len(rows)} packed rows for {int(valid.sum())} valid rows")
    synth = np.zeros((n, capacity, L), rows.dtype)
    if capacity:
        synth[np.arange(capacity)[None, :] < valid[:, None]] = rows
    model = tuple(arrays[name] for name in sorted(a for a in arrays if a.startswith(MODEL_PREFIX)))
    return CorpusState(real, synth, n_synth.astype(np.int32), arrays["counts"], model)
