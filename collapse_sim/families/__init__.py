"""Model families, one module each, behind the interface of `base.Family`.

Adding a family is one new module (its spec, world, model, and the methods
of `Family`) and one line here; docs/architecture.md says how.
"""

from __future__ import annotations

from collapse_sim.families.base import Family, GroupSpec
from collapse_sim.families.ngram import NGRAM
from collapse_sim.families.transformer import TRANSFORMER

FAMILIES: dict[str, Family] = {f.name: f for f in (NGRAM, TRANSFORMER)}


def get(kind: str) -> Family:
    """The family of `model.kind`."""
    return FAMILIES[kind]


__all__ = ["FAMILIES", "Family", "GroupSpec", "get"]
