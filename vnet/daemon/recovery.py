"""What a lab's record needs when vnetd comes back: each recorded resource kept or rebuilt.

A reboot takes every namespace, veth, TAP, dnsmasq and nftables table with it while the lab
records stay; anyone may also remove a lab's objects while vnetd is down, and a new datapath
holds no bridge or port.  So vnetd does not trust its records at start: it asks the driver
of each of the kernel's resources whether it exists, and ``recovery_plan`` (pure) decides.
Every bridge and port is rebuilt (in the new datapath), a resource that is absent is too,
and so is one that lives on a rebuilt one (a port on a node's new veth, a node's DHCP lease
in its new namespace, a dnsmasq bound to a new gateway), in creation order, each with what
it needs made first.  ``reconciler.restore`` carries the plan out, resource by resource,
so that one that cannot be made (its uplink is gone) leaves only what needs it unmade,
never the daemon unstarted.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from vnet.daemon.resources import (
    KIND_ORDER,
    BridgeResource,
    DhcpLeaseResource,
    DhcpResource,
    GatewayResource,
    NetnsNodeResource,
    OverlayResource,
    PortResource,
    Resource,
    VmNodeResource,
    is_datapath_kind,
)

NetdevOwner = NetnsNodeResource | VmNodeResource | GatewayResource | OverlayResource


@dataclass(frozen=True)
class Rebuild:
    """One resource to make again, the recorded resources it needs made first, and whether
    something of it may be left to delete before (not in a new datapath)."""

    resource: Resource
    needs: tuple[Resource, ...] = ()
    clear: bool = True


@dataclass(frozen=True)
class Recovery:
    keep: tuple[Resource, ...] = ()       # there as recorded
    rebuild: tuple[Rebuild, ...] = ()     # in creation order

    @property
    def empty(self) -> bool:
        return not self.rebuild


def needs(resource: Resource, recorded: Iterable[Resource]) -> tuple[Resource, ...]:
    """What ``resource`` cannot be made without, among the lab's ``recorded`` resources:
    a port needs its bridge and the owner of its netdev (an uplink port's netdev is the
    host's, so no record names it); a DHCP lease its node, that node's ports and the lab's
    DHCP servers; a DHCP server its gateway."""
    same_lab = [r for r in recorded if r.lab == resource.lab and r != resource]
    if isinstance(resource, PortResource):
        return tuple(r for r in same_lab if isinstance(r, BridgeResource) or (
            resource.node and isinstance(r, NetdevOwner) and r.node == resource.node))
    if isinstance(resource, DhcpLeaseResource):
        return tuple(r for r in same_lab if isinstance(r, DhcpResource) or (
            isinstance(r, NetnsNodeResource | PortResource) and r.node == resource.node))
    if isinstance(resource, DhcpResource):
        return tuple(r for r in same_lab if isinstance(r, GatewayResource)
                     and r.network == resource.network)
    return ()


def lives_on(resource: Resource, recorded: Iterable[Resource]) -> tuple[Resource, ...]:
    """Those of its ``needs`` whose rebuilding rebuilds ``resource`` too: a port's socket is
    on the old netdev and in the old bridge, a lease's address was in the old namespace, a
    dnsmasq listens on the old gateway.  A lease outlives its port's re-adding to a new
    datapath (the address stays in the node), so a port does not carry its lease along."""
    required = needs(resource, recorded)
    if isinstance(resource, DhcpLeaseResource):
        return tuple(r for r in required if isinstance(r, NetnsNodeResource))
    return required


def recovery_plan(ready: Sequence[Resource], present: Collection[Resource],
                  unfinished: Sequence[Resource] = (), adopted: bool = False) -> Recovery:
    """For a new datapath (vnetd's start, the datapath's restart): keep the kernel's
    resources among ``ready`` that are ``present``, rebuild the rest and what lives on them,
    and every bridge and port (a new datapath has none, nor anything left of one).

    ``adopted``: the datapath is one an earlier vnetd left running, which holds its ports.
    Each is given again all the same (adding a port the datapath holds as recorded changes
    nothing, one that differs is replaced), but a port whose netdev is rebuilt is deleted
    first: the datapath's socket is on the old netdev.

    ``unfinished``: the lab's ``pending`` resources (an up or down that did not finish),
    left to the next up or down as ever; what needs one of them cannot be rebuilt now."""
    recorded = [*ready, *unfinished]
    keep: list[Resource] = []
    rebuild: list[Rebuild] = []
    rebuilt: set[Resource] = set()
    remade: set[Resource] = set()   # made anew (not given again to a datapath that has it)
    for resource in sorted(ready, key=lambda r: KIND_ORDER[r.kind]):  # stable: record order
        in_datapath = is_datapath_kind(resource)
        if (in_datapath or resource not in present
                or any(r in rebuilt for r in lives_on(resource, recorded))):
            rebuilt.add(resource)
            # an adopted datapath's port is replaced only if what it lives on is new
            clear = not in_datapath or (adopted and any(
                r in remade for r in lives_on(resource, recorded)))
            if clear:
                remade.add(resource)
            rebuild.append(Rebuild(resource, needs(resource, recorded), clear=clear))
        else:
            keep.append(resource)
    return Recovery(tuple(keep), tuple(rebuild))

