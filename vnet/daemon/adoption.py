"""What a vnetd that finds the datapath and VM runners still running does with them (pure).

A vnetd that stopped or crashed leaves the datapath and its labs' VM runners running (see
``docs/service.md``).  The next one adopts them: the datapath is given every recorded
bridge and port again, which changes nothing it holds as recorded and re-programs what
differs (``recovery.recovery_plan(..., adopted=True)``); what it holds that no record has
(a lab removed while it was being adopted, a change that never reached the records) is
``stale`` and deleted.  Each VM is adopted, started, stopped or left stopped by
``vm_actions``: its user's choice (``vnet vm stop``) wins over what runs.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from vnet.daemon.resources import BridgeResource, PortResource, Resource


@dataclass(frozen=True)
class Stale:
    bridges: tuple[str, ...] = ()
    ports: tuple[tuple[str, str], ...] = ()   # (bridge, port) on a recorded bridge

    @property
    def empty(self) -> bool:
        return not self.bridges and not self.ports


def stale(held: Mapping[str, Collection[str]], recorded: Iterable[Resource]) -> Stale:
    """What the datapath ``held`` (bridge -> its ports) that no lab record has, ready or
    pending (a pending one is the next up's or down's to finish, not this one's)."""
    recorded = list(recorded)
    bridges = {r.lab for r in recorded if isinstance(r, BridgeResource)}
    ports = {(r.lab, r.name) for r in recorded if isinstance(r, PortResource)}
    return Stale(
        tuple(sorted(b for b in held if b not in bridges)),
        tuple(sorted((b, p) for b, names in held.items() if b in bridges
                     for p in names if (b, p) not in ports)))


class VmAction(enum.Enum):
    ADOPT = "adopt"            # its runner runs: supervise it
    START = "start"            # none runs (or it does not answer): start one, as ever
    STOP = "stop"              # its user stopped it, yet a runner runs: stop that
    STAY_STOPPED = "stay stopped"


def vm_action(wanted: str | None, runner_found: bool) -> VmAction:
    """``wanted``: the VM's run state as its user left it (``"stopped"``, or ``"running"``
    / None: the default); ``runner_found``: its recorded runner still runs."""
    if wanted == "stopped":
        return VmAction.STOP if runner_found else VmAction.STAY_STOPPED
    return VmAction.ADOPT if runner_found else VmAction.START
