"""vnet.testing.wait_until on a fake clock: no real waiting."""

from __future__ import annotations

import pytest

from vnet.testing import wait_until


class FakeClock:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_returns_the_value_as_soon_as_the_condition_holds() -> None:
    clock = FakeClock()
    answers = iter([None, 0, "ready", "never asked"])
    calls = []

    def condition() -> str | int | None:
        calls.append(clock.now)
        return next(answers)

    assert wait_until(condition, timeout=30, interval=0.1, clock=clock,
                      sleep=clock.sleep) == "ready"
    assert len(calls) == 3                       # not called again once it held
    assert clock.sleeps == [0.1, 0.1]            # and no sleep after it held
    assert wait_until(lambda: True, clock=clock, sleep=clock.sleep) is True
    assert clock.sleeps == [0.1, 0.1]            # true at once: no sleep at all


def test_times_out_with_what_was_awaited_and_the_last_value() -> None:
    clock = FakeClock()
    calls = []

    def never() -> list[str]:
        calls.append(clock.now)
        return []

    with pytest.raises(AssertionError) as failure:
        wait_until(never, timeout=2, interval=0.5, message="the entry to age out",
                   clock=clock, sleep=clock.sleep)
    assert str(failure.value) == ("timed out after 2 s waiting for the entry to age out; "
                                  "last observed: []")
    assert clock.now == 1002.0                   # waited the whole deadline, and no longer
    assert clock.sleeps == [0.5, 0.5, 0.5, 0.5]
    assert calls == [1000.0, 1000.5, 1001.0, 1001.5, 1002.0]


def test_looks_once_more_at_the_deadline_and_never_sleeps_past_it() -> None:
    clock = FakeClock()
    looks: list[float] = []

    def condition() -> bool:
        looks.append(clock.now)
        return clock.now >= 1001.0

    assert wait_until(condition, timeout=1.0, interval=0.3, clock=clock, sleep=clock.sleep)
    assert looks[-1] == pytest.approx(1001.0)    # the last look was at the deadline itself
    assert max(clock.sleeps) <= 0.3 and sum(clock.sleeps) == pytest.approx(1.0)


def test_a_message_callable_is_asked_only_on_failure() -> None:
    clock = FakeClock()
    asked = []

    def evidence() -> str:
        asked.append(True)
        return "vm1's console to say 'up'; it shows: booting"

    assert wait_until(lambda: 5, message=evidence, clock=clock, sleep=clock.sleep) == 5
    assert asked == []
    with pytest.raises(AssertionError, match=r"waiting for vm1's console to say 'up'; it "
                       r"shows: booting; last observed: False"):
        wait_until(lambda: False, timeout=1, message=evidence, clock=clock, sleep=clock.sleep)
    assert asked == [True]


def test_an_exception_in_the_condition_is_not_swallowed() -> None:
    def broken() -> bool:
        raise KeyError("no port 'a9:eth0'")

    with pytest.raises(KeyError, match="a9:eth0"):
        wait_until(broken, timeout=60)


def test_the_real_clock_and_sleep_are_the_defaults() -> None:
    flips = iter([False, True])
    assert wait_until(lambda: next(flips), interval=0.001)   # one real millisecond
    with pytest.raises(AssertionError, match=r"timed out after 0\.01 s waiting for nothing"):
        wait_until(lambda: None, timeout=0.01, interval=0.001, message="nothing")
