"""Plain numpy references for every kernel, written for clarity, not speed."""

from __future__ import annotations

import numpy as np


def context_of(seq, i, order, V):
    """BOS-padded context row of position i (radix V+1, oldest digit first)."""
    idx = 0
    for j in range(i - (order - 1), i):
        idx = idx * (V + 1) + (seq[j] if j >= 0 else V)
    return idx


def counts(tokens, weights, order, V):
    C = (V + 1) ** (order - 1)
    out = np.zeros((C, V), np.int64)
    for seq, w in zip(tokens, weights):
        for i in range(len(seq)):
            out[context_of(seq, i, order, V), seq[i]] += w
    return out


def probs(counts_CxV, smoothing):
    """Lidstone rows; a context never seen backs off to the training set's unigram."""
    C, V = counts_CxV.shape
    unigram = counts_CxV.sum(axis=0)
    out = np.empty((C, V))
    for c in range(C):
        row = counts_CxV[c] if counts_CxV[c].sum() > 0 else unigram
        n = row.sum()
        out[c] = (row + smoothing) / (n + V * smoothing) if n + V * smoothing > 0 else 1.0 / V
    return out


def filter_probs(p, temperature, top_k, top_p):
    p = np.asarray(p, np.float64)
    V = len(p)
    if temperature == 0:
        w = np.zeros(V)
        w[int(np.argmax(p))] = 1.0
    else:
        with np.errstate(divide="ignore"):
            w = np.where(p > 0, np.exp((np.log(p) - np.log(p.max())) / temperature), 0.0)
    order = sorted(range(V), key=lambda i: (-w[i], i))
    if top_k > 0:
        for i in order[top_k:]:
            w[i] = 0.0
    q = w / w.sum()
    if top_p < 1:
        mass, keep = 0.0, set()
        for i in order:
            if mass < top_p:
                keep.add(i)
            mass += q[i]
        w = np.array([w[i] if i in keep else 0.0 for i in range(V)])
    return w / w.sum()


def heldout_nll(probs_CxV, heldout, order):
    V = probs_CxV.shape[1]
    total, n = 0.0, 0
    for seq in heldout:
        for i in range(len(seq)):
            p = probs_CxV[context_of(seq, i, order, V), seq[i]]
            total += -np.log(p) if p > 0 else np.inf
            n += 1
    return total / n


def heldout_entropy(probs_CxV, heldout, order):
    V = probs_CxV.shape[1]
    hs = []
    for seq in heldout:
        for i in range(len(seq)):
            row = probs_CxV[context_of(seq, i, order, V)]
            hs.append(-sum(x * np.log(x) for x in row if x > 0))
    return float(np.mean(hs))


def distinct_2(tokens):
    pairs = [(s[i], s[i + 1]) for s in tokens for i in range(len(s) - 1)]
    return len(set(pairs)) / len(pairs)


def unique_seq(tokens):
    return len({tuple(s) for s in tokens}) / len(tokens)


def divergences(model_FxV, true_FxV, weight_F):
    kl = tv = sq = 0.0
    for m, p, w in zip(model_FxV, true_FxV, weight_F):
        if w == 0:
            continue
        row_kl = 0.0
        for a, b in zip(p, m):
            if a > 0:
                row_kl += np.inf if b == 0 else a * np.log(a / b)
        kl += w * row_kl
        tv += w * 0.5 * np.abs(p - m).sum()
        sq += w * ((p - m) ** 2).sum()
    return kl, tv, sq


def chi_square(observed, probs_):
    """Pearson statistic and degrees of freedom over cells of positive probability."""
    observed = np.asarray(observed, np.float64)
    n = observed.sum()
    mask = probs_ > 0
    expected = n * probs_[mask]
    return float(((observed[mask] - expected) ** 2 / expected).sum()), int(mask.sum() - 1)


def chi_square_limit(dof, z=4.0):
    """Upper tolerance of a chi-square statistic: mean + z standard deviations."""
    return dof + z * np.sqrt(2.0 * dof)


# ---------------------------------------------------------------- transformer


def _layer_norm(x, p, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _gelu(x):  # the tanh approximation (flax.linen.gelu's default)
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _dense(x, p):
    return x @ p["kernel"] + p["bias"]


def transformer_logits(params, tokens_BxL, V, heads, tie):
    """Logits [B, L, V] of the kernels.transformer model, in float64, one
    sequence and one head at a time."""
    P = {k: v for k, v in params.items()}
    f = lambda t: {k: (f(v) if isinstance(v, dict) else np.asarray(v, np.float64)) for k, v in t.items()}
    P = f(P)
    B, L = tokens_BxL.shape
    emb = P["embed"]["embedding"]
    d = emb.shape[1]
    dh = d // heads
    out = np.zeros((B, L, V))
    layers = sorted((k for k in P if k.startswith("blocks_")), key=lambda k: int(k.split("_")[1]))
    for b in range(B):
        inputs = [V] + list(tokens_BxL[b, :-1])
        x = emb[inputs] + P["pos"][:L]
        for name in layers:
            blk = P[name]
            h = _layer_norm(x, blk["ln1"])
            qkv = _dense(h, blk["attn"]["qkv"])
            q, k, v = qkv[:, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :]
            o = np.zeros((L, d))
            for hd in range(heads):
                sl = slice(hd * dh, (hd + 1) * dh)
                s = q[:, sl] @ k[:, sl].T / np.sqrt(dh)
                s = np.where(np.tril(np.ones((L, L), bool)), s, -np.inf)
                p = np.exp(s - s.max(-1, keepdims=True))
                p /= p.sum(-1, keepdims=True)
                o[:, sl] = p @ v[:, sl]
            x = x + _dense(o, blk["attn"]["proj"])
            x = x + _dense(_gelu(_dense(_layer_norm(x, blk["ln2"]), blk["up"])), blk["down"])
        h = _layer_norm(x, P["ln_f"])
        out[b] = (h @ emb.T)[:, :V] if tie else _dense(h, P["head"])
    return out


def threefry2x32(key, x):
    """Threefry-2x32, 20 rounds (Salmon et al., "Parallel random numbers: as
    easy as 1, 2, 3", 2011): key (k0, k1) and counters (x0, x1) of uint32,
    one round at a time as the paper writes it."""
    m = 0xFFFFFFFF
    rot = [13, 15, 26, 6, 17, 29, 16, 24]
    ks = [int(key[0]), int(key[1]), int(key[0]) ^ int(key[1]) ^ 0x1BD11BDA]
    out0, out1 = [], []
    for a, b in zip(np.ravel(x[0]), np.ravel(x[1])):
        a, b = (int(a) + ks[0]) & m, (int(b) + ks[1]) & m
        for rnd in range(20):
            r = rot[rnd % 8]
            a = (a + b) & m
            b = (((b << r) | (b >> (32 - r))) & m) ^ a
            if rnd % 4 == 3:  # key injection s = rnd // 4 + 1
                s = rnd // 4 + 1
                a = (a + ks[s % 3]) & m
                b = (b + ks[(s + 1) % 3] + s) & m
        out0.append(a)
        out1.append(b)
    shape = np.shape(x[0])
    return np.array(out0, np.uint32).reshape(shape), np.array(out1, np.uint32).reshape(shape)
