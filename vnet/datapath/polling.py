"""When the datapath's loop polls without sleeping, and how long it may sleep: a pure policy.

Why: on these machines (nested VMs) waking a process whose vCPU has been halted for a few
milliseconds costs 50-100 µs, more than everything else on an idle round trip, and a CPU
that just woke runs the Python path cold.  Spinning all the time removes that but burns a
core while nothing happens.  So, as NAPI's busy-poll and io_uring's SQPOLL idle do, the
loop spins only where frames are likely:

* **linger**: for ``linger`` seconds after frames moved (the reply to what was just
  forwarded, the rest of a burst);
* **ahead**: when bursts have come at a regular pace (a ping every few ms, a periodic
  control message), the loop sleeps until shortly before the next is due, then spins until
  it comes or its window passes.  The pace is estimated as TCP estimates a round trip (a
  smoothed gap and its mean deviation); the lead covers how late a timed sleep really ends
  here (measured: ``woke``) and the pace's jitter;
* **budget**: spinning ahead may take at most ``budget`` of a core (a token bucket over
  ``window`` seconds); beyond that, and after ``MISSES`` windows in a row with nothing, the
  loop falls back to plain interrupts (epoll) until a regular pace is seen again.

With no traffic at all nothing is predicted and the loop sleeps in epoll: no CPU.

The loop calls ``sleep(now)`` before each poll (0: poll without sleeping; a number: sleep at
most that long; None: sleep until an fd is ready), ``moved(now)`` when an iteration moved
frames and ``woke(now)`` after every poll.  Everything takes ``now``; nothing reads a clock.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TypeVar

P = TypeVar("P")

MISSES = 2          # predicted windows in a row without a frame: stop predicting
GAIN = 0.125        # the smoothed gap's gain (TCP's SRTT: 1/8)
DEV_GAIN = 0.25     # its deviation's (TCP's RTTVAR: 1/4)


@dataclass(frozen=True)
class PollSettings:
    """``linger``: seconds of spinning after frames moved; ``max_gap``: bursts further apart
    than this are not predicted; ``budget``: the share of a core spinning ahead may use;
    ``window``: seconds the budget is counted over; ``margin``: seconds added to the lead and
    to the tail of each predicted window."""

    linger: float = 100e-6
    max_gap: float = 20e-3
    budget: float = 0.25
    window: float = 0.2
    margin: float = 30e-6

    def __post_init__(self) -> None:
        for name in ("linger", "max_gap", "window", "margin"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 seconds, not {getattr(self, name)}")
        if not 0 <= self.budget <= 1:
            raise ValueError(f"budget must be a share of a core, 0..1, not {self.budget}")


class PollPolicy:
    """The state of one loop's polling decisions (see the module docstring)."""

    def __init__(self, settings: PollSettings | None = None) -> None:
        self.settings = s = settings or PollSettings()
        self.last_moved = -1e9      # when frames last moved
        self.burst_start = -1e9     # when the current burst's first frame was seen
        self.gap = 0.0              # smoothed gap between bursts' starts (0: none yet)
        self.gap_dev = 0.0          # its mean deviation
        self.late = 0.0             # smoothed lateness of a timed sleep (how late it ends)
        self.misses = 0             # predicted windows in a row that passed empty
        self.tokens = s.budget * s.window   # seconds of ahead-spinning left in the bucket
        self.clock = -1e9           # the last ``now`` seen (for the bucket)
        self.spinning_ahead = False
        self.deadline = 0.0         # the end of a timed sleep in progress (0: none)
        self.window_end = 0.0       # the end of the predicted window being spun in

    # ---- what the loop reports ---------------------------------------------------------

    def moved(self, now: float, done: float | None = None) -> None:
        """An iteration that woke at ``now`` moved frames, and finished at ``done`` (the
        linger counts from there)."""
        s = self.settings
        if now - self.last_moved > s.linger:     # a new burst (not the tail of one)
            gap = now - self.burst_start
            self.burst_start = now
            if gap <= s.max_gap:
                if self.gap:
                    self.gap_dev += DEV_GAIN * (abs(gap - self.gap) - self.gap_dev)
                    self.gap += GAIN * (gap - self.gap)
                else:
                    self.gap, self.gap_dev = gap, gap / 4
            else:
                self.gap = self.gap_dev = 0.0   # not a pace: start over
            self.misses = 0
        self.last_moved = now if done is None else done
        self.window_end = 0.0

    def woke(self, now: float) -> None:
        """A poll returned (a timed sleep's lateness is learnt here)."""
        self._account(now)
        if self.deadline:
            if now >= self.deadline:
                self.late += GAIN * (now - self.deadline - self.late)
            self.deadline = 0.0

    # ---- the decision ------------------------------------------------------------------

    def sleep(self, now: float) -> float | None:
        """Seconds the next poll may sleep: 0 (spin), a number, or None (until woken)."""
        s = self.settings
        self._account(now)
        self.spinning_ahead = False
        if now - self.last_moved < s.linger:
            return 0.0
        due = self.due()
        if due is None:
            return None
        start, end = due
        if now >= end:                 # the window passed with nothing in it
            self.misses += 1
            self.window_end = 0.0
            self.burst_start += self.gap   # the next window is one pace later
            return self.sleep(now) if self.misses < MISSES else None
        if now >= start:
            if self.tokens <= 0:
                return None            # over budget: interrupts only
            self.spinning_ahead = True
            self.window_end = end
            return 0.0
        self.deadline = start
        return start - now

    def due(self) -> tuple[float, float] | None:
        """The next predicted window ``(start, end)``, or None when nothing is predicted."""
        if not self.gap or self.misses >= MISSES:
            return None
        s = self.settings
        spread = 2 * self.gap_dev + s.margin
        expected = self.burst_start + self.gap
        return expected - spread - self.late, expected + spread

    def _account(self, now: float) -> None:
        """The token bucket: time spent spinning ahead since the last call is taken out,
        ``budget`` of the elapsed time goes in (up to ``budget * window``)."""
        s = self.settings
        elapsed = max(now - self.clock, 0.0) if self.clock > -1e9 else 0.0
        self.clock = now
        tokens = self.tokens + s.budget * elapsed - (elapsed if self.spinning_ahead else 0.0)
        self.tokens = min(tokens, s.budget * s.window)


def next_budget(budget: int, exhausted: bool, elapsed: float, slice_: float,
                ceiling: int) -> int:
    """Frames a port may deliver in its next turn, so that one turn takes about ``slice_``
    seconds: a port that used its whole ``budget`` in ``elapsed`` seconds gets fewer frames
    if that was too long (GSO super-frames take ~50x a small frame), more (up to ``ceiling``)
    if it was quick.  A small frame on another port then waits at most about one slice per
    busy port, whatever their frames' sizes."""
    if not exhausted:
        return budget if budget >= ceiling else min(ceiling, budget * 2)
    if elapsed > slice_:
        return max(1, min(budget - 1, int(budget * slice_ / elapsed)))
    if elapsed < slice_ / 2:
        return min(ceiling, budget * 2)
    return budget


def turn_order(ready: Sequence[P], left_frames: Collection[P]) -> list[P]:
    """The order the ``ready`` ports take their turns in: those whose last turn did not leave
    frames behind (``left_frames``) first, then those that did, each group as given.  A bulk
    port that always has frames would otherwise often come first again (epoll lists it first)
    and take two turns in a row while a reply waited on another port (deficit round robin
    puts a flow with a backlog at the back of its list the same way)."""
    fresh = [port for port in ready if port not in left_frames]
    return fresh + [port for port in ready if port in left_frames]
