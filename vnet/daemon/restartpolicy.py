"""When to restart the datapath after it dies, and when to give up: a pure state machine.

Times in (``now``, the loop's monotonic clock), decisions out; the supervisor
(``vnet.daemon.supervisor``) is the thin adapter that spawns, waits and sleeps.  A datapath
that dies after running ``stable`` seconds is restarted at once: one crash is a fluke, and
every millisecond of the restart is frames lost.  One that keeps dying soon after its start
is restarted after a growing delay (``first_delay``, doubled each time up to ``max_delay``),
and after more than ``burst`` failures within ``window`` seconds the policy gives up, as
systemd's ``StartLimitBurst=``/``StartLimitIntervalSec=`` or an OTP supervisor's intensity
do: the datapath is ``failed`` until someone starts it again deliberately (``start``; vnetd
does on ``vnet up``).  A start that fails (the new process exits or never
answers) is a failure like a crash.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Phase(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"       # a process is being started and has not answered yet
    RUNNING = "running"
    RESTARTING = "restarting"   # it died; the next start is due at ``retry_at``
    FAILED = "failed"           # it died too often: no more restarts without a deliberate start


@dataclass(frozen=True)
class Limits:
    burst: int = 5              # failures allowed within ``window``; one more and it gives up
    window: float = 20.0
    stable: float = 5.0         # a run this long resets the back-off
    first_delay: float = 0.25   # before the second restart in a row
    max_delay: float = 4.0


@dataclass(frozen=True)
class Health:
    """What ``vnet status`` says about the datapath."""

    phase: Phase
    attempt: int                 # restarts in a row without a stable run in between
    restarts: int                # automatic restarts since vnetd started
    last_failure: str | None
    retry_in: float | None       # seconds until the next start (restarting)
    failures_in_window: int
    window_span: float           # seconds from the first to the last of those failures

    @property
    def message(self) -> str:
        last = f"last failure: {self.last_failure}" if self.last_failure else ""
        if self.phase is Phase.FAILED:
            return (f"failed: gave up after {self.failures_in_window} failures in "
                    f"{self.window_span:.1f} s ({last}); any 'vnet up' starts it "
                    f"again")
        if self.phase is Phase.RESTARTING or (self.phase is Phase.STARTING and self.attempt):
            due = f", next start in {self.retry_in:.2f} s" if self.retry_in else ""
            return f"restarting (attempt {self.attempt}{due}, {last})"
        if self.phase is Phase.RUNNING and self.restarts:
            return f"running ({self.restarts} restarts, {last})"
        return str(self.phase.value)


@dataclass
class RestartPolicy:
    limits: Limits = field(default_factory=Limits)
    phase: Phase = Phase.STOPPED
    attempt: int = 0
    restarts: int = 0
    last_failure: str | None = None
    started_at: float | None = None
    retry_at: float | None = None
    failures: list[float] = field(default_factory=list)   # times, within the window

    def start(self, now: float) -> None:
        """A deliberate start (vnetd's own, or a user's after it gave up): the slate is
        clean, no back-off and no burst count."""
        self.phase, self.attempt, self.failures = Phase.STARTING, 0, []
        self.started_at, self.retry_at = now, None

    def started(self, now: float) -> None:
        """The process answers: it runs."""
        self.phase, self.started_at = Phase.RUNNING, now

    def failed(self, now: float, why: str) -> float | None:
        """The process died (or its start failed): the seconds to wait before the next
        start, or None when the policy gives up (the phase is then ``FAILED``)."""
        if self.phase not in (Phase.RUNNING, Phase.STARTING):
            raise ValueError(f"a failure while the datapath is {self.phase.value}")
        ran = now - self.started_at if self.started_at is not None else 0.0
        if self.phase is Phase.RUNNING and ran >= self.limits.stable:
            self.attempt = 0
        self.last_failure = why
        self.failures = [t for t in self.failures if now - t < self.limits.window] + [now]
        if len(self.failures) > self.limits.burst:
            self.phase, self.retry_at = Phase.FAILED, None
            return None
        self.attempt += 1
        self.restarts += 1
        delay = 0.0 if self.attempt == 1 else min(
            self.limits.first_delay * 2 ** (self.attempt - 2), self.limits.max_delay)
        self.phase, self.retry_at = Phase.RESTARTING, now + delay
        return delay

    def restart_due(self, now: float) -> None:
        """The back-off has passed: the next process is being started."""
        if self.phase is not Phase.RESTARTING:
            raise ValueError(f"a restart while the datapath is {self.phase.value}")
        self.phase, self.started_at, self.retry_at = Phase.STARTING, now, None

    def stop(self) -> None:
        self.phase, self.retry_at = Phase.STOPPED, None

    def health(self, now: float) -> Health:
        recent = [t for t in self.failures if now - t < self.limits.window] \
            if self.phase is not Phase.FAILED else self.failures
        return Health(
            phase=self.phase, attempt=self.attempt, restarts=self.restarts,
            last_failure=self.last_failure,
            retry_in=max(0.0, self.retry_at - now) if self.retry_at is not None else None,
            failures_in_window=len(recent),
            window_span=recent[-1] - recent[0] if recent else 0.0)
