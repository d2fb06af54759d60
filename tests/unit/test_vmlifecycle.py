"""The VM runner lifecycle: every transition of the table, restart policies, back-off, burst."""

from __future__ import annotations

import pytest

from vnet.daemon.vmlifecycle import BURST, TABLE, IllegalTransition, VmEvent, VmLifecycle, VmState

S, E = VmState, VmEvent


def running(policy: str = "on-failure") -> VmLifecycle:
    vm = VmLifecycle(policy)  # type: ignore[arg-type]
    vm.handle(E.START, 0.0)
    vm.handle(E.SPAWNED, 0.0)
    return vm


def test_start_and_stop() -> None:
    vm = running()
    assert vm.state == S.RUNNING
    assert vm.handle(E.STOP, 1.0) == S.STOPPING
    assert vm.handle(E.EXITED_OK, 1.1) == S.STOPPED


@pytest.mark.parametrize(("policy", "event", "expected"), [
    ("no", E.EXITED_OK, S.STOPPED), ("no", E.EXITED_FAIL, S.CRASHED),
    ("on-failure", E.EXITED_OK, S.STOPPED), ("on-failure", E.EXITED_FAIL, S.RESTARTING),
    ("always", E.EXITED_OK, S.RESTARTING), ("always", E.EXITED_FAIL, S.RESTARTING)])
def test_restart_policy(policy: str, event: VmEvent, expected: VmState) -> None:
    vm = running(policy)
    assert vm.handle(event, 1.0, "status 9") == expected
    assert vm.last_exit == "status 9"


def test_backoff_grows_and_a_burst_gives_up() -> None:
    vm = running()
    delays = []
    for i in range(BURST):
        now = 1.0 + i
        assert vm.handle(E.EXITED_FAIL, now) == S.RESTARTING
        assert vm.restart_at is not None
        delays.append(vm.restart_at - now)
        vm.handle(E.RESTART_DUE, vm.restart_at)
        vm.handle(E.SPAWNED, vm.restart_at)
    assert delays == sorted(delays) and delays[0] < delays[-1]
    assert vm.handle(E.EXITED_FAIL, 10.0) == S.FAILED
    assert vm.handle(E.START, 11.0) == S.STARTING  # a deliberate start resets the count
    assert vm.restarts == []


def test_restarts_outside_the_window_do_not_count() -> None:
    vm = running()
    for i in range(BURST * 3):
        now = i * 100.0
        assert vm.handle(E.EXITED_FAIL, now) == S.RESTARTING
        vm.handle(E.RESTART_DUE, now + 1)
        vm.handle(E.SPAWNED, now + 1)


def test_illegal_events_raise_and_change_nothing() -> None:
    vm = running()
    with pytest.raises(IllegalTransition, match="spawned is not possible while the VM is running"):
        vm.handle(E.SPAWNED, 1.0)
    assert vm.state == S.RUNNING
    every = {(s, e) for s in S for e in E}
    for state, event in every - set(TABLE):
        vm = VmLifecycle(state=state)
        with pytest.raises(IllegalTransition):
            vm.handle(event, 0.0)
        assert vm.state == state


def test_stop_while_waiting_to_restart() -> None:
    vm = running()
    vm.handle(E.EXITED_FAIL, 1.0)
    assert vm.handle(E.STOP, 1.1) == S.STOPPED and vm.restart_at is None
