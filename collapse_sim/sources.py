"""The real world: categorical, markov and text sources, with exact truth where it exists.

A source is built once per run on the host (`build_source`) and then sampled
inside jitted code (`Source.sample`) for the real set R, the held-out set and
the `fresh` policy's new real data.

Categorical and markov sources are exactly n-gram models: a markov chain of
order k whose sequences start in the stationary distribution is an order-(k+1)
n-gram table in the BOS layout of kernels/ngram.py, whose start rows hold the
stationary conditionals P(x_{j+1} | x_1..x_j). So both are sampled by the same
kernel as the models, and the truth metrics use the stationary joint of
(m+1)-grams for a model of context length m.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from collapse_sim.config import ConfigError, SourceConfig
from collapse_sim.kernels import ngram, sampling

BUILTIN_TEXT = "pydoc_topics.txt.gz"
HELDOUT_SHARE = 0.1  # the last tenth of a text is held out, never trained on
MAX_SOURCE_ENTRIES = 1 << 25  # a markov table larger than this (256 MiB of float64) is refused


@dataclass(frozen=True)
class Sampler:
    """The static part of a source that drawing from it needs (hashable: a
    compiled program is keyed by it); the arrays come from
    `Source.device_arrays`."""

    kind: str
    vocab_size: int
    table_order: int = 0

    def sample(self, arrays: dict, key, n: int, seq_len: int):
        """n sequences of seq_len real tokens, int32 [n, seq_len] (pure, jit-able)."""
        if self.kind == "text":
            return _windows(arrays["text"], key, n, seq_len)
        return ngram.sample(key, arrays["cdf"], self.table_order, self.vocab_size, n, seq_len)


# the held-out draw as one program each (a new process traces and compiles it
# once, not op by op)
_heldout_draw = jax.jit(
    lambda sampler, arrays, key, n, seq_len: sampler.sample(arrays, key, n, seq_len), static_argnums=(0, 3, 4)
)
_heldout_windows = jax.jit(lambda text, key, n, seq_len: _windows(text, key, n, seq_len), static_argnums=(2, 3))


@dataclass(frozen=True)
class Source:
    """A source, ready to sample. Arrays are numpy; `device_arrays` moves them."""

    kind: str
    vocab_size: int
    digest: str  # content identity: same digest, same world
    table_order: int = 0  # categorical/markov: order of the n-gram table that samples it
    table_cdf: np.ndarray | None = None  # uint32 [C, W]
    text_train: np.ndarray | None = None  # int32 [T]: the region R and fresh data come from
    text_heldout: np.ndarray | None = None  # int32 [H]: the held-out region
    chars: str | None = None  # text: token id -> character
    markov_order: int = 0  # k: context length of the true chain (0 = i.i.d.)
    stationary: np.ndarray | None = None  # float64 [V**k]: stationary k-gram distribution
    transitions: np.ndarray | None = None  # float64 [V**k, V]: P(next | k-gram)

    @property
    def has_truth(self) -> bool:
        return self.kind != "text"

    def device_arrays(self) -> dict:
        if self.kind == "text":
            return {"text": jax.device_put(self.text_train)}
        return {"cdf": jax.device_put(self.table_cdf)}

    @property
    def sampler(self) -> Sampler:
        return Sampler(self.kind, self.vocab_size, self.table_order)

    def sample(self, arrays: dict, key, n: int, seq_len: int):
        """n sequences of seq_len real tokens, int32 [n, seq_len] (pure, jit-able)."""
        return self.sampler.sample(arrays, key, n, seq_len)

    def heldout(self, key, n: int, seq_len: int) -> np.ndarray:
        """The held-out set: int32 [n, seq_len], never trained on."""
        if self.kind == "text":
            return np.asarray(_heldout_windows(self.text_heldout, key, n, seq_len))
        return np.asarray(_heldout_draw(self.sampler, self.device_arrays(), key, n, seq_len))

    def truth(self, context_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Stationary weight of each context of length m and P(next | context).

        Returns (weight [V**m] float64 summing to 1, cond [V**m, V] float64),
        contexts indexed in radix V, oldest token most significant.
        """
        joint = stationary_joint(self.stationary, self.transitions, self.markov_order, context_len + 1)
        V = self.vocab_size
        joint = joint.reshape(V**context_len, V)
        weight = joint.sum(axis=1)
        safe = np.where(weight > 0, weight, 1.0)[:, None]
        cond = np.where(weight[:, None] > 0, joint / safe, 1.0 / V)
        return weight, cond


def _windows(text_T, key, n, seq_len):
    """n windows of seq_len tokens at uniform random offsets of a text, int32 [n, seq_len]."""
    start_n = jax.random.randint(key, (n,), 0, text_T.shape[0] - seq_len + 1)
    return text_T[start_n[:, None] + jnp.arange(seq_len)[None, :]]


# ---------------------------------------------------------------- exact truth


def stationary_joint(stationary, transitions, k: int, length: int) -> np.ndarray:
    """Stationary probability of every `length`-gram, float64 [V**length]."""
    V = transitions.shape[1]
    if length <= k:
        return stationary.reshape(V ** (k - length), V**length).sum(axis=0)
    joint = stationary
    for j in range(k, length):
        last = np.arange(V**j) % (V**k)  # index of the last k tokens
        joint = (joint[:, None] * transitions[last]).reshape(-1)
    return joint


def _step(pi, transitions, k):
    """One step of the k-gram chain: the distribution of the next k-gram."""
    V = transitions.shape[1]
    rest = V ** (k - 1)
    return np.einsum("ar,arv->rv", pi.reshape(V, rest), transitions.reshape(V, rest, V)).reshape(-1)


def markov_stationary(transitions: np.ndarray, k: int, where: str = "") -> np.ndarray:
    """Stationary distribution of the order-k chain over k-grams, float64 [V**k].

    Up to 1024 states: solved exactly as a linear system. Larger, or when the
    solve leaves the simplex (a reducible chain): power iteration of the lazy
    chain (I + P) / 2, which has the same stationary distributions and no
    period. A result whose residual |pi P - pi|_1 exceeds 1e-9 is refused.
    """
    V = transitions.shape[1]
    S = V**k
    pi = None
    if S <= 1024:
        P = np.zeros((S, S))
        src = np.arange(S)
        base = (src % V ** (k - 1)) * V
        for v in range(V):
            P[src, base + v] += transitions[:, v]
        A = np.vstack([P.T - np.eye(S), np.ones((1, S))])
        b = np.zeros(S + 1)
        b[-1] = 1.0
        pi = np.linalg.lstsq(A, b, rcond=None)[0]
        if pi.min() < -1e-12:
            pi = None
    if pi is None:
        pi = np.full(S, 1.0 / S)
        for _ in range(20_000):
            new = 0.5 * (pi + _step(pi, transitions, k))
            if np.abs(new - pi).sum() < 1e-14:
                pi = new
                break
            pi = new
    pi = np.clip(pi, 0.0, None)
    pi /= pi.sum()
    residual = np.abs(_step(pi, transitions, k) - pi).sum()
    if residual > 1e-9:
        raise ConfigError(
            where,
            "source.concentration",
            f"the order-{k} chain over {V} tokens did not settle to a stationary distribution "
            f"(residual {residual:.1e}); raise source.concentration or lower source.order",
        )
    return pi


def bos_table(stationary, transitions, k: int) -> np.ndarray:
    """The order-(k+1) n-gram table (BOS layout) whose sequences are the chain's.

    Rows for contexts with j < k real tokens hold P(x_{j+1} | x_1..x_j) under
    stationarity; full rows hold the transitions. float64 [(V+1)**k, V].
    """
    V = transitions.shape[1]
    table = np.full(((V + 1) ** k, V), 1.0 / V)
    for j in range(k + 1):
        joint = stationary_joint(stationary, transitions, k, j + 1).reshape(V**j, V)
        marg = joint.sum(axis=1, keepdims=True)
        cond = np.where(marg > 0, joint / np.where(marg > 0, marg, 1.0), 1.0 / V)
        table[bos_rows(j, k, V)] = cond
    return table


def bos_rows(j: int, m: int, V: int) -> np.ndarray:
    """Table rows (BOS layout, context length m) of the contexts made of m - j
    BOS symbols then j tokens, for every j-token tuple in radix-V order
    (oldest token most significant). int64 [V**j]."""
    digits = np.indices((V,) * j).reshape(j, -1) if j else np.zeros((0, 1), np.int64)
    idx = np.zeros(digits.shape[1], np.int64)
    for t in range(m):
        d = np.full(digits.shape[1], V) if t < m - j else digits[t - (m - j)]
        idx = idx * (V + 1) + d
    return idx


def host_cdf(probs_CxV: np.ndarray) -> np.ndarray:
    """Integer CDF rows in the layout of kernels/sampling.cdf_row, from float64."""
    C, V = probs_CxV.shape
    width = sampling.cdf_width(V)
    w = np.floor(probs_CxV * sampling.CDF_TOTAL).astype(np.int64)
    w = np.where(probs_CxV > 0, np.maximum(w, 1), 0)
    w[np.arange(C), np.argmax(probs_CxV, axis=1)] += sampling.CDF_TOTAL - w.sum(axis=1)
    out = np.full((C, width), sampling.CDF_TOTAL, np.int64)
    out[:, :V] = np.cumsum(w, axis=1)
    return out.astype(np.uint32)


# ---------------------------------------------------------------- building


def load_text(path: str | None, where: str) -> str:
    """The text of a text source; the built-in corpus when path is None."""
    if path is None:
        ref = resources.files("collapse_sim") / "data" / BUILTIN_TEXT
        with ref.open("rb") as f:
            return gzip.decompress(f.read()).decode("utf-8")
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(where, "source.path", f"no such file: {path}") from None
    except OSError as e:
        raise ConfigError(where, "source.path", f"cannot read {path}: {e.strerror or e}") from None
    if not data.strip():
        raise ConfigError(where, "source.path", f"{path} is empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(where, "source.path", f"{path} is not UTF-8 text (bad byte at offset {e.start})") from None


def build_source(cfg: SourceConfig, seq_len: int, where: str) -> Source:
    """Build the source a config describes; ConfigError for unusable input."""
    if cfg.kind == "text":
        text = load_text(cfg.path, where)
        chars = "".join(sorted(set(text)))
        lookup = {c: i for i, c in enumerate(chars)}
        tokens = np.fromiter((lookup[c] for c in text), np.int32, len(text))
        split = len(tokens) - max(seq_len, int(len(tokens) * HELDOUT_SHARE))
        if split < seq_len:
            raise ConfigError(
                where,
                "source.path" if cfg.path else "real.seq_len",
                f"the text has {len(tokens)} characters; real.seq_len = {seq_len} needs at least "
                f"{2 * seq_len} (a training part and a held-out part of one sequence each)",
            )
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return Source("text", len(chars), digest, text_train=tokens[:split], text_heldout=tokens[split:], chars=chars)
    if cfg.kind == "categorical":
        if cfg.probs is not None:
            p = np.asarray(cfg.probs, np.float64)
        else:
            p = np.arange(1, cfg.vocab_size + 1, dtype=np.float64) ** -cfg.zipf
        p = p / p.sum()
        stationary, transitions, k = np.ones(1), p[None, :], 0
    else:
        k, V = cfg.order, cfg.vocab_size
        if (V + 1) ** k * V > MAX_SOURCE_ENTRIES:
            raise ConfigError(
                where,
                "source.order",
                f"a markov source of order {k} over {V} tokens needs a table of {(V + 1) ** k * V:,} "
                f"entries (float64); the limit is {MAX_SOURCE_ENTRIES:,}",
            )
        rng = np.random.default_rng(cfg.seed)
        transitions = rng.dirichlet(np.full(V, cfg.concentration), size=V**k)
        stationary = markov_stationary(transitions, k, where)
    table = bos_table(stationary, transitions, k)
    digest = hashlib.sha256(table.tobytes()).hexdigest()
    return Source(
        cfg.kind,
        transitions.shape[1],
        digest,
        table_order=k + 1,
        table_cdf=host_cdf(table),
        markov_order=k,
        stationary=stationary,
        transitions=transitions,
    )


def entropy_rate(source: Source) -> float:
    """The true chain's entropy rate in nats per token (categorical/markov)."""
    t = source.transitions
    h = -np.sum(np.where(t > 0, t * np.log(np.where(t > 0, t, 1.0)), 0.0), axis=1)
    return float(np.sum(source.stationary * h))
