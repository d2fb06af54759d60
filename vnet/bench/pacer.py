"""A smoothly paced frame sender, for offering a MAC sweep at a rate that means something.

trafgen's ``--rate`` keeps the average but not the pace: measured here (AMD EPYC, 2 cores),
``--rate 100000pps`` sent 5 000 frames in 11 ms (~470 k/s) and a 200 k sweep with 1 ms
peaks of 560 k/s, so a switch with a receive queue of a few thousand frames was offered
bursts at five times the rate asked for.  This sender (``send_repeated``, driven by the
64-byte generator, ``vnet.bench.frames64``) sends a chunk of frames at each due time: it
never runs ahead, and when it falls behind it catches up only a little faster than the rate
rather than in one burst.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CHUNK_SECONDS = 0.0005  # frames sent back to back at most: 50 at 100 k/s


def chunk_size(rate: float, chunk_seconds: float = CHUNK_SECONDS) -> int:
    return max(1, int(rate * chunk_seconds))


CATCH_UP = 1.1          # behind schedule, the 64-byte sender runs at most 10 % fast
BEHIND_SECONDS = 0.005  # and forgets a deficit older than this (it was descheduled)


def send_repeated(send_batch: Callable[[int], int], n: int, rate: float,
                  chunk_seconds: float = CHUNK_SECONDS,
                  clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> tuple[float, int]:
    """Send ``n`` frames at ``rate`` frames/s in chunks of ``chunk_size``, each by one
    ``send_batch(k)`` (which returns how many of the k it sent): ``(seconds it took, frames
    refused)``.  A sender that falls behind
    (descheduled) catches up at no more than CATCH_UP times the rate, and gives up a deficit
    of more than BEHIND_SECONDS, so no 1 ms holds much more than the rate's share (at most
    CATCH_UP x it plus a chunk), at the cost of a lower average rate, which the caller
    measures."""
    if n < 0 or rate <= 0 or chunk_seconds <= 0:
        raise ValueError(f"a paced send needs n >= 0 frames, a rate > 0 and a chunk > 0 s, "
                         f"not {n}, {rate}, {chunk_seconds}")
    size = chunk_size(rate, chunk_seconds)
    interval = size / rate
    min_gap = interval / CATCH_UP
    t0 = clock()
    due, last, done, refused = t0, t0 - min_gap, 0, 0
    while done < n:
        now = clock()
        if now - due > BEHIND_SECONDS:
            due = now
        at = max(due, last + min_gap)
        if at > now:
            sleep(at - now)
            last = at  # as scheduled: a late wake-up must not slow the schedule down
        else:
            last = now
        k = min(size, n - done)
        refused += k - send_batch(k)
        done += k
        due += interval
    return clock() - t0, refused
