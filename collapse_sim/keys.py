"""Random streams and per-cell traced values (DESIGN §7.1).

A cell's trajectory key is fold_in(fold_in(fold_in(key(seed), h0), h1), r),
with (h0, h1) two words of the SHA-256 of its canonical trajectory identity
and r its replicate; its real key is built the same way from the hash of
(source content, real.sequences, real.seq_len), so cells that share those
share R. Inside the compiled step, generation g uses fold_in(trajectory, g)
and then one purpose constant per use, below. Every result depends on these
numbers: a new purpose takes a new number, an old one never changes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from collapse_sim import config as cfgmod
from collapse_sim.schema import SCORING_FILTERS

SAMPLE = 0  # drawing S_g (position t folds in t)
SELECT = 1  # choosing T_g's rows (mix's rows of R under a further fold_in of 1)
FRESH = 2  # fresh's new real data
INIT = 3  # a transformer's fresh parameters
TRAIN = 4  # a transformer's batches (step i folds in i)
NOISE = 5  # noisy_truth's score noise
REFERENCE = 6  # the reference filter's real sequences (folded into the real key, not the generation's)


class CellParams(NamedTuple):
    """Per-cell traced values (a leading cells axis when batched): a new
    value never recompiles."""

    trajectory_key: jax.Array  # uint32 [2] key data
    real_key: jax.Array  # uint32 [2] key data
    k: jax.Array  # int32, generate.sequences
    temperature: jax.Array  # float32
    top_k: jax.Array  # int32
    top_p: jax.Array  # float32
    real_count: jax.Array  # int32, round(rho * m)
    model: dict  # float32 per traced model key of the family (`Family.traced`)
    threshold: jax.Array  # float32, generate.filter.threshold (-inf: none)
    keep_count: jax.Array  # int32, round(keep_fraction * oversample * k)
    noise: jax.Array  # float32, generate.filter.noise


def filter_values(generate_cfg) -> tuple[float, int, float]:
    """(threshold, keep_count, noise) of a cell's filter (`collapse_sim.filters`):
    keep_count = round(keep_fraction x candidates), halves up."""
    f = generate_cfg.filter
    n = f.oversample * generate_cfg.sequences if f.kind != "none" else generate_cfg.sequences
    if f.kind not in SCORING_FILTERS:
        return -np.inf, n, 0.0
    threshold = -np.inf if f.threshold is None else f.threshold
    keep = int(np.floor(f.keep_fraction * n + 0.5))
    return threshold, keep, f.noise if f.kind == "noisy_truth" else 0.0


def heldout_key(source_digest: str, seq_len: int, n: int):
    """The held-out set's key: no seed, no replicate (DESIGN §7.2)."""
    h0, h1 = cfgmod.stable_hash({"purpose": "heldout", "source": source_digest, "seq_len": seq_len, "n": n})
    return _heldout_key(np.uint32(h0), np.uint32(h1))


@jax.jit
def _heldout_key(h0, h1):
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(0), h0), h1)


@jax.jit
def _derive_keys(seed_C, h0_C, h1_C, rep_C):
    def one(seed, h0, h1, r):
        k = jax.random.key(seed)
        k = jax.random.fold_in(jax.random.fold_in(k, h0), h1)
        return jax.random.key_data(jax.random.fold_in(k, r))

    return jax.vmap(one)(seed_C, h0_C, h1_C, rep_C)


def cell_params(cells, source_digest: str, traced: tuple[str, ...]) -> CellParams:
    """Host-side per-cell traced values and keys for a list of cells
    (`plan.Cell`); `traced`: the model keys the family takes per cell."""
    configs = [cell.point.config for cell in cells]
    traj = [cfgmod.stable_hash(cfgmod.trajectory_dict(c, source_digest)) for c in configs]
    real = [
        cfgmod.stable_hash(
            {"purpose": "real", "source": source_digest, "sequences": c.real.sequences, "seq_len": c.real.seq_len}
        )
        for c in configs
    ]

    def host(dtype):  # converted on the host, then put: no program to compile
        return lambda xs: jax.device_put(np.asarray(xs, dtype))

    u32, i32, f32 = host(np.uint32), host(np.int32), host(np.float32)
    reps = u32([cell.replicate for cell in cells])
    t, r = np.asarray(traj, np.uint32), np.asarray(real, np.uint32)
    seeds = u32([c.seed for c in configs])
    filt = [filter_values(c.generate) for c in configs]
    return CellParams(
        trajectory_key=_derive_keys(seeds, u32(t[:, 0]), u32(t[:, 1]), reps),
        real_key=_derive_keys(seeds, u32(r[:, 0]), u32(r[:, 1]), reps),
        k=i32([c.generate.sequences for c in configs]),
        temperature=f32([c.generate.temperature for c in configs]),
        top_k=i32([c.generate.top_k for c in configs]),
        top_p=f32([c.generate.top_p for c in configs]),
        real_count=i32([cfgmod.real_count(c.corpus.real_fraction, c.corpus.train_sequences) for c in configs]),
        model={name: f32([getattr(c.model, name) for c in configs]) for name in traced},
        threshold=f32([f[0] for f in filt]),
        keep_count=i32([f[1] for f in filt]),
        noise=f32([f[2] for f in filt]),
    )
