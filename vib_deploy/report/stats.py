"""McNemar's test on paired per-image correctness (two models, the same test images).

Only the discordant images count: b = images the first model gets right and the second wrong, c = the reverse.
Under "equally accurate", b ~ Binomial(b + c, 1/2).

    exact:      p = min(1, 2 * P(X <= min(b, c))),  X ~ Bin(b + c, 1/2)      (two-sided)
    chi-square: X2 = (|b - c| - 1)^2 / (b + c)  (continuity-corrected; uncorrected without the -1),
                p = P(chi2_1 > X2) = erfc(sqrt(X2 / 2))
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import numpy as np

ALPHA = 0.05


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact (binomial) McNemar p-value; exact rational arithmetic, so any n."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def mcnemar_chi2(b: int, c: int, correction: bool = True) -> tuple[float, float]:
    """(statistic, p-value) of McNemar's chi-square test, continuity-corrected by default."""
    if b + c == 0:
        return 0.0, 1.0
    diff = max(abs(b - c) - (1 if correction else 0), 0)
    stat = diff**2 / (b + c)
    return stat, math.erfc(math.sqrt(stat / 2))


@dataclass(frozen=True)
class Paired:
    """Discordant counts of model A vs model B on the same images, and the exact McNemar test."""

    a_only: int  # images A gets right and B wrong
    b_only: int
    n: int  # images compared
    p_value: float
    test: str = "McNemar exact (two-sided)"

    def verdict(self, alpha: float = ALPHA) -> str:
        """ "better" / "worse" (A vs B) when significant at `alpha`, else "tie"."""
        if self.p_value >= alpha or self.a_only == self.b_only:
            return "tie"
        return "better" if self.a_only > self.b_only else "worse"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def paired(correct_a: np.ndarray, correct_b: np.ndarray) -> Paired:
    """McNemar of two boolean per-image correctness vectors over the same images."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape:
        raise ValueError(f"per-image correctness of different lengths: {a.shape} vs {b.shape}")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    return Paired(a_only, b_only, int(a.size), mcnemar_exact(a_only, b_only))


def pooled(pairs: list[Paired]) -> Paired:
    """Discordant counts summed over independent pairs (e.g. seed pairs), tested once."""
    a_only, b_only = sum(p.a_only for p in pairs), sum(p.b_only for p in pairs)
    return Paired(
        a_only,
        b_only,
        sum(p.n for p in pairs),
        mcnemar_exact(a_only, b_only),
        "McNemar exact (two-sided), discordant images pooled over seed pairs",
    )
