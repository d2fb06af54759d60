"""A rate search that brackets before it bisects: RFC 2544's zero-loss rate, RFC 2889's
learning rate.

A plain bisection of ``[0, ceiling]`` that starts at the ceiling reports only "below the
ceiling" when the first trials fail and the steps run out, and a search that stops at the
first pass reports only "at least".  This one moves from a start rate by factors of
``factor`` (down while trials fail, up while they pass, never above ``ceiling``) until one
trial passes and another fails, then bisects between the two.  ``conclude`` says which of
the three answers the trials support: a measured rate (bracketed, with its resolution), a
lower bound (everything passed, up to the ceiling or the generator's limit) or an upper
bound (nothing passed, down to the floor).

Pure: the caller runs the trials; ``next_rate`` only decides.  A trial is recorded with the
rate asked for and the rate actually offered (measured at the sender), and the answer is
given in offered rates, since that is what the switch saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Trial:
    asked: float      # frames/s the generator was told
    offered: float    # frames/s it measured it sent
    passed: bool


@dataclass(frozen=True)
class Plan:
    start: float                # the first rate asked for
    ceiling: float              # never ask for more
    floor: float                # never ask for less
    steps: int                  # trials at most
    factor: float = 2.0         # the bracketing step, up or down
    resolution: float = 0.02    # stop bisecting when the bracket is narrower (of its top)
    generator_share: float = 0.9  # offered below this share of asked: the generator's limit

    def __post_init__(self) -> None:
        if not 0 < self.floor <= self.start <= self.ceiling:
            raise ValueError(f"a rate search needs 0 < floor <= start <= ceiling, not "
                             f"{self.floor}, {self.start}, {self.ceiling}")
        if self.steps < 1 or self.factor <= 1 or not 0 < self.resolution < 1:
            raise ValueError(f"a rate search needs steps >= 1, factor > 1 and 0 < resolution "
                             f"< 1, not {self.steps}, {self.factor}, {self.resolution}")


Kind = Literal["measured", "at least", "below", "none"]


@dataclass(frozen=True)
class Answer:
    kind: Kind
    rate: float     # measured / at least: the highest passing offered rate; below: 0
    bound: float    # measured: the lowest failing offered rate above it; below: the lowest
                    # failing offered rate; at least: the rate itself
    limited_by_generator: bool = False  # at least: the generator could not offer more

    def text(self, unit: float = 1e3, suffix: str = " k/s") -> str:
        """``142 k/s (fails at 150 k/s)``, ``>= 200 k/s``, ``< 25 k/s``."""
        def fmt(v: float) -> str:
            return f"{v / unit:.0f}{suffix}"
        if self.kind == "measured" and self.bound <= self.rate:
            return f"{fmt(self.rate)} (a trial offered {fmt(self.bound)} failed: noise)"
        if self.kind == "measured":
            return f"{fmt(self.rate)} (fails at {fmt(self.bound)})"
        if self.kind == "at least":
            why = ", the generator's limit" if self.limited_by_generator else ""
            return f">= {fmt(self.rate)} (passed at every rate tried{why})"
        if self.kind == "below":
            return f"< {fmt(self.bound)} (failed at every rate tried)"
        return "no trials"


def _generator_limited(plan: Plan, t: Trial) -> bool:
    return t.offered < plan.generator_share * t.asked


def next_rate(plan: Plan, trials: list[Trial]) -> float | None:
    """The next rate to ask for, or None when the search is done."""
    if not trials:
        return plan.start
    if len(trials) >= plan.steps:
        return None
    passed = [t for t in trials if t.passed]
    failed = [t for t in trials if not t.passed]
    if not failed:  # bracket upwards
        top = max(passed, key=lambda t: t.asked)
        if top.asked >= plan.ceiling or _generator_limited(plan, top):
            return None
        return min(top.asked * plan.factor, plan.ceiling)
    if not passed:  # bracket downwards
        bottom = min(failed, key=lambda t: t.asked)
        if bottom.asked <= plan.floor:
            return None
        return max(bottom.asked / plan.factor, plan.floor)
    lo = max((t.asked for t in passed), default=0.0)
    above = [t.asked for t in failed if t.asked > lo]
    if not above:  # a pass above every failure (a noisy switch): the highest pass stands
        return None
    hi = min(above)
    if hi - lo <= plan.resolution * hi:
        return None
    return (lo + hi) / 2


def conclude(plan: Plan, trials: list[Trial]) -> Answer:
    """What the trials show (see the module's docstring)."""
    if not trials:
        return Answer("none", 0.0, 0.0)
    passed = [t for t in trials if t.passed]
    failed = [t for t in trials if not t.passed]
    if not passed:
        return Answer("below", 0.0, min(failed, key=lambda t: t.asked).offered)
    best = max(passed, key=lambda t: t.asked)
    # the most offered by a passing trial (a generator at its limit may offer less when
    # asked for more)
    rate = max(t.offered for t in passed)
    above = [t for t in failed if t.asked > best.asked]
    if not above:
        return Answer("at least", rate, rate, _generator_limited(plan, best))
    return Answer("measured", rate, min(above, key=lambda t: t.asked).offered)
