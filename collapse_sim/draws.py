"""Row indices drawn uniformly without replacement, for the corpus policies
that subsample (accumulate_subsample's T_g, mix and fresh).

`top_rows` ranks random scores over a fixed number of slots (O(slots));
`distinct_rows` draws m rows of a corpus that grows with the run in time and
memory O(m) whatever its size: it ranks the first WINDOW m slots while the
corpus holds at most that many rows, then draws with replacement and redraws
repeats. `later_repeats` and `new_repeats` find the repeats (one stable sort
of the m indices; then, in each later round, only the redrawn positions
against all m, CHUNK at a time, which costs a small fraction of a sort and
flags exactly the same positions).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from collapse_sim.kernels import rng

WINDOW = 4  # distinct_rows ranks at most WINDOW * m slots
CHUNK = 64  # redrawn positions compared against all m at once (new_repeats)


def top_rows(key, n_valid, size, take):
    """`take` distinct row indices drawn uniformly without replacement from
    [0, n_valid) among `size` slots, in random order (valid slots first).

    Each slot gets 30 random bits, offset into the normal range and bitcast
    to float32 (positive floats order like their bit patterns), so the
    selection is XLA's fast float top_k with 2**30 distinct scores; slot j's
    score depends only on (key, j)."""
    bits = (rng.bits32(key, (size,)) >> 2) + jnp.uint32(0x00800000)
    score = jax.lax.bitcast_convert_type(bits, jnp.float32)
    score = jnp.where(jnp.arange(size) < n_valid, score, -1.0)
    return jax.lax.top_k(score, take)[1]


def later_repeats(idx):
    """bool [m]: position i holds a value some position j < i holds."""
    take = idx.shape[0]
    order = jnp.argsort(idx, stable=True)  # equal indices in position order
    s = idx[order]
    later = jnp.concatenate([jnp.zeros(1, bool), s[1:] == s[:-1]])
    return jnp.zeros(take, bool).at[order].set(later)


def new_repeats(idx, changed):
    """`later_repeats(idx)` when idx had no repeat once the positions
    `changed` (bool [m]) are left out: only pairs with a changed position
    can be equal, so each changed position is compared with all m (CHUNK
    changed positions at a time, as many rounds as needed)."""
    take = idx.shape[0]
    pos = jnp.arange(take)

    def chunk(carry):
        todo, flags = carry
        p = jnp.nonzero(todo, size=CHUNK, fill_value=take)[0]
        live = p < take
        q = jnp.minimum(p, take - 1)
        eq = (idx[None, :] == idx[q][:, None]) & live[:, None]  # [CHUNK, m]
        flags = flags | jnp.any(eq & (pos[None, :] > p[:, None]), axis=0)  # later positions repeat p
        mine = jnp.any(eq & (pos[None, :] < p[:, None]), axis=1)  # p repeats an earlier position
        flags = flags.at[p].set(mine | flags[q], mode="drop")
        return todo.at[p].set(False, mode="drop"), flags

    return jax.lax.while_loop(lambda c: jnp.any(c[0]), chunk, (changed, jnp.zeros(take, bool)))[1]


def distinct_rows(key, n_valid, size, take, bounds=None):
    """`take` distinct row indices drawn uniformly without replacement from
    [0, n_valid) (n_valid >= take, slots beyond `size` never valid), in
    uniformly random order, in time and memory O(WINDOW take) whatever
    `size` (a corpus buffer that grows with the run).

    While n_valid <= WINDOW take: `top_rows` over the first WINDOW take
    slots (where every valid row lies); a slot's score depends only on (key,
    slot), so this is exactly the draw of `top_rows` over the whole buffer
    (0.2's sampler). Beyond: draw take indices with replacement (round 1),
    then redraw every repeat of an index already drawn at an earlier
    position (round r: fold_in(key, r)), until none is left (a draw collides
    with probability below 1/WINDOW: a few rounds). Every step treats all
    indices alike, so the ordered result is uniform over the ordered tuples
    of distinct indices, the exact law of a draw without replacement
    (chi-square tests in tests/test_corpus.py).

    Under vmap a per-cell choice runs both ways; `bounds` = (lowest,
    highest) n_valid of the batch (unbatched) runs only the way every cell
    takes when they agree. A cell's draw is the same either way.
    """
    window = min(size, WINDOW * take)

    def fresh(r):
        return jax.random.randint(jax.random.fold_in(key, r), (take,), 0, jnp.maximum(n_valid, 1))

    def redraw(carry):
        idx, dup, r = carry
        idx = jnp.where(dup, fresh(r), idx)
        return idx, new_repeats(idx, dup), r + 1

    def ranked():
        return top_rows(key, n_valid, window, take)

    def redrawn():  # no rounds while the ranking serves (they would be a coupon collector's)
        beyond = n_valid > window
        idx = jnp.where(beyond, fresh(1), 0)
        start = (idx, later_repeats(idx) & beyond, jnp.int32(2))
        return jax.lax.while_loop(lambda c: jnp.any(c[1]), redraw, start)[0]

    def either():
        return jnp.where(n_valid <= window, ranked(), redrawn())

    if bounds is None:
        return either()
    lowest, highest = bounds
    return jax.lax.switch(jnp.where(highest <= window, 0, jnp.where(lowest > window, 1, 2)), [ranked, redrawn, either])
