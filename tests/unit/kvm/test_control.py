"""The runner's control requests and its pause/resume/shutdown state machine (pure)."""

from __future__ import annotations

import pytest

from vnet.kvm.control import (
    DEFAULT_DEADLINE,
    MAX_REQUEST,
    Action,
    ControlError,
    Request,
    RunControl,
    RunState,
    guest_status,
    parse_request,
)


@pytest.mark.parametrize(("line", "request_"), [
    (b'{"op": "status"}\n', Request("status")),
    (b'{"op": "pause"}', Request("pause")),
    (b'{"op": "shutdown"}', Request("shutdown", DEFAULT_DEADLINE)),
    (b'{"op": "shutdown", "deadline": 2.5}', Request("shutdown", 2.5)),
])
def test_requests_are_decoded(line: bytes, request_: Request) -> None:
    assert parse_request(line) == request_


@pytest.mark.parametrize(("line", "error"), [
    (b"{", "not a JSON line"),
    (b"\xff\xfe", "not a JSON line"),
    (b'"status"', "must be a JSON object"),
    (b"{}", 'needs "op", one of: status, pause, resume, shutdown'),
    (b'{"op": 3}', 'needs "op"'),
    (b'{"op": "reboot"}', "unknown op 'reboot': say one of status, pause, resume, shutdown"),
    (b'{"op": "pause", "deadline": 3}', "pause takes no 'deadline'"),
    (b'{"op": "shutdown", "force": true}', "it takes only deadline"),
    (b'{"op": "shutdown", "deadline": 0}', "deadline 0: say a number of seconds above 0"),
    (b'{"op": "shutdown", "deadline": true}', "deadline True"),
    (b'{"op": "shutdown", "deadline": 1e9}', "at most 3600"),
    (b'{"op": "status", "pad": "' + b"x" * MAX_REQUEST + b'"}', "at most 4096 bytes"),
])
def test_bad_requests_say_what_is_wrong(line: bytes, error: str) -> None:
    with pytest.raises(ControlError) as caught:
        parse_request(line)
    assert error in str(caught.value)
    assert "Errno" not in str(caught.value)


def test_pause_and_resume() -> None:
    control = RunControl()
    assert control.pause() == [Action.PAUSE_VCPUS]
    assert control.state == RunState.PAUSED
    with pytest.raises(ControlError, match="already paused"):
        control.pause()
    assert control.resume() == [Action.RESUME_VCPUS]
    with pytest.raises(ControlError, match="running, not paused"):
        control.resume()


def test_shutdown_resumes_a_paused_guest_and_forces_it_off_at_the_deadline() -> None:
    control = RunControl()
    control.pause()
    assert control.shutdown(100.0, 5.0) == [Action.RESUME_VCPUS,
                                             Action.ASK_GUEST_TO_POWER_OFF]
    assert control.state == RunState.SHUTTING_DOWN
    assert control.remaining(101.0) == 4.0
    assert control.tick(104.9) == []
    assert control.tick(105.0) == [Action.FORCE_OFF]
    with pytest.raises(ControlError, match="shutting down"):
        control.pause()
    with pytest.raises(ControlError, match="shutting-down, not paused"):
        control.resume()


def test_a_second_shutdown_keeps_the_earlier_deadline() -> None:
    control = RunControl()
    control.shutdown(0.0, 10.0)
    assert control.shutdown(1.0, 30.0) == []
    assert control.deadline_at == 10.0
    assert control.shutdown(2.0, 1.0) == []
    assert control.deadline_at == 3.0


def test_no_deadline_while_running() -> None:
    control = RunControl()
    assert control.tick(1e12) == [] and control.remaining(0.0) is None


def test_guest_statuses_stay_below_the_runners_own() -> None:
    assert guest_status(0) == 0 and guest_status(1) == 1 and guest_status(200) == 63
