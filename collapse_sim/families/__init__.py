"""Model families, one module each, behind the interface of `base.Family`.

Adding a family is one new module (its spec, world, model, and the methods
of `Family`) and one line in `_WHERE`; docs/architecture.md says how. A
family's module is imported when a run first asks for it (the transformer's
brings Flax, a tenth of a second a bigram run does not need).
"""

from __future__ import annotations

import importlib

from collapse_sim.families.base import Family, GroupSpec

_WHERE = {  # model.kind -> (module, the Family instance's name in it)
    "ngram": ("collapse_sim.families.ngram", "NGRAM"),
    "transformer": ("collapse_sim.families.transformer", "TRANSFORMER"),
}


def get(kind: str) -> Family:
    """The family of `model.kind`."""
    module, name = _WHERE[kind]
    return getattr(importlib.import_module(module), name)


def __getattr__(name: str):
    if name == "FAMILIES":  # every family, by name (imports them all)
        return {kind: get(kind) for kind in _WHERE}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FAMILIES", "Family", "GroupSpec", "get"]
