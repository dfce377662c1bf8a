"""A cell's trajectory identity (DESIGN §7.1): the config keys its random
streams depend on, canonicalised, and the stable hash that turns them into
key words. Pure functions of an effective config; no file access."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from collapse_sim import policies
from collapse_sim.schema import SCORING_FILTERS, Config, unused_model_keys


def trajectory_dict(cfg: Config, source_digest: str) -> dict:
    """The keys a cell's random streams depend on, canonicalised (DESIGN §7.1).

    Keys that cannot change the trajectory (name, replicates, generations,
    checkpoint, real.heldout, unused policy parameters, the keys of the other
    model family) are left out; the
    source is identified by the digest of its content (the text, or the exact
    table of a categorical/markov world), not by the keys that made it.
    """
    d = cfg.to_dict()
    for k in ("name", "replicates", "generations", "sweep", "checkpoint"):
        d.pop(k)
    for key in unused_model_keys(cfg.model.kind):
        d["model"].pop(key.split(".", 1)[1])
    d["source"] = {"kind": d["source"]["kind"], "content": source_digest}  # the digest is the world
    d["real"].pop("heldout")  # the yardstick, not the trajectory
    _drop_unused_filter_keys(d["generate"])
    rule = policies.POLICIES[d["corpus"]["policy"]]
    if not rule.uses_real_fraction:
        d["corpus"].pop("real_fraction")
    if not rule.uses_train_sequences:
        d["corpus"].pop("train_sequences")
    return d


def _drop_unused_filter_keys(generate: dict) -> None:
    """Leave out of a trajectory's identity the filter keys its kind does not
    read (all of them for `none`, so configs without a filter keep their keys)."""
    f = generate["filter"]
    if f["kind"] == "none":
        del generate["filter"]
        return
    if f["kind"] not in SCORING_FILTERS:
        del f["threshold"], f["keep_fraction"]
    if f["kind"] != "noisy_truth":
        del f["noise"]
    if f["kind"] != "reference":
        del f["reference_sequences"]


def stable_hash(obj: Any) -> tuple[int, int]:
    """Two 32-bit words of the SHA-256 of canonical JSON: a key that never drifts."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    h = hashlib.sha256(blob).digest()
    return int.from_bytes(h[:4], "little"), int.from_bytes(h[4:8], "little")
