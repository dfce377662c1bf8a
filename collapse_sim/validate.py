"""Range and cross-key checks of one effective config (no file access).

Each failure is a `ConfigError` naming the dotted key, or `sweep.<key>` and
the value when the key is swept.
"""

from __future__ import annotations

from collapse_sim.policies import POLICIES
from collapse_sim.schema import (
    FILTER_KINDS,
    MAX_VOCAB,
    MODEL_KINDS,
    SOURCE_KINDS,
    Config,
    ConfigError,
    ModelConfig,
    real_count,
)


def _require(ok: bool, where: str, key: str, message: str, swept: dict) -> None:
    if not ok:
        if key in swept:
            raise ConfigError(where, f"sweep.{key}", f"value {swept[key]!r}: {message}")
        raise ConfigError(where, key, message)


def validate(where: str, cfg: Config, explicit_vocab: bool = True, swept: dict | None = None) -> None:
    """Range and cross-key checks on one effective config (no file access)."""
    s = swept or {}
    req = lambda ok, key, msg: _require(ok, where, key, msg, s)
    req(cfg.replicates >= 1, "replicates", f"must be >= 1, got {cfg.replicates}")
    req(cfg.generations >= 0, "generations", f"must be >= 0, got {cfg.generations}")
    req(0 <= cfg.seed < 2**32, "seed", f"must be in [0, 2**32), got {cfg.seed}")
    src = cfg.source
    req(src.kind in SOURCE_KINDS, "source.kind", f"must be one of {', '.join(SOURCE_KINDS)}, got {src.kind!r}")
    req(0 <= src.seed < 2**32, "source.seed", f"must be in [0, 2**32), got {src.seed}")
    if src.kind in ("categorical", "markov") and src.probs is None:
        req(2 <= src.vocab_size <= MAX_VOCAB, "source.vocab_size", f"must be in [2, {MAX_VOCAB}], got {src.vocab_size}")
    if src.kind == "categorical":
        req(src.zipf >= 0, "source.zipf", f"must be >= 0, got {src.zipf}")
        if src.probs is not None:
            req(len(src.probs) >= 2, "source.probs", f"needs at least 2 probabilities, got {len(src.probs)}")
            req(all(p >= 0 for p in src.probs), "source.probs", "probabilities must be >= 0")
            total = sum(src.probs)
            req(abs(total - 1.0) <= 1e-6, "source.probs", f"probabilities must sum to 1, they sum to {total:.6g}")
            req(
                not explicit_vocab or src.vocab_size == len(src.probs),
                "source.probs",
                f"has {len(src.probs)} entries but source.vocab_size is {src.vocab_size}",
            )
    if src.kind == "markov":
        req(src.order >= 1, "source.order", f"must be >= 1, got {src.order}")
        req(src.concentration > 0, "source.concentration", f"must be > 0, got {src.concentration}")
    real = cfg.real
    req(real.sequences >= 1, "real.sequences", f"must be >= 1, got {real.sequences}")
    req(real.seq_len >= 1, "real.seq_len", f"must be >= 1, got {real.seq_len}")
    req(real.heldout >= 1, "real.heldout", f"must be >= 1, got {real.heldout}")
    model = cfg.model
    req(model.kind in MODEL_KINDS, "model.kind", f"must be ngram or transformer, got {model.kind!r}")
    if model.kind == "transformer":
        _validate_transformer(req, model)
    else:
        req(model.order >= 1, "model.order", f"must be >= 1, got {model.order}")
        req(model.smoothing >= 0, "model.smoothing", f"must be >= 0, got {model.smoothing}")
        req(
            model.order - 1 < cfg.real.seq_len,
            "model.order",
            f"an order-{model.order} model conditions on {model.order - 1} tokens, so it needs "
            f"real.seq_len > {model.order - 1} (got {cfg.real.seq_len}) to ever see a full context",
        )
    gen = cfg.generate
    req(gen.sequences >= 1, "generate.sequences", f"must be >= 1, got {gen.sequences}")
    req(gen.temperature >= 0, "generate.temperature", f"must be >= 0, got {gen.temperature}")
    req(gen.top_k >= 0, "generate.top_k", f"must be >= 0 (0 = off), got {gen.top_k}")
    req(0 < gen.top_p <= 1, "generate.top_p", f"must be in (0, 1], got {gen.top_p}")
    _validate_filter(req, cfg)
    corpus = cfg.corpus
    req(corpus.policy in POLICIES, "corpus.policy", f"must be one of {', '.join(POLICIES)}, got {corpus.policy!r}")
    req(0 <= corpus.real_fraction <= 1, "corpus.real_fraction", f"must be in [0, 1], got {corpus.real_fraction}")
    req(corpus.train_sequences >= 1, "corpus.train_sequences", f"must be >= 1, got {corpus.train_sequences}")
    m, k, n0 = corpus.train_sequences, gen.sequences, real.sequences
    rule = POLICIES.get(corpus.policy)
    if rule is not None and rule.draw == "subsample":
        req(
            m <= n0 + k,
            "corpus.train_sequences",
            f"accumulate_subsample draws {m} sequences without replacement but the corpus "
            f"at generation 1 holds only real.sequences + generate.sequences = {n0 + k}",
        )
    if rule is not None and rule.uses_real_fraction:
        r = real_count(corpus.real_fraction, m)
        req(
            k >= m - r,
            "generate.sequences",
            f"{corpus.policy} draws {m - r} generated sequences per generation without "
            f"replacement (train_sequences {m}, real_fraction {corpus.real_fraction}); "
            f"generate.sequences = {k} is too small",
        )
        if rule.draw == "mix":
            req(
                r <= n0,
                "real.sequences",
                f"mix draws {r} real sequences without replacement; real.sequences = {n0} is too small",
            )
    ck = cfg.checkpoint
    req(ck.every >= 0, "checkpoint.every", f"must be >= 0, got {ck.every}")
    req(ck.keep >= 1, "checkpoint.keep", f"must be >= 1, got {ck.keep}")
    req(ck.seconds >= 0, "checkpoint.seconds", f"must be >= 0, got {ck.seconds}")


def _validate_transformer(req, model: ModelConfig) -> None:
    for key in ("d_model", "layers", "heads", "mlp_ratio", "steps", "batch_size"):
        req(getattr(model, key) >= 1, f"model.{key}", f"must be >= 1, got {getattr(model, key)}")
    req(
        model.d_model % model.heads == 0,
        "model.heads",
        f"must divide model.d_model = {model.d_model} (heads split it), got {model.heads}",
    )
    req(model.learning_rate > 0, "model.learning_rate", f"must be > 0, got {model.learning_rate}")
    req(model.weight_decay >= 0, "model.weight_decay", f"must be >= 0, got {model.weight_decay}")
    req(model.warmup >= 0, "model.warmup", f"must be >= 0, got {model.warmup}")
    req(model.grad_clip > 0, "model.grad_clip", f"must be > 0, got {model.grad_clip}")
    req(
        model.schedule in ("cosine", "constant"),
        "model.schedule",
        f"must be cosine or constant, got {model.schedule!r}",
    )
    req(model.init in ("fresh", "continue"), "model.init", f"must be fresh or continue, got {model.init!r}")
    req(model.dtype in ("float32", "bfloat16"), "model.dtype", f"must be float32 or bfloat16, got {model.dtype!r}")


def _validate_filter(req, cfg: Config) -> None:
    f, key = cfg.generate.filter, "generate.filter"
    req(f.kind in FILTER_KINDS, f"{key}.kind", f"must be one of {', '.join(FILTER_KINDS)}, got {f.kind!r}")
    req(
        f.kind not in ("truth", "noisy_truth") or cfg.source.kind != "text",
        f"{key}.kind",
        f"{f.kind} scores candidates under the true source, which a text source does not have; "
        "use reference (a verifier fitted on real text) or self",
    )
    req(0 < f.keep_fraction <= 1, f"{key}.keep_fraction", f"must be in (0, 1], got {f.keep_fraction}")
    req(f.oversample >= 1, f"{key}.oversample", f"must be >= 1, got {f.oversample}")
    req(f.noise >= 0, f"{key}.noise", f"must be >= 0, got {f.noise}")
    req(f.reference_sequences >= 1, f"{key}.reference_sequences", f"must be >= 1, got {f.reference_sequences}")
