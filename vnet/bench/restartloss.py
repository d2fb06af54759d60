"""The restart benchmark's arithmetic (pure; unit-tested): what a stream lost across one
disruption, whether its own accounting agrees, and the medians of several repetitions.

A stream is a record of arrivals, sequence number -> arrival time (seconds since the epoch,
the clock the disruption's time is taken on).  ``loss_after`` counts every sequence number
missing from the last one that arrived before the disruption up to the last that arrived at
all, so frames lost in several gaps (a stall as vnetd re-adopts, say) all count; the tail a
stopped stream never delivered is not counted.
"""

from __future__ import annotations

import itertools
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PING_REPLY = re.compile(r"^\[(\d+\.\d+)\] .*icmp_seq=(\d+) ")
PING_SUMMARY = re.compile(r"^(\d+) packets transmitted, (\d+) received")


@dataclass(frozen=True)
class Loss:
    """One stream across one disruption."""

    lost: int               # sequence numbers that never arrived, after the disruption
    received: int           # that did, up to the last arrival
    back_after: float       # s from the disruption to the first arrival after the first
                            # gap (forwarding again); 0.0 when nothing was lost
    longest_silence: float  # the longest time between two arrivals from the disruption on


@dataclass(frozen=True)
class Accounting:
    """A stream's own count against what was seen to arrive: they must agree (else the
    measurement, not the switch, is wrong)."""

    sent: int               # as the sender counted (ping's "transmitted")
    arrived: int            # distinct sequence numbers seen to arrive
    reported: int | None    # what the receiving side counted (ping's "received"), if it does
    highest: int            # the highest sequence number seen

    @property
    def problems(self) -> list[str]:
        out = []
        if self.highest > self.sent:
            out.append(f"sequence number {self.highest} arrived but only {self.sent} were sent")
        if self.arrived > self.sent:
            out.append(f"{self.arrived} arrived but only {self.sent} were sent")
        if self.reported is not None and self.reported != self.arrived:
            out.append(f"the receiver counted {self.reported}, {self.arrived} were seen")
        return out


def loss_after(disrupted_at: float, arrivals: Mapping[int, float]) -> Loss:
    """What the stream lost from ``disrupted_at`` on; ``ValueError`` (saying which) if it
    did not flow before the disruption or never flowed again."""
    before = [s for s, t in arrivals.items() if t <= disrupted_at]
    if not before:
        raise ValueError("nothing arrived before the disruption: the stream never flowed")
    base = max(before)
    after = sorted(s for s in arrivals if s > base)
    if not after:
        raise ValueError("nothing arrived after the disruption: the stream never resumed")
    lost = after[-1] - base - len(after)
    gap_end = next((s for s in after if s - 1 not in arrivals), None)
    back = arrivals[gap_end] - disrupted_at if gap_end is not None and lost else 0.0
    times = sorted([disrupted_at, *(t for t in arrivals.values() if t > disrupted_at)])
    silence = max(b - a for a, b in itertools.pairwise(times))
    return Loss(lost, len(after), back, silence)


def parse_ping_reply(line: str) -> tuple[int, float] | None:
    """``ping -D``'s reply line: (icmp_seq, time), or None for any other line."""
    match = PING_REPLY.match(line)
    return (int(match[2]), float(match[1])) if match else None


def parse_ping_summary(lines: Sequence[str]) -> tuple[int, int] | None:
    """(transmitted, received) from ping's closing statistics, or None if it printed none."""
    for line in lines:
        if match := PING_SUMMARY.match(line):
            return int(match[1]), int(match[2])
    return None


def parse_datagram(line: str) -> tuple[int, float] | None:
    """The receiver's ``SEQ TIME`` line, or None for any other."""
    seq, _, when = line.strip().partition(" ")
    if not seq.isdigit() or not when:
        return None
    return int(seq), float(when)


def accounting(sent: int, arrivals: Mapping[int, float], reported: int | None) -> Accounting:
    return Accounting(sent, len(arrivals), reported, max(arrivals, default=0))


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    def text(self, fmt: str = "{:g}") -> str:
        value = fmt.format(self.median)
        if self.low == self.high:
            return value
        return f"{value} ({fmt.format(self.low)}..{fmt.format(self.high)})"


def spread(values: Sequence[float]) -> Spread:
    if not values:
        raise ValueError("no values to take the median of")
    return Spread(statistics.median(values), min(values), max(values))
