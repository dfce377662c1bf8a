"""The PyTorch baseline of transformer_throughput.py: the same tiny transformer,
trained and sampled one model at a time, the way a per-model experiment loop
runs. Standalone (imports only torch), so it can run under any interpreter
that has torch:

    pip install torch==2.13.0        # the CPU build, from the registry
    python benchmarks/torch_baseline.py --cells 4 --batch 32

Per cell and generation, as the engine does: AdamW (global-norm clipping,
linear warm-up then cosine decay) for --steps steps on batches drawn
uniformly with replacement from the N0 training rows, the held-out NLL, and
--sample sequences drawn with a KV cache. Architecture as
kernels/transformer.py: BOS-shifted inputs, token + learned position
embeddings, pre-norm blocks with fused-QKV causal attention and a tanh-GELU
MLP, final layer norm, untied head. Prints one JSON object: seconds per cell
for training and for a whole generation (medians over --repeats).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads, mlp_ratio):
        super().__init__()
        self.d, self.h = d, heads
        self.ln1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln2, self.up, self.down = nn.LayerNorm(d), nn.Linear(d, mlp_ratio * d), nn.Linear(mlp_ratio * d, d)

    def mlp(self, x):
        return self.down(F.gelu(self.up(self.ln2(x)), approximate="tanh"))

    def forward(self, x):
        B, T, d = x.shape
        q, k, v = (t.view(B, T, self.h, d // self.h).transpose(1, 2) for t in self.qkv(self.ln1(x)).split(d, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, d)
        x = x + self.proj(a)
        return x + self.mlp(x)

    def decode(self, x, pos, cache):
        """x [n, d] at position pos; cache (k, v) [n, H, L, dh]."""
        n, d = x.shape
        q, k, v = (t.view(n, self.h, 1, d // self.h) for t in self.qkv(self.ln1(x)).split(d, dim=-1))
        ck, cv = cache
        ck[:, :, pos : pos + 1], cv[:, :, pos : pos + 1] = k, v
        s = (q @ ck[:, :, : pos + 1].transpose(-1, -2)) / math.sqrt(d // self.h)
        a = (torch.softmax(s.float(), dim=-1).to(v.dtype) @ cv[:, :, : pos + 1]).reshape(n, d)
        x = x + self.proj(a)
        return x + self.mlp(x)


class Model(nn.Module):
    def __init__(self, V, L, d, layers, heads, mlp_ratio):
        super().__init__()
        self.V, self.L = V, L
        self.emb = nn.Embedding(V + 1, d)
        self.pos = nn.Parameter(torch.randn(L, d) * 0.02)
        self.blocks = nn.ModuleList([Block(d, heads, mlp_ratio) for _ in range(layers)])
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, V)

    def forward(self, x):
        bos = torch.full((x.shape[0], 1), self.V, dtype=x.dtype, device=x.device)
        h = self.emb(torch.cat([bos, x[:, :-1]], 1)) + self.pos
        for b in self.blocks:
            h = b(h)
        return self.head(self.ln(h))

    @torch.no_grad()
    def sample(self, n):
        dev = self.pos.device
        b0 = self.blocks[0]
        shape = (n, b0.h, self.L, b0.d // b0.h)
        caches = [
            (torch.zeros(shape, device=dev, dtype=self.pos.dtype), torch.zeros(shape, device=dev, dtype=self.pos.dtype))
            for _ in self.blocks
        ]
        prev = torch.full((n,), self.V, dtype=torch.long, device=dev)
        out = []
        for pos in range(self.L):
            x = self.emb(prev) + self.pos[pos]
            for b, cache in zip(self.blocks, caches):
                x = b.decode(x, pos, cache)
            prev = torch.multinomial(torch.softmax(self.head(self.ln(x)).float(), dim=-1), 1)[:, 0]
            out.append(prev)
        return torch.stack(out, 1)


def one_cell(a, data, held, dev, autocast):
    """Train, evaluate and sample one model; returns (train seconds, generation seconds)."""
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    model = Model(a.vocab, a.seq_len, a.d_model, a.layers, a.heads, a.mlp_ratio).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.wd)
    warm = max(1, a.warmup)

    def lr_at(i):
        ramp = min(1.0, (i + 1) / warm)
        frac = min(1.0, max(0.0, (i - a.warmup) / max(a.steps - a.warmup, 1)))
        return ramp * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    for _ in range(a.steps):
        x = data[torch.randint(0, len(data), (a.batch,), device=dev)]
        with autocast():
            loss = F.cross_entropy(model(x).float().reshape(-1, a.vocab), x.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        sched.step()
    sync()
    t_train = time.perf_counter() - t0
    with torch.no_grad(), autocast():
        nll = sum(
            F.cross_entropy(model(h).float().reshape(-1, a.vocab), h.reshape(-1), reduction="sum")
            for h in held.split(2 * a.batch)
        )
        float(nll)
        model.sample(a.sample)
    sync()
    return t_train, time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (
        ("vocab", 16),
        ("seq-len", 32),
        ("d-model", 32),
        ("layers", 2),
        ("heads", 4),
        ("mlp-ratio", 4),
        ("batch", 32),
        ("steps", 100),
        ("warmup", 10),
        ("real", 1024),
        ("heldout", 256),
        ("sample", 256),
        ("cells", 4),
        ("repeats", 1),
    ):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--wd", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--no-warmup", action="store_true", help="as a whole process: no untimed first cell")
    a = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    dev = torch.device(a.device)
    if a.dtype == "bfloat16":
        autocast = lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    else:
        import contextlib

        autocast = contextlib.nullcontext
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, a.vocab, (a.real, a.seq_len), generator=g).to(dev)
    held = torch.randint(0, a.vocab, (a.heldout, a.seq_len), generator=g).to(dev)
    if not a.no_warmup:
        one_cell(a, data, held, dev, autocast)  # warm-up: allocator, kernels, thread pool
    trains, gens = [], []
    for _ in range(a.repeats):
        t_tr = t_gen = 0.0
        for _ in range(a.cells):
            tr, gen = one_cell(a, data, held, dev, autocast)
            t_tr, t_gen = t_tr + tr, t_gen + gen
        trains.append(t_tr / a.cells)
        gens.append(t_gen / a.cells)
    med = lambda xs: sorted(xs)[len(xs) // 2]
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "device": a.device,
                "cells": a.cells,
                "train_s_per_cell": med(trains),
                "generation_s_per_cell": med(gens),
            }
        )
    )


if __name__ == "__main__":
    main()
