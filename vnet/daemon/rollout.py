"""How far a published desired state got: each host's outcome, from what the bus shows (pure).

``vnet up`` of a multi-host lab on a vnetd with a bus publishes generation N and waits until
every host of the lab has *settled*: realised N (or a later one), failed with an error it
reported in its status, or is not alive (offline, lost, expired: it realises N when it comes
back, from the retained desired state).  ``vnet down`` publishes a tombstone at N and waits
until every host has dropped the lab from its status (or reported why it could not).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from vnet.bus.liveness import PeerTable
from vnet.bus.messages import LabRealised

OutcomeState = Literal["realised", "removed", "failed", "down", "waiting"]


@dataclass(frozen=True)
class HostOutcome:
    host: str
    state: OutcomeState
    detail: str
    generation: int | None = None     # what the host reports for the lab

    @property
    def settled(self) -> bool:
        return self.state != "waiting"

    @property
    def ok(self) -> bool:
        return self.state in ("realised", "removed")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def outcomes(lab: str, generation: int, hosts: Sequence[str], local_host: str,
             local: Mapping[str, LabRealised], peers: PeerTable, *, deleting: bool = False
             ) -> list[HostOutcome]:
    """Each host's outcome for ``lab`` at ``generation`` (``deleting``: its tombstone)."""
    out = []
    for host in hosts:
        if host == local_host:
            out.append(_judge(host, local.get(lab), generation, deleting))
            continue
        peer = peers.get(host)
        if peer is None:
            out.append(HostOutcome(host, "waiting", "no status from its vnetd yet (is it "
                                   "running, with this broker in its bus: config?)"))
        elif not peer.alive:
            out.append(HostOutcome(host, "down", f"its vnetd is {peer.state}; it will "
                                   "catch up from the retained desired state when it is back"))
        else:
            out.append(_judge(host, peer.labs.get(lab), generation, deleting))
    return out


def _judge(host: str, report: LabRealised | None, generation: int, deleting: bool
           ) -> HostOutcome:
    if deleting:
        if report is None:
            return HostOutcome(host, "removed", "its part is down")
        if report.error is not None and report.generation >= generation:
            return HostOutcome(host, "failed", report.error, report.generation)
        return HostOutcome(host, "waiting", f"still has generation {report.generation}",
                           report.generation)
    if report is None or report.generation < generation:
        now = "nothing yet" if report is None else f"generation {report.generation}"
        return HostOutcome(host, "waiting", f"has {now}",
                           None if report is None else report.generation)
    if report.error is not None:
        return HostOutcome(host, "failed", report.error, report.generation)
    return HostOutcome(host, "realised", f"generation {report.generation} is up",
                       report.generation)


def summary(lab: str, generation: int, results: Sequence[HostOutcome], *, deleting: bool,
            waited: float) -> str:
    """The words for a rollout that not every host finished."""
    what = "has taken its part down" if deleting else "has realised it"
    lines = [f"lab {lab} generation {generation} is published, but not every host {what}:"]
    for result in results:
        if result.ok:
            continue
        state = "no answer" if result.state == "waiting" else result.state
        extra = f" after {waited:.0f} s" if result.state == "waiting" else ""
        lines.append(f"  {result.host}: {state}{extra}: {result.detail}")
    return "\n".join(lines)
