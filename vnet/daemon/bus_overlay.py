"""What the bus tells the overlay: the flood peers and remote MACs of each network, live.

Without the bus, a lab's overlay is static (docs: MULTIHOST): every declared host that has a
network is a flood peer, and every node NIC's MAC is known with its host.  With the bus,
liveness withdraws what lost hosts had and learned MACs are added.  ``live_overlay`` is that
filter, a pure function; ``Overlay`` is the two calls the overlay driver offers for it,
keyed here by (lab, network) so that this module needs nothing of the driver's resources.

``static_overlay_plan`` stands in for the overlay driver's own ``overlay_plan`` (same
meaning, built from ``vnet.topology.placement``) until the two branches meet; the bus
service takes the plan function as an argument, so swapping it is one line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from vnet.topology.model import FrozenMap, Topology
from vnet.topology.placement import part_for_host

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
    """Network -> its overlay on ``host`` from the topology alone (no liveness): the peers
    that have the network, and the MACs (with IPv4 address, if static) of their node NICs."""
    part = part_for_host(topology, host)
    address = {h.name: h.address for h in topology.hosts}
    plan: dict[str, NetworkOverlay] = {}
    for network, hosts in part.peers.items():
        if not hosts:
            continue
        macs = {nic.mac: (address[node.host], str(nic.ip.ip) if nic.ip is not None and
                          nic.ip.version == 4 and nic.network == network else None)
                for node in topology.nodes if node.host in hosts
                for nic in node.nics if network in nic.networks}
        plan[network] = NetworkOverlay(frozenset(address[h] for h in hosts), FrozenMap(macs))
    return plan


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
