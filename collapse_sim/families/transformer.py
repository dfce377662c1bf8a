"""The transformer family: a tiny decoder-only transformer (`kernels/transformer.py`).

M_g trains on T_g's rows (read in place from the corpus) with AdamW for
`model.steps` steps, from fresh parameters or, under `model.init: continue`,
from M_{g-1}'s (carried in the cell's state, named by their path in the
parameter tree). Its metrics are estimated over the held-out positions:
means of -ln M and of M's entropy, and where the truth is known the
divergences from the source's exact next-token distribution given the prefix.
A cell whose training loss turned non-finite is flagged (`loss_nonfinite`);
its model metrics are NaN and it samples uniform tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from collapse_sim.config import ConfigError
from collapse_sim.families.base import Family, GroupSpec
from collapse_sim.kernels import ngram, sampling, transformer
from collapse_sim.kernels.reduce import tree_sum
from collapse_sim.keys import INIT, TRAIN
from collapse_sim.sources import bos_table

CPU_DTYPES = ("float32",)  # compute dtypes run on CPU devices (bfloat16 is for GPUs and TPUs)
# cells per CPU device in one compiled batch (a chunk); within it they go
# through in passes (CPU_PASS_SEQUENCES), so a larger chunk is no faster per
# cell, only coarser for progress, signals and checkpoints
CPU_CELLS = 8
# training sequences per pass on a CPU device: a chunk's cells go through in
# lax.map passes of max(1, CPU_PASS_SEQUENCES // batch) cells, so a pass's
# activations stay in cache (measurements: benchmarks/RESULTS.md)
CPU_PASS_SEQUENCES = 32


_context_ids = jax.jit(ngram.context_ids, static_argnums=(1, 2))  # one program, not op by op


@dataclass(frozen=True)
class Training:
    """The static part of training (traced: learning rate, weight decay and
    clipping norm, per cell)."""

    steps: int
    batch_size: int
    warmup: int
    schedule: str
    init: str  # fresh | continue


@dataclass(frozen=True)
class TransformerSpec:
    arch: transformer.Arch
    training: Training

    @property
    def heldout_chunk(self) -> int:
        """Held-out rows per forward pass: twice the training batch, so its
        activations stay below those of a training step."""
        return 2 * self.training.batch_size

    @property
    def carries(self) -> bool:
        return self.training.init == "continue"


class TransformerWorld(NamedTuple):
    """The held-out rows in chunks of `heldout_chunk`, the weight of each row
    (0 for padding), and where the truth is known the source's table row of
    every held-out position and the table."""

    heldout_tokens: jax.Array  # int32 [chunks, rows, L]
    heldout_weight: jax.Array  # float32 [chunks, rows]
    truth_ctx: jax.Array  # int32 [chunks, rows, L] (no truth: [chunks, rows, 0])
    truth_table: jax.Array  # float32 [C_source, V] (no truth: [0, V])


class Fit(NamedTuple):
    losses: jax.Array  # float32 [steps]


@cache
def param_struct(arch: transformer.Arch):
    """The parameter tree of one model, as shapes."""
    return jax.eval_shape(lambda: transformer.init(arch, jax.random.key(0)))


def path_name(path) -> str:
    """A parameter's name: its path in the tree, dot-separated (blocks_0.attn.qkv.kernel)."""
    return ".".join(str(getattr(k, "key", k)) for k in path)


def named(tree) -> dict:
    """{path name: leaf} of a parameter tree."""
    return {path_name(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def from_named(arch: transformer.Arch, arrays: dict):
    """The parameter tree of `arch` with its leaves taken by name."""
    return jax.tree_util.tree_map_with_path(lambda p, _: arrays[path_name(p)], param_struct(arch))


def _chunked(a: np.ndarray, rows: int) -> np.ndarray:
    """[N, ...] -> [ceil(N / rows), rows, ...], zero-padded."""
    n = -(-len(a) // rows)
    out = np.zeros((n * rows, *a.shape[1:]), a.dtype)
    out[: len(a)] = a
    return out.reshape(n, rows, *a.shape[1:])


class Transformer(Family):
    name = "transformer"
    traced = ("learning_rate", "weight_decay", "grad_clip")
    int_metrics = ("loss_nonfinite",)

    def model_spec(self, m, vocab_size, seq_len):
        arch = transformer.Arch(vocab_size, seq_len, m.d_model, m.layers, m.heads, m.mlp_ratio, m.tie, m.dtype)
        return TransformerSpec(arch, Training(m.steps, m.batch_size, m.warmup, m.schedule, m.init))

    def check(self, spec, where, platform):
        dtype = spec.model.arch.dtype
        if platform == "cpu" and dtype not in CPU_DTYPES:
            raise ConfigError(
                where,
                "model.dtype",
                f"{dtype} compute is for GPUs and TPUs; this run has only CPU devices, use float32",
            )

    def memory_parts(self, spec: GroupSpec):
        """Parameters, optimizer state, activations of a training step, the
        held-out pass, the KV caches of sampling and the token buffers
        (float32 throughout, so bfloat16 compute is over-estimated)."""
        a, tr, cs = spec.model.arch, spec.model.training, spec.corpus
        V, L, d, layers = spec.vocab_size, spec.seq_len, a.d_model, a.layers
        W = sampling.cdf_width(V)
        n_params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(param_struct(a)))
        item = np.dtype(cs.dtype).itemsize
        # per token and layer: LN, fused QKV, attention output, residuals, the MLP
        # (up and GELU), plus the heads' score and probability rows
        per_token = layers * (d * (9 + 3 * a.mlp_ratio) + 3 * a.heads * L) + 4 * V + 4 * d
        real_rows = cs.real_sequences if cs.stores_real else 0
        return {
            # parameters, gradients, updates, both Adam moments, and the carried copy
            "model.d_model": 4 * 7 * n_params,
            # forward activations kept for the backward pass, and their gradients
            "model.batch_size": 4 * 2 * tr.batch_size * L * per_token,
            "real.heldout": 4 * spec.model.heldout_chunk * L * per_token,
            # KV caches, one position's activations and sampling rows, the sample
            "generate.sequences": spec.sample_rows * (2 * layers * L * d * 4 + 4 * (per_token + 2 * W) + 4 * L * 3),
            "generations": (item * L * 2 + 12) * cs.capacity,
            "real.sequences": item * L * 2 * real_rows + 4 * L * 2 * cs.real_sequences,
            "corpus.train_sequences": 4 * L * 3 * cs.train_sequences,
        }

    def cells_per_device(self, spec, platform):
        return CPU_CELLS if platform == "cpu" else None

    def pass_cells(self, spec, platform):
        return max(1, CPU_PASS_SEQUENCES // spec.model.training.batch_size) if platform == "cpu" else None

    def world(self, spec, source, heldout_NxL):
        V, L = spec.vocab_size, spec.seq_len
        rows = min(len(heldout_NxL), spec.model.heldout_chunk)
        tokens = _chunked(np.asarray(heldout_NxL, np.int32), rows)
        weight = _chunked(np.ones(len(heldout_NxL), np.float32), rows)
        if spec.has_truth:  # the exact P(next | prefix) of every held-out position
            table = bos_table(source.stationary, source.transitions, source.markov_order).astype(np.float32)
            ctx = np.asarray(_context_ids(tokens.reshape(-1, L), source.table_order, V))
            ctx = ctx.reshape(tokens.shape)
        else:
            table, ctx = np.zeros((0, V), np.float32), np.zeros(tokens.shape[:2] + (0,), np.int32)
        return TransformerWorld(*jax.device_put((tokens, weight, np.asarray(ctx, np.int32), table)))

    def carried_shapes(self, spec):
        if not spec.model.carries:
            return {}
        return {name: (tuple(a.shape), np.dtype(a.dtype)) for name, a in named(param_struct(spec.model.arch)).items()}

    def train(self, spec, key, cell, tset, carried):
        """Fresh parameters (or the carried ones, under init: continue)
        trained for model.steps AdamW steps on T_g."""
        arch, tr = spec.model.arch, spec.model.training
        p = from_named(arch, carried) if carried else transformer.init(arch, jax.random.fold_in(key, INIT))
        tx = transformer.optimizer(
            cell.model["learning_rate"],
            cell.model["weight_decay"],
            tr.steps,
            tr.warmup,
            tr.schedule,
            cell.model["grad_clip"],
        )
        p, losses = transformer.train(
            arch, tx, p, jax.random.fold_in(key, TRAIN), tset.fetch, tset.n, tr.steps, tr.batch_size
        )
        return p, Fit(losses)

    def model_metric_names(self, spec):
        truth = ["kl_true", "tv_true", "sq_true"] if spec.has_truth else []
        return ["heldout_nll", *truth, "entropy", "train_loss", "loss_nonfinite"]

    def model_metrics(self, spec, world: TransformerWorld, p, fit: Fit):
        """Means over the H x L held-out positions, and the training loss."""
        arch, truth = spec.model.arch, spec.has_truth

        def chunk(args):
            tokens, weight, ctx = args
            sums = transformer.position_sums(arch, p, tokens, world.truth_table[ctx] if truth else None)
            return {name: jnp.sum(v * weight) for name, v in sums.items()}

        sums = jax.lax.map(chunk, (world.heldout_tokens, world.heldout_weight, world.truth_ctx))
        positions = jnp.sum(world.heldout_weight) * spec.seq_len
        mean = {name: jnp.sum(v) / positions for name, v in sums.items()}
        out = {"heldout_nll": mean["nll"]}
        if truth:
            out.update(kl_true=mean["kl"], tv_true=mean["tv"], sq_true=mean["sq"])
        out["entropy"] = mean["entropy"]
        tail = max(1, spec.model.training.steps // 10)
        out["train_loss"] = jnp.mean(fit.losses[-tail:])
        out["loss_nonfinite"] = jnp.logical_not(jnp.all(jnp.isfinite(fit.losses))).astype(jnp.int32)
        return out

    def sample(self, spec, p, key, n, cell, weight_n=None):
        return transformer.sample(spec.model.arch, p, key, n, cell.temperature, *spec.truncation(cell)), None

    def score(self, spec, p, tokens_NxL):
        """In passes of `heldout_chunk` rows, so scoring many candidates needs
        no more activation memory than the held-out metrics."""
        arch, rows = spec.model.arch, spec.model.heldout_chunk
        n = tokens_NxL.shape[0]
        if n <= rows:
            return tree_sum(transformer.token_log_probs(arch, p, tokens_NxL), axis=-1)
        chunks = -(-n // rows)
        # zero rows padded on (a pad, not a scatter into zeros: a scatter whose
        # slice covers the whole array carries a zero-size index constant)
        padded = jnp.pad(tokens_NxL, ((0, chunks * rows - n), (0, 0)))
        out = jax.lax.map(
            lambda t: tree_sum(transformer.token_log_probs(arch, p, t), axis=-1), padded.reshape(chunks, rows, -1)
        )
        return out.reshape(-1)[:n]

    def carry(self, spec, p):
        return named(p) if spec.model.carries else {}


TRANSFORMER = Transformer()
