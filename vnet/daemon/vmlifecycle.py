"""The lifecycle of a VM runner process under vnetd, as one transition table (like h11's).

Pure: events and ``now`` in, the new state and what to do out.  An event that the table
does not allow in the current state raises ``IllegalTransition`` and changes nothing.  The
restart policy (``no`` | ``on-failure`` | ``always``) decides what an exit leads to; restarts
back off exponentially and stop after ``BURST`` within ``WINDOW`` seconds (as systemd's
StartLimitBurst), leaving the VM ``failed`` until someone starts it again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

from vnet.errors import VnetError

Policy = Literal["no", "on-failure", "always"]
BURST = 5
WINDOW = 60.0
MAX_BACKOFF = 10.0


class VmState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    RESTARTING = "restarting"   # waiting for its back-off to pass
    CRASHED = "crashed"         # exited with an error and the policy says leave it
    FAILED = "failed"           # restarted too often


class VmEvent(enum.Enum):
    START = "start"             # user or `vnet up`
    SPAWNED = "spawned"         # the runner process exists
    EXITED_OK = "exited-ok"     # the guest powered off (status 0)
    EXITED_FAIL = "exited-fail"  # the runner failed or was killed
    STOP = "stop"               # user or `vnet down`
    RESTART_DUE = "restart-due"  # the back-off has passed


class IllegalTransition(VnetError):
    """An event the VM's current state does not allow; nothing changed."""


S, E = VmState, VmEvent
# (state, event) -> next state; None means: ask the restart policy.
TABLE: dict[tuple[VmState, VmEvent], VmState | None] = {
    (S.STOPPED, E.START): S.STARTING,
    (S.CRASHED, E.START): S.STARTING,
    (S.FAILED, E.START): S.STARTING,
    (S.STARTING, E.SPAWNED): S.RUNNING,
    (S.STARTING, E.EXITED_FAIL): None,
    (S.STARTING, E.STOP): S.STOPPING,
    (S.RUNNING, E.EXITED_OK): None,
    (S.RUNNING, E.EXITED_FAIL): None,
    (S.RUNNING, E.STOP): S.STOPPING,
    (S.STOPPING, E.EXITED_OK): S.STOPPED,
    (S.STOPPING, E.EXITED_FAIL): S.STOPPED,
    (S.RESTARTING, E.RESTART_DUE): S.STARTING,
    (S.RESTARTING, E.STOP): S.STOPPED,
    (S.CRASHED, E.STOP): S.STOPPED,
    (S.FAILED, E.STOP): S.STOPPED,
    (S.STOPPED, E.STOP): S.STOPPED,
}


@dataclass
class VmLifecycle:
    policy: Policy = "on-failure"
    state: VmState = VmState.STOPPED
    restarts: list[float] = field(default_factory=list)  # times of automatic restarts
    restart_at: float | None = None                       # when RESTARTING ends
    last_exit: str | None = None
    restarts_total: int = 0    # automatic restarts done (``restarts``: the recent ones' times)

    def handle(self, event: VmEvent, now: float, detail: str | None = None) -> VmState:
        key = (self.state, event)
        if key not in TABLE:
            raise IllegalTransition(f"{event.value} is not possible while the VM is "
                                    f"{self.state.value}")
        target = TABLE[key]
        if event in (E.EXITED_OK, E.EXITED_FAIL):
            self.last_exit = detail or event.value
        if target is None:
            target = self._after_exit(event, now)
        if event == E.START:
            self.restarts.clear()  # a deliberate start resets the burst count
        elif event == E.RESTART_DUE:
            self.restarts_total += 1
        self.state = target
        if target != S.RESTARTING:
            self.restart_at = None
        return target

    def _after_exit(self, event: VmEvent, now: float) -> VmState:
        wants_restart = self.policy == "always" or (
            self.policy == "on-failure" and event == E.EXITED_FAIL)
        if not wants_restart:
            return S.STOPPED if event == E.EXITED_OK else S.CRASHED
        self.restarts = [t for t in self.restarts if now - t < WINDOW]
        if len(self.restarts) >= BURST:
            return S.FAILED
        self.restarts.append(now)
        self.restart_at = now + min(2.0 ** (len(self.restarts) - 1) * 0.5, MAX_BACKOFF)
        return S.RESTARTING
