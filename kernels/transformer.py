"""Tiny decoder-only transformers: Flax Linen modules, optax training in one
`lax.scan`, ancestral sampling with a KV cache. One cell at a time; the
engine vmaps cells (parameters, optimizer state, data and keys all carry the
cells axis).

Layout. A sequence of L tokens in [0, V) is read with BOS = V in front: the
input at position t is BOS for t = 0, else token t - 1, and the output at t
is the distribution of token t. So the first output is the model's start
distribution, as for the n-gram family, and one forward pass scores all L
tokens. Blocks are pre-norm: x + Attn(LN(x)), then x + MLP(LN(x)); attention
is causal multi-head with one fused QKV projection; the MLP is
Dense(mlp_ratio * d) -> GELU -> Dense(d). Token and learned position
embeddings; the output is a Dense(V) head, or the token embedding's
transpose when `tie` (BOS's logit dropped). Parameters are float32; `dtype`
is the compute dtype (bfloat16 allowed on GPU); softmax, layer norms and the
loss are float32.

Why Linen: `init` and `apply` are pure functions of a parameter pytree, so a
cells axis is one `jax.vmap` over parameters and optimizer state, with
nothing to split or merge per call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from . import metrics, sampling


@dataclass(frozen=True)
class Arch:
    """The static shape of a model (every cell of a group shares it)."""

    vocab_size: int  # V, output tokens; inputs add BOS = V
    seq_len: int  # L
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    tie: bool = False
    dtype: str = "float32"

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)


def _onehot(tokens, n):
    """float32 one-hot rows: an embedding lookup (and the loss's pick) as a
    matmul, whose gradient is a matmul too, where a gather's is a scatter-add
    (slow on CPU, and serial per cell under vmap)."""
    ids = jnp.arange(n, dtype=jnp.int32).reshape((1,) * tokens.ndim + (n,))
    return (tokens[..., None].astype(jnp.int32) == ids).astype(jnp.float32)


def _scaled(q, arch: Arch):
    """q / sqrt(dh): scaled on [T, dh], not on the [T, S] scores."""
    return q * jnp.asarray(1.0 / math.sqrt(arch.head_dim), q.dtype)


def _bias(mask):
    """The mask as an additive float32 bias (no select in the gradient), [1, 1, *mask.shape]."""
    return jnp.where(mask, 0.0, -1e30).astype(jnp.float32)[None, None]


def _attend(q, k, v, mask, arch: Arch):
    """Scaled dot-product attention, softmax in float32. q [B,T,H,dh], k/v
    [B,S,H,dh], mask [T,S] -> [B,T,H,dh]."""
    return _attention(_scaled(q, arch), k, v, _bias(mask))


def _attention_fwd(q, k, v, bias):
    s = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)  # bf16 inputs, f32 scores
    p = jax.nn.softmax(s + bias, axis=-1)
    pv = p.astype(v.dtype)
    return jnp.einsum("bhts,bshd->bthd", pv, v), (q, k, v, p)


def _attention_bwd(res, do):
    """The gradient autodiff would give, with every contraction written in the
    layout its forward used: XLA's CPU backend otherwise lowers dq and dk to
    strided batched dots several times slower per FLOP (measurements:
    benchmarks/RESULTS.md). Tested against central differences of the numpy
    reference (tests/kernels/test_transformer.py)."""
    q, k, v, p = res
    dv = jnp.einsum("bhts,bthd->bshd", p.astype(do.dtype), do)
    dp = jnp.einsum("bthd,bshd->bhts", do, v, preferred_element_type=jnp.float32)
    ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))
    ds = ds.astype(q.dtype)
    dq = jnp.einsum("bhts,bshd->bthd", ds, k)
    dk = jnp.einsum("bhts,bthd->bshd", ds, q)
    return dq, dk, dv, None


@jax.custom_vjp
def _attention(q, k, v, bias):
    """softmax(q k^T + bias) v over heads: q [B,T,H,dh], k/v [B,S,H,dh],
    bias [1,1,T,S] (float32, not differentiated)."""
    return _attention_fwd(q, k, v, bias)[0]


_attention.defvjp(_attention_fwd, _attention_bwd)


def _dense_fwd(x, w):
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ()))), (x, w)


def _dense_bwd(res, dy):
    """The gradients autodiff gives, except that a kernel with more inputs
    than outputs gets its gradient as (dy^T x)^T: XLA's CPU backend runs a
    product that contracts the positions about 1.7x faster when its output
    is wide (measurements: benchmarks/RESULTS.md). The barrier keeps XLA from
    folding the transpose back into the product. Tested against numpy
    (tests/kernels/test_transformer.py)."""
    x, w = res
    dx = jax.lax.dot_general(dy, w, (((dy.ndim - 1,), (1,)), ((), ())))
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    if w.shape[0] > w.shape[1]:
        dw = jax.lax.optimization_barrier(jax.lax.dot_general(dy2, x2, (((0,), (0,)), ((), ())))).T
    else:
        dw = jax.lax.dot_general(x2, dy2, (((0,), (0,)), ((), ())))
    return dx, dw


@jax.custom_vjp
def _dense_product(x, w):
    """x [..., K] @ w [K, D], as nn.Dense computes it."""
    return _dense_fwd(x, w)[0]


_dense_product.defvjp(_dense_fwd, _dense_bwd)


def _dense_dot(x, w, dimension_numbers, precision=None, preferred_element_type=None):
    """nn.Dense's product (its `dot_general` argument), with the backward pass of `_dense_product`."""
    assert dimension_numbers == (((x.ndim - 1,), (0,)), ((), ())) and precision is None, dimension_numbers
    return _dense_product(x, w)


def _dense(features: int, dtype) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, dot_general=_dense_dot)


class Attention(nn.Module):
    arch: Arch

    def setup(self):
        dt = self.arch.compute_dtype
        self.qkv = _dense(3 * self.arch.d_model, dt)
        self.proj = _dense(self.arch.d_model, dt)

    def _qkv(self, x_NxD, B):
        a = self.arch
        # split, not indexed: the gradient is one concatenation, where three
        # slices' gradients are three zero-padded copies added together
        q, k, v = jnp.split(self.qkv(x_NxD), 3, axis=-1)
        return tuple(y.reshape(B, -1, a.heads, a.head_dim) for y in (q, k, v))

    def __call__(self, x_NxD, B):
        """x: the B sequences' positions, flattened [B * T, d]."""
        q, k, v = self._qkv(x_NxD, B)
        T = q.shape[1]
        mask = jnp.tril(jnp.ones((T, T), bool))
        return self.proj(_attend(q, k, v, mask, self.arch).reshape(x_NxD.shape))

    def decode(self, x_BxD, pos, cache):
        """One position per sequence: x [B, d]; the cache (k [B, H, dh, L],
        v [B, H, L, dh]) holds positions < pos. Keys are kept transposed, each
        in the layout its product reads, so no step copies the whole cache
        into another layout (XLA's CPU backend did, for every position)."""
        a = self.arch
        q, k, v = self._qkv(x_BxD, x_BxD.shape[0])  # [B, 1, H, dh]
        ck, cv = cache
        ck = jax.lax.dynamic_update_slice(ck, k.transpose(0, 2, 3, 1).astype(ck.dtype), (0, 0, 0, pos))
        cv = jax.lax.dynamic_update_slice(cv, v.transpose(0, 2, 1, 3).astype(cv.dtype), (0, 0, pos, 0))
        s = jnp.einsum("bhd,bhds->bhs", _scaled(q[:, 0], a), ck, preferred_element_type=jnp.float32)
        p = jax.nn.softmax(s + _bias(jnp.arange(a.seq_len) <= pos), axis=-1).astype(cv.dtype)
        return self.proj(jnp.einsum("bhs,bhsd->bhd", p, cv).reshape(x_BxD.shape)), (ck, cv)


class Block(nn.Module):
    """Pre-norm block on flattened positions [N, d]: layer norms and dense
    layers see one 2-D matrix per cell (under vmap, a batched matmul whose
    gradient contracts one axis, not two)."""

    arch: Arch

    def setup(self):
        a = self.arch
        dt = a.compute_dtype
        self.ln1 = nn.LayerNorm(dtype=jnp.float32)
        self.attn = Attention(a)
        self.ln2 = nn.LayerNorm(dtype=jnp.float32)
        self.up = _dense(a.mlp_ratio * a.d_model, dt)
        self.down = _dense(a.d_model, dt)

    def _mlp(self, x):
        return self.down(nn.gelu(self.up(self.ln2(x).astype(self.arch.compute_dtype))))

    def __call__(self, x, B):
        x = x + self.attn(self.ln1(x).astype(self.arch.compute_dtype), B).astype(x.dtype)
        return x + self._mlp(x).astype(x.dtype)

    def decode(self, x, pos, cache):
        h, cache = self.attn.decode(self.ln1(x).astype(self.arch.compute_dtype), pos, cache)
        x = x + h.astype(x.dtype)
        return x + self._mlp(x).astype(x.dtype), cache


class Transformer(nn.Module):
    arch: Arch

    def setup(self):
        a = self.arch
        self.embed = nn.Embed(a.vocab_size + 1, a.d_model, embedding_init=nn.initializers.normal(0.02))
        self.pos = self.param("pos", nn.initializers.normal(0.02), (a.seq_len, a.d_model))
        self.blocks = [Block(a) for _ in range(a.layers)]
        self.ln_f = nn.LayerNorm(dtype=jnp.float32)
        if not a.tie:
            self.head = _dense(a.vocab_size, a.compute_dtype)

    def _logits(self, h):
        h = self.ln_f(h).astype(self.arch.compute_dtype)
        if self.arch.tie:
            return self.embed.attend(h)[..., : self.arch.vocab_size].astype(jnp.float32)
        return self.head(h).astype(jnp.float32)

    def __call__(self, tokens_BxL):
        """Logits of every position, float32 [B, L, V] (position t: token t given tokens < t)."""
        a = self.arch
        B, L = tokens_BxL.shape
        inputs = jnp.concatenate([jnp.full((B, 1), a.vocab_size, tokens_BxL.dtype), tokens_BxL[:, :-1]], axis=1)
        # HIGHEST: a lookup must not be rounded (GPUs may run float32 matmuls in TF32)
        x = jnp.matmul(
            _onehot(inputs.reshape(-1), a.vocab_size + 1), self.embed.embedding, precision=jax.lax.Precision.HIGHEST
        )
        x = (x.reshape(B, L, -1) + self.pos[None, :L]).reshape(B * L, -1)
        for block in self.blocks:
            x = block(x, B)
        return self._logits(x).reshape(B, L, -1)

    def decode(self, prev_B, pos, caches):
        """Logits of position `pos` given the token before it (BOS at 0) and the caches."""
        x = self.embed(prev_B).astype(jnp.float32) + jax.lax.dynamic_slice_in_dim(self.pos, pos, 1)
        new = []
        for block, cache in zip(self.blocks, caches):
            x, cache = block.decode(x, pos, cache)
            new.append(cache)
        return self._logits(x), tuple(new)


def init(arch: Arch, key) -> dict:
    """Fresh parameters of one model."""
    return Transformer(arch).init(key, jnp.zeros((1, arch.seq_len), jnp.int32))["params"]


def logits(arch: Arch, params, tokens_BxL):
    return Transformer(arch).apply({"params": params}, tokens_BxL)


def _log_probs(arch: Arch, params, tokens_BxL):
    """(ln M(. | prefix) [B, L, V], ln M(token | prefix) [B, L]); the pick is a
    one-hot product, whose gradient is no scatter."""
    logp = jax.nn.log_softmax(logits(arch, params, tokens_BxL), axis=-1)
    return logp, jnp.sum(logp * _onehot(tokens_BxL, arch.vocab_size), axis=-1)


def token_log_probs(arch: Arch, params, tokens_BxL):
    """ln M(token | prefix) of every position, float32 [B, L]."""
    return _log_probs(arch, params, tokens_BxL)[1]


def nll(arch: Arch, params, tokens_BxL):
    """Mean negative log-likelihood per token (nats) over the sequences."""
    tok_nll = -_log_probs(arch, params, tokens_BxL)[1]
    return jnp.mean(jnp.mean(tok_nll, axis=-1))


def optimizer(learning_rate, weight_decay, steps: int, warmup: int, schedule: str, clip: float):
    """AdamW after global-norm clipping; `learning_rate` and `weight_decay` may
    be traced (a sweep of them compiles once). schedule: 'cosine' (linear
    warm-up, then cosine decay to 0 at `steps`) or 'constant' (after warm-up)."""
    warmup = max(0, min(warmup, steps))

    def lr(count):
        c = count.astype(jnp.float32)
        ramp = jnp.minimum(1.0, (c + 1.0) / max(warmup, 1)) if warmup else 1.0
        if schedule == "cosine":
            frac = jnp.clip((c - warmup) / max(steps - warmup, 1), 0.0, 1.0)
            return learning_rate * ramp * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
        return learning_rate * ramp

    return optax.chain(optax.clip_by_global_norm(clip), optax.adamw(lr, weight_decay=weight_decay))


def train(arch: Arch, tx, params, key, rows, n_valid, steps: int, batch: int):
    """`steps` AdamW steps on batches drawn uniformly (with replacement) from
    the first `n_valid` rows; one lax.scan. Returns (params, losses [steps]).

    rows: an array [N, L], or a function idx [batch] -> rows [batch, L] (a
    training set read in place from the corpus buffers).
    The optimizer state starts fresh (a new run of AdamW and its schedule for
    every generation, whether the parameters are fresh or continued)."""
    fetch = rows if callable(rows) else (lambda idx: rows[idx])

    def loss_fn(p, x):
        return nll(arch, p, x)

    def step(carry, i):
        p, opt_state = carry
        idx = jax.random.randint(jax.random.fold_in(key, i), (batch,), 0, jnp.maximum(n_valid, 1))
        loss, grads = jax.value_and_grad(loss_fn)(p, fetch(idx))
        updates, opt_state = tx.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), jnp.arange(steps))
    return params, losses


def init_caches(arch: Arch, n: int):
    """Per layer, keys [n, H, dh, L] and values [n, H, L, dh] (Attention.decode)."""
    k = (n, arch.heads, arch.head_dim, arch.seq_len)
    v = (n, arch.heads, arch.seq_len, arch.head_dim)
    return tuple((jnp.zeros(k, arch.compute_dtype), jnp.zeros(v, arch.compute_dtype)) for _ in range(arch.layers))


def decode_step(arch: Arch, params, prev_N, pos, caches):
    return Transformer(arch).apply({"params": params}, prev_N, pos, caches, method=Transformer.decode)


def sample(arch: Arch, params, key, n: int, temperature, top_k, top_p):
    """n sequences of L tokens, int32 [n, L], by ancestral sampling with a KV
    cache: one lax.scan over positions, each token drawn through the same
    filter (temperature, top-k, top-p) and integer CDF as the n-gram family.
    Draws at position t are 31 bits from fold_in(key, t), so sequence j
    depends only on (key, j)."""
    V = arch.vocab_size
    width = sampling.cdf_width(V)

    def cdf(logits_V):
        probs = jax.nn.softmax(logits_V.astype(jnp.float32))
        # a diverged model (non-finite logits; the engine flags its cell) draws
        # uniform tokens, so every token id stays in [0, V)
        probs = jnp.where(jnp.all(jnp.isfinite(logits_V)), probs, 1.0 / V)
        return sampling.cdf_row(sampling.filter_probs(probs, temperature, top_k, top_p), width)

    def step(carry, pos):
        prev_N, caches, r_N = carry
        logits_NxV, caches = decode_step(arch, params, prev_N, pos, caches)
        cdf_NxW = jax.vmap(cdf)(logits_NxV)
        tok_N = sampling.search_cdf(cdf_NxW, None, r_N)
        return (tok_N, caches, sampling.position_bits(key, pos + 1, n)), tok_N

    start = (jnp.full((n,), V, jnp.int32), init_caches(arch, n), sampling.position_bits(key, 0, n))
    _, tokens_LxN = jax.lax.scan(step, start, jnp.arange(arch.seq_len))
    return tokens_LxN.T


def position_sums(arch: Arch, params, tokens_NxL, truth_NxLxV=None):
    """Per-sequence sums over positions of the held-out statistics, float32 [N] each:
    `nll` (-ln M(token | its prefix)), `entropy` (of M's next-token
    distribution) and, given the true next-token distribution of every
    position, `kl` (KL(P || M)), `tv` (1/2 sum |P - M|) and `sq` (sum (P - M)^2)."""
    logp, tok_logp = _log_probs(arch, params, tokens_NxL)
    p = jnp.exp(logp)
    out = {
        "nll": -jnp.sum(tok_logp, axis=-1),
        "entropy": -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=(-1, -2)),
    }
    if truth_NxLxV is not None:  # the n-gram family's per-row divergences, summed over positions
        kl, tv, sq = metrics.divergence_rows(p, truth_NxLxV.astype(jnp.float32))
        out.update(kl=jnp.sum(kl, axis=-1), tv=jnp.sum(tv, axis=-1), sq=jnp.sum(sq, axis=-1))
    return out
