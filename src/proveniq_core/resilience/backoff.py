"""How long to wait before a retry: one exponential formula for every retry in Core.

``Backoff(base, factor, cap).delay(n)`` is ``base * factor**n`` seconds before retry ``n``
(0 for the first retry), never more than ``cap``. With jitter the delay is drawn from a
range below it, so that many clients that failed together do not retry together:

- ``Jitter.FULL``: anywhere in ``[0, delay)``;
- ``Jitter.EQUAL``: in ``[delay / 2, delay)``, half fixed, half random.

``stretch`` lengthens a delay by up to a fraction of itself instead, for a schedule whose
delays are minimums. Randomness comes from an injectable source (``rand``, uniform in
``[0, 1)``), so tests choose the draw.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["Backoff", "Jitter", "Rand", "stretch"]

Rand = Callable[[], float]
"""A source of uniform floats in ``[0, 1)``."""


class Jitter(StrEnum):
    NONE = "none"
    FULL = "full"
    EQUAL = "equal"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential delays: ``base * factor**n`` seconds before retry ``n``, at most ``cap``."""

    base: float
    factor: float = 2.0
    cap: float = math.inf
    jitter: Jitter = Jitter.NONE
    rand: Rand = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base < 0 or self.factor < 1 or self.cap < 0:
            raise ValueError(f"backoff needs base >= 0, factor >= 1, cap >= 0: {self}")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry ``retry`` (0 for the first)."""
        if retry < 0:
            raise ValueError(f"retry {retry} < 0")
        try:
            grown = self.base * self.factor**retry
        except OverflowError:  # a retry count far past any cap
            grown = math.inf if self.base else 0.0
        delay = min(grown, self.cap)
        if self.jitter is Jitter.FULL:
            return delay * self.rand()
        if self.jitter is Jitter.EQUAL:
            return delay / 2 + delay / 2 * self.rand()
        return delay


def stretch(delay: float, fraction: float, rand: Rand = random.random) -> float:
    """``delay`` lengthened by up to ``fraction`` of itself, never shortened."""
    return delay * (1 + fraction * rand())
