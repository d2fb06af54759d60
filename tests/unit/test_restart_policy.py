"""The datapath's restart policy (pure): at once after a fluke, back-off in a crash loop,
give up after a burst, start again only deliberately."""

from __future__ import annotations

import pytest

from vnet.daemon.restartpolicy import Limits, Phase, RestartPolicy

LIMITS = Limits(burst=5, window=20.0, stable=5.0, first_delay=0.25, max_delay=4.0)


def running(now: float = 0.0) -> RestartPolicy:
    policy = RestartPolicy(LIMITS)
    policy.start(now)
    policy.started(now)
    return policy


def test_a_datapath_that_ran_a_while_is_restarted_at_once() -> None:
    policy = running()
    assert policy.failed(100.0, "killed by SIGKILL") == 0.0
    assert policy.phase is Phase.RESTARTING and policy.restarts == 1
    policy.restart_due(100.0)
    policy.started(100.3)
    # it runs longer than `stable` again: the next crash is a fluke too
    assert policy.failed(200.0, "killed by SIGKILL") == 0.0
    assert policy.health(200.0).attempt == 1


def test_a_crash_loop_backs_off_then_gives_up() -> None:
    policy = running()
    now, delays = 10.0, []
    while True:
        delay = policy.failed(now, "exited with status 1")
        if delay is None:
            break
        delays.append(delay)
        now += delay
        policy.restart_due(now)
        now += 0.1                 # it dies during its start, before it answers
    assert delays == [0.0, 0.25, 0.5, 1.0, 2.0]
    assert policy.phase is Phase.FAILED
    health = policy.health(now)
    assert health.failures_in_window == 6
    assert health.message == (f"failed: gave up after 6 failures in {health.window_span:.1f} s "
                              f"(last failure: exited with status 1); any 'vnet up' starts it "
                              f"again")
    # no timer leads out of failed: a deliberate start does, with a clean slate
    with pytest.raises(ValueError):
        policy.restart_due(now + 100)
    policy.start(now + 100)
    policy.started(now + 100.2)
    assert policy.failed(now + 101, "killed by SIGKILL") == 0.0


def test_the_delay_is_capped() -> None:
    policy = RestartPolicy(Limits(burst=100, window=20.0, first_delay=0.25, max_delay=4.0))
    policy.start(0.0)
    policy.started(0.0)
    now, delays = 0.0, []
    for _ in range(10):
        delay = policy.failed(now, "x")
        assert delay is not None
        delays.append(delay)
        now += delay
        policy.restart_due(now)
    assert delays[-3:] == [4.0, 4.0, 4.0]


def test_failures_older_than_the_window_do_not_count() -> None:
    policy = running()
    now = 0.0
    for _ in range(20):            # one crash every 6 s (after a stable run) forever: no give-up
        now += 6.0
        assert policy.failed(now, "killed by SIGKILL") == 0.0
        policy.restart_due(now)
        policy.started(now)
    assert policy.phase is Phase.RUNNING and policy.restarts == 20


def test_what_status_says() -> None:
    policy = running()
    assert policy.health(1.0).message == "running"
    policy.failed(1.0, "killed by SIGKILL")          # not stable: attempt 1, at once
    policy.restart_due(1.0)
    assert policy.health(1.1).message == ("restarting (attempt 1, last failure: killed by "
                                          "SIGKILL)")
    policy.failed(1.2, "the datapath exited at start (status 1)")
    assert policy.health(1.3).message == (
        "restarting (attempt 2, next start in 0.15 s, last failure: the datapath exited at "
        "start (status 1))")
    policy.restart_due(1.45)
    policy.started(1.6)
    assert policy.health(2.0).message == ("running (2 restarts, last failure: the datapath "
                                          "exited at start (status 1))")


def test_a_failure_while_nothing_runs_is_a_bug() -> None:
    policy = RestartPolicy(LIMITS)
    with pytest.raises(ValueError, match="while the datapath is stopped"):
        policy.failed(0.0, "x")
