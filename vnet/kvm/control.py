"""The VM runner's control protocol and run state (pure: bytes and ``now`` in, decisions out).

A runner's control socket speaks vnet's JSON lines (``vnet/jsonlines.py``): one request
object per line, one reply per request.  Requests:

- ``{"op": "status"}``: state, vCPUs, each virtio device's per-queue counters, console clients;
- ``{"op": "pause"}`` / ``{"op": "resume"}``: the vCPUs stop / start running guest code
  (devices keep serving their queues, so frames arriving meanwhile are counted and queued);
- ``{"op": "shutdown", "deadline": SECONDS}``: ask the guest to power off; at the deadline
  (default ``DEFAULT_DEADLINE``) it is forced off.

``RunControl`` is the state machine of pause, resume and shutdown; the runner applies what it
returns.  The runner's exit statuses are ``ExitStatus``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from vnet import jsonlines
from vnet.errors import ProtocolError, VnetError

OPS = ("status", "pause", "resume", "shutdown")
MAX_REQUEST = 4096       # bytes in one request line; the protocol's requests are tiny
DEFAULT_DEADLINE = 30.0  # seconds a guest gets to power off when asked
MAX_DEADLINE = 3600.0


class ExitStatus(enum.IntEnum):
    """Why a runner exited.  Below 64 (other than SETUP_FAILED) it is the guest's own status:
    the byte it wrote to the exit port (capped at 63), 0 after a power-off or a reset with
    ``--on-reboot exit``, or after SIGTERM/SIGINT."""

    OK = 0
    SETUP_FAILED = 1        # bad arguments, a kernel or disk that cannot be used, no /dev/kvm
    VCPU_FAILED = 70        # a vCPU stopped on something KVM or the VMM cannot go on from
    DEVICE_FAILED = 71      # a device thread failed (a bug or its backend broke)
    SHUTDOWN_FORCED = 72    # asked to shut down, the guest did not power off by the deadline
    SUPERVISOR_FAILED = 73  # the runner's own supervisory side failed (a bug)


def guest_status(value: int) -> int:
    return min(value, 63)


class ControlError(VnetError):
    """A request the runner refuses; the message says what is wrong and what to send."""


@dataclass(frozen=True)
class Request:
    op: str
    deadline: float = DEFAULT_DEADLINE  # only for shutdown


def parse_request(line: bytes) -> Request:
    """One request line (without or with its newline) as a ``Request``, or ``ControlError``."""
    if len(line) > MAX_REQUEST:
        raise ControlError(f"a request line is at most {MAX_REQUEST} bytes; this one has "
                           f"{len(line)}")
    try:
        message = jsonlines.decode(line)
    except ProtocolError as err:
        raise ControlError(f"{err}; send one JSON object per line, e.g. "
                           '{"op": "status"}') from None
    op = message.get("op")
    if not isinstance(op, str):
        raise ControlError(f'a request needs "op", one of: {", ".join(OPS)}')
    if op not in OPS:
        raise ControlError(f"unknown op {op!r}: say one of {', '.join(OPS)}")
    allowed = {"op", "deadline"} if op == "shutdown" else {"op"}
    extra = sorted(set(message) - allowed)
    if extra:
        raise ControlError(f"{op} takes no {', '.join(map(repr, extra))}"
                           + ("; it takes only deadline (seconds)" if op == "shutdown" else ""))
    if "deadline" not in message:
        return Request(op)
    deadline = message["deadline"]
    if isinstance(deadline, bool) or not isinstance(deadline, int | float) or not (
            0 < deadline <= MAX_DEADLINE):
        raise ControlError(f"deadline {deadline!r}: say a number of seconds above 0 and at "
                           f"most {MAX_DEADLINE:.0f}")
    return Request(op, float(deadline))


class RunState(enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTTING_DOWN = "shutting-down"


class Action(enum.Enum):
    PAUSE_VCPUS = "pause-vcpus"
    RESUME_VCPUS = "resume-vcpus"
    ASK_GUEST_TO_POWER_OFF = "ask-guest-to-power-off"
    FORCE_OFF = "force-off"


class RunControl:
    """Pause, resume and shutdown as a state machine.  A shutdown resumes a paused guest (it
    must run to power off) and keeps the earliest deadline it was given."""

    def __init__(self) -> None:
        self.state = RunState.RUNNING
        self.deadline_at: float | None = None

    def pause(self) -> list[Action]:
        if self.state == RunState.PAUSED:
            raise ControlError("the VM is already paused; resume it with {\"op\": \"resume\"}")
        if self.state == RunState.SHUTTING_DOWN:
            raise ControlError("the VM is shutting down; it cannot be paused")
        self.state = RunState.PAUSED
        return [Action.PAUSE_VCPUS]

    def resume(self) -> list[Action]:
        if self.state != RunState.PAUSED:
            raise ControlError(f"the VM is {self.state.value}, not paused; nothing to resume")
        self.state = RunState.RUNNING
        return [Action.RESUME_VCPUS]

    def shutdown(self, now: float, deadline: float) -> list[Action]:
        at = now + deadline
        if self.state == RunState.SHUTTING_DOWN:
            assert self.deadline_at is not None
            self.deadline_at = min(self.deadline_at, at)
            return []
        actions = [Action.RESUME_VCPUS] if self.state == RunState.PAUSED else []
        self.state = RunState.SHUTTING_DOWN
        self.deadline_at = at
        return [*actions, Action.ASK_GUEST_TO_POWER_OFF]

    def tick(self, now: float) -> list[Action]:
        """What is due at ``now``: forcing the guest off once its deadline has passed."""
        if self.state == RunState.SHUTTING_DOWN and self.deadline_at is not None and (
                now >= self.deadline_at):
            return [Action.FORCE_OFF]
        return []

    def remaining(self, now: float) -> float | None:
        return None if self.deadline_at is None else max(0.0, self.deadline_at - now)
