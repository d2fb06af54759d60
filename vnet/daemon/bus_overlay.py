"""What the bus tells the overlay: the flood peers and remote MACs of each network, live.

Without the bus, a lab's overlay is static (docs: MULTIHOST): every declared host that has a
network is a flood peer, and every node NIC's MAC is known with its host.  With the bus,
liveness withdraws what lost hosts had and learned MACs are added.  ``live_overlay`` is that
filter, a pure function; ``Overlay`` is the two calls the overlay driver offers for it,
keyed here by (lab, network) so that this module needs nothing of the driver's resources.

``static_overlay_plan`` is the overlay driver's ``overlay_plan`` seen from here (the
underlay MTU does not matter to peers and MACs); ``DriverOverlay`` carries the two calls
to the lab's recorded ``OverlayResource`` of the network.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from vnet.daemon.drivers import overlay as overlay_driver
from vnet.daemon.overlayplan import overlay_plan
from vnet.daemon.resources import OverlayResource
from vnet.topology.model import FrozenMap, Topology

log = logging.getLogger("vnet.bus.overlay")

RemoteMacs = Mapping[str, tuple[str, str | None]]   # mac -> (peer address, its IP or None)


class Overlay(Protocol):
    """The overlay driver's two convergent calls (idempotent: each sets exactly this)."""

    async def set_flood_peers(self, lab: str, network: str, peers: Collection[str]) -> None:
        """Head-end replicate ``network``'s floods to exactly these peer addresses."""

    async def set_remote_macs(self, lab: str, network: str, macs: RemoteMacs) -> None:
        """Unicast FDB (and ARP proxy) entries: exactly these remote MACs."""


class NoOverlay:
    """No overlay on this host (yet): the calls are accepted and do nothing."""

    async def set_flood_peers(self, lab: str, network: str, peers: Collection[str]) -> None:
        log.debug("no overlay: %s/%s flood peers %s", lab, network, sorted(peers))

    async def set_remote_macs(self, lab: str, network: str, macs: RemoteMacs) -> None:
        log.debug("no overlay: %s/%s remote MACs %s", lab, network, dict(macs))


@dataclass(frozen=True)
class NetworkOverlay:
    """One network's overlay on one host: flood peer addresses and remote MACs."""

    peers: frozenset[str] = frozenset()
    macs: Mapping[str, tuple[str, str | None]] = field(default_factory=FrozenMap)


OverlayPlan = Callable[[Topology, str], Mapping[str, NetworkOverlay]]


def static_overlay_plan(topology: Topology, host: str) -> dict[str, NetworkOverlay]:
    """Network -> its overlay on ``host`` from the topology alone (no liveness): the overlay
    driver's own plan (``vnet.daemon.overlayplan``), in the terms this module speaks."""
    return {network: NetworkOverlay(frozenset(p.peer_addresses), FrozenMap(p.fdb))
            for network, p in overlay_plan(topology, host).items()}


def live_overlay(topology: Topology, plan: Mapping[str, NetworkOverlay], alive: Collection[str],
                 learned: Mapping[tuple[str, str], str]) -> dict[str, NetworkOverlay]:
    """The static ``plan`` of one lab filtered by liveness: only ``alive`` hosts' addresses
    are flood peers and MAC destinations; ``learned`` ((network, mac) -> host, the bus's
    resolved remote MACs of alive hosts) adds MACs the topology does not place."""
    address = {h.name: h.address for h in topology.hosts}
    live = {address[h] for h in alive if h in address}
    out: dict[str, NetworkOverlay] = {}
    for network, static in plan.items():
        macs = {mac: where for mac, where in static.macs.items() if where[0] in live}
        for (net, mac), host in sorted(learned.items()):
            if net == network and host in alive and host in address:
                macs.setdefault(mac, (address[host], None))
        out[network] = NetworkOverlay(frozenset(static.peers & live), FrozenMap(macs))
    return out


class DriverOverlay:
    """The ``Overlay`` of a vnetd: the overlay driver's calls on the network's recorded
    ``OverlayResource`` (none recorded: the network has no overlay here, nothing to do)."""

    def __init__(self, find: Callable[[str, str], OverlayResource | None]) -> None:
        self.find = find

    async def set_flood_peers(self, lab: str, network: str, peers: Collection[str]) -> None:
        resource = self.find(lab, network)
        if resource is not None:
            await overlay_driver.set_flood_peers(resource, peers)

    async def set_remote_macs(self, lab: str, network: str, macs: RemoteMacs) -> None:
        resource = self.find(lab, network)
        if resource is not None:
            await overlay_driver.set_remote_macs(resource, macs)
