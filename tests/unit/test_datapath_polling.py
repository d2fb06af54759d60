"""The datapath's polling policy (``vnet.datapath.polling``): pure, driven by a fake clock."""

from __future__ import annotations

import pytest

from vnet.datapath.polling import MISSES, PollPolicy, PollSettings, next_budget, turn_order

US = 1e-6
MS = 1e-3


def periodic(policy: PollPolicy, start: float, gap: float, count: int) -> float:
    """Frames arrive every ``gap`` seconds, each handled in 20 µs; returns the last time."""
    now = start
    for _ in range(count):
        policy.woke(now)
        policy.moved(now, now + 20 * US)
        now += gap
    return now - gap


def spin_share(policy: PollPolicy, start: float, end: float, step: float = 10 * US) -> float:
    """Drive the loop from ``start`` to ``end`` with no frames; the share of it spent
    spinning (timeout 0), sleeping as told otherwise."""
    now, spun = start, 0.0
    while now < end:
        timeout = policy.sleep(now)
        if timeout == 0.0:
            spun += step
            now += step
        else:
            now = end if timeout is None else min(end, now + timeout)
        policy.woke(now)
    return spun / (end - start)


def test_no_traffic_means_no_spinning() -> None:
    policy = PollPolicy()
    assert policy.sleep(0.0) is None
    assert spin_share(policy, 0.0, 1.0) == 0.0


def test_it_lingers_after_frames_then_sleeps() -> None:
    policy = PollPolicy(PollSettings(linger=100 * US))
    policy.moved(1.0, 1.0)
    assert policy.sleep(1.0 + 50 * US) == 0.0
    assert policy.sleep(1.0 + 150 * US) is None   # one burst is not a pace


def test_a_regular_pace_is_spun_for_just_before_it_is_due() -> None:
    policy = PollPolicy()
    last = periodic(policy, 10.0, 2 * MS, 20)
    due = policy.due()
    assert due is not None
    start, end = due
    assert start < last + 2 * MS < end            # the next frame falls in the window
    assert end - start < 0.3 * MS                 # ... which is short
    timeout = policy.sleep(last + 0.5 * MS)
    assert timeout == pytest.approx(start - (last + 0.5 * MS))  # sleep until it opens
    assert policy.sleep(start + 1 * US) == 0.0    # then spin


def test_spinning_ahead_stays_within_the_budget_of_a_core() -> None:
    settings = PollSettings(budget=0.1, window=0.05)
    policy = PollPolicy(settings)
    now = 10.0
    spun = 0.0
    # a jittery pace (1.0 and 3.0 ms alternating) widens the windows; spinning is capped
    for i in range(400):
        gap = 1 * MS if i % 2 else 3 * MS
        end = now + gap
        t = now + 20 * US
        while t < end:
            timeout = policy.sleep(t)
            if timeout == 0.0:
                spun += 10 * US
                t += 10 * US
            else:
                t = end if timeout is None else min(end, t + timeout)
            policy.woke(t)
        now = end
        policy.woke(now)
        policy.moved(now, now + 20 * US)
    linger = 400 * settings.linger
    assert (spun - linger) / (now - 10.0) <= settings.budget + 0.02


def test_it_stops_predicting_when_the_pace_stops() -> None:
    policy = PollPolicy()
    last = periodic(policy, 10.0, 2 * MS, 20)
    share = spin_share(policy, last + 20 * US, last + 1.0)
    assert policy.misses == MISSES
    assert policy.sleep(last + 1.0) is None       # back to interrupts only
    assert share < 0.01


def test_a_late_timer_moves_the_window_earlier() -> None:
    policy = PollPolicy()
    last = periodic(policy, 10.0, 2 * MS, 20)
    due = policy.due()
    assert due is not None
    before = due[0]
    for _ in range(30):                           # timed sleeps end 80 µs late here
        deadline = policy.sleep(last + 0.3 * MS)
        assert deadline is not None and deadline > 0
        policy.woke(last + 0.3 * MS + deadline + 80 * US)
    due = policy.due()
    assert due is not None and due[0] < before - 60 * US


def test_gaps_longer_than_max_gap_are_not_a_pace() -> None:
    policy = PollPolicy(PollSettings(max_gap=5 * MS))
    periodic(policy, 10.0, 50 * MS, 10)
    assert policy.due() is None


def test_bad_settings_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="budget must be a share of a core"):
        PollSettings(budget=2.0)
    with pytest.raises(ValueError, match="linger must be >= 0"):
        PollSettings(linger=-1.0)


@pytest.mark.parametrize(("budget", "exhausted", "elapsed", "expected"), [
    (64, True, 3 * MS, 3),        # 64 super-frames took 3 ms: a 150 µs turn holds 3
    (64, True, 100 * US, 64),     # small frames within the slice: unchanged
    (8, True, 40 * US, 16),       # quick: it grows back
    (4, False, 10 * US, 8),       # the port ran dry: it grows back too
    (64, False, 10 * US, 64),     # ... up to the ceiling
    (2, True, 10 * MS, 1),        # never below one frame
    (10, True, 160 * US, 9),      # just over the slice: at least one fewer
])
def test_a_ports_turn_is_fitted_to_the_slice(budget: int, exhausted: bool, elapsed: float,
                                              expected: int) -> None:
    assert next_budget(budget, exhausted, elapsed, 150 * US, 64) == expected


def test_a_port_whose_turn_left_frames_goes_after_the_others() -> None:
    """The bulk port ``a`` (frames left) listed first by epoll takes its turn after ``b``
    (a reply waiting) and ``c``; ports keep their order within each group."""
    assert turn_order(["a", "b", "c"], {"a"}) == ["b", "c", "a"]
    assert turn_order(["a", "b", "c"], {"a", "c"}) == ["b", "a", "c"]
    assert turn_order(["a", "b"], set()) == ["a", "b"]
    assert turn_order(["a", "b"], {"a", "b", "z"}) == ["a", "b"]
