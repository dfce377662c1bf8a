"""The corpus policies of DESIGN §4, as one table read everywhere a policy matters.

T_0 = R in every policy. At generation g >= 1:

| policy               | C_g keeps                  | T_g                                               |
|----------------------|----------------------------|---------------------------------------------------|
| replace              | S_{g-1}                    | C_g                                               |
| accumulate           | R, S_0 .. S_{g-1}          | C_g                                               |
| accumulate_subsample | R, S_0 .. S_{g-1}          | m drawn from C_g without replacement              |
| mix                  | R, S_{g-1}                 | round(rho m) from R + the rest from S_{g-1}       |
| fresh                | S_{g-1}                    | round(rho m) new real + the rest from S_{g-1}     |

Everything else follows from three fields: whether C_g keeps R
(`keeps_real`), whether it keeps every S_g or only the last (`keeps_all`),
and how T_g is drawn from it (`draw`). A model family trained on counts (the
n-gram) keeps T_g as running counts under the policies whose T_g is all of
C_g (`whole`), and then stores no tokens at all.

Pure data: no JAX, so the config layer can read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Policy:
    name: str
    keeps_real: bool  # C_g holds R
    keeps_all: bool  # C_g holds every S_0 .. S_{g-1} (its buffer grows with G); else only S_{g-1}
    draw: str  # how T_g comes from C_g: "whole" | "subsample" (m of C_g) | "mix" (R + S_{g-1}) | "fresh"

    @property
    def whole(self) -> bool:
        """T_g is all of C_g: a family trained on counts keeps its counts, not its tokens."""
        return self.draw == "whole"

    @property
    def uses_train_sequences(self) -> bool:
        """corpus.train_sequences (m) shapes T_g."""
        return self.draw != "whole"

    @property
    def uses_real_fraction(self) -> bool:
        """corpus.real_fraction (rho) shapes T_g."""
        return self.draw in ("mix", "fresh")

    def as_counts(self, counts: bool) -> bool:
        """T_g lives as counts (a family trained on counts, a whole-corpus policy)."""
        return counts and self.whole

    def stores_real(self, counts: bool) -> bool:
        """R is kept as tokens: C_g holds it and it is not folded into counts."""
        return self.keeps_real and not self.as_counts(counts)

    def capacity(self, gen_capacity: int, generations: int, counts: bool) -> int:
        """Rows of the generated-sequence buffer for a whole run of G generations."""
        if self.as_counts(counts):
            return 0
        return (generations + 1) * gen_capacity if self.keeps_all else gen_capacity


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy("replace", keeps_real=False, keeps_all=False, draw="whole"),
        Policy("accumulate", keeps_real=True, keeps_all=True, draw="whole"),
        Policy("accumulate_subsample", keeps_real=True, keeps_all=True, draw="subsample"),
        Policy("mix", keeps_real=True, keeps_all=False, draw="mix"),
        Policy("fresh", keeps_real=False, keeps_all=False, draw="fresh"),
    )
}
NAMES = tuple(POLICIES)
