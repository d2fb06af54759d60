"""The overlay: one kernel vxlan netdev per network that spans hosts, a port of the switch.

The netdev (``naming.overlay_ifname``, marked ``vnet:LAB:@overlay-NETWORK:vxlan``) lives in
the host namespace: VNI from the topology, sent from this host's underlay address, UDP port
4789, no learning (the FDB is what vnet says), ARP proxy where the plan allows it
(``vnet.daemon.overlayplan``), MTU the underlay's minus the encapsulation.  The kernel does
the encapsulation, GSO segmentation, UDP checksums and per-flow source ports, so the
datapath sees an ordinary netdev and needs no new port type.  Like every port end it is
closed to the host's own stack (``nft.keep_host_stack_off``).

Its forwarding entries are converged, never appended blindly, so each call is idempotent:
``set_flood_peers`` (head-end replication: one all-zeros FDB entry per peer address) and
``set_remote_macs`` (a unicast FDB entry per remote MAC, and a permanent neighbour entry for
each that has an IP, from which the ARP proxy answers).  Each reads the netdev's entries back
and writes only the difference, all of it in batches (``vnet.host.neigh``: 10,000 entries in
a fraction of a second); an entry the kernel refuses is named in the error.  The bus service
calls them as hosts come and go and MACs are learned, one call at a time per network
(``vnet.daemon.overlay_sync``); without the bus they hold what the topology says.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Collection, Mapping
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vnet.daemon.drivers.base import BlockingDriver
from vnet.daemon.resources import OverlayResource
from vnet.errors import HostError
from vnet.host import links, neigh, nft
from vnet.packet.vxlan import VXLAN_PORT

log = logging.getLogger("vnet.overlay")
ALL_ZEROS = neigh.ALL_ZEROS
EEXIST, EADDRNOTAVAIL = 17, 99
LOGGED_FAILURES = 50     # refused entries logged one by one, then counted
SHOWN_FAILURES = 3       # of them named in the error itself


class OverlayDriver(BlockingDriver[OverlayResource]):
    kind = OverlayResource.kind

    def create_blocking(self, overlay: OverlayResource) -> None:
        with IPRoute() as ipr:
            links.refuse_taken(ipr, (overlay.ifname,), "network")
            local = ipaddress.ip_address(overlay.local)
            try:
                ipr.link("add", ifname=overlay.ifname, kind="vxlan", mtu=overlay.mtu,
                         vxlan_id=overlay.vni, vxlan_port=VXLAN_PORT, vxlan_learning=0,
                         vxlan_proxy=int(overlay.arp_proxy), vxlan_udp_csum=1,
                         **{"vxlan_local" if local.version == 4 else "vxlan_local6": str(local)})
            except NetlinkError as err:
                raise HostError(_refusal(overlay, err)) from None
            nft.keep_host_stack_off(overlay.ifname)
            index = _index(ipr, overlay)
            _converge_flood_peers(overlay, index, overlay.peers)
            _converge_remote_macs(overlay, index, overlay.remote_macs)
            links.bring_up_port_end(ipr, overlay.ifname, overlay.alias)  # up last

    def delete_blocking(self, overlay: OverlayResource) -> None:
        """Its FDB and neighbour entries go with the netdev."""
        with IPRoute() as ipr:
            nft.forget_port_table(overlay.ifname)
            links.delete_owned_link(ipr, overlay.ifname, overlay.alias)

    def exists_blocking(self, overlay: OverlayResource) -> bool:
        with IPRoute() as ipr:
            return links.all_present(ipr, (overlay.ifname,))

    def describe(self, overlay: OverlayResource) -> dict[str, Any]:
        return {"network": overlay.network, "ifname": overlay.ifname, "vni": overlay.vni,
                "local": overlay.local, "peers": list(overlay.peers), "mtu": overlay.mtu,
                "remote_macs": len(overlay.macs), "arp_proxy": overlay.arp_proxy}


async def set_flood_peers(resource: OverlayResource, peers: Collection[str]) -> None:
    """Make ``peers`` (underlay addresses) exactly the hosts that get a copy of each of the
    network's broadcast, multicast and unknown-unicast frames."""
    await asyncio.to_thread(_with_index, resource, _converge_flood_peers, peers)


async def set_remote_macs(resource: OverlayResource,
                          macs: Mapping[str, tuple[str, str | None]]) -> None:
    """Make ``macs`` (MAC -> (peer address, IP or None)) exactly the remote MACs the
    netdev sends straight to their host, and the IPs its ARP proxy answers for."""
    await asyncio.to_thread(_with_index, resource, _converge_remote_macs, macs)


def _with_index(resource: OverlayResource, converge: Any, wanted: Any) -> None:
    with IPRoute() as ipr:
        index = _index(ipr, resource)
    converge(resource, index, wanted)


def _index(ipr: IPRoute, overlay: OverlayResource) -> int:
    indexes = ipr.link_lookup(ifname=overlay.ifname)
    if not indexes:
        raise HostError(f"network {overlay.network}: its vxlan interface {overlay.ifname} is "
                        f"gone; bring the lab up again (vnet up)")
    return int(indexes[0])


def fdb_remotes(sock: neigh.NeighSocket, index: int) -> dict[str, set[str]]:
    """The netdev's FDB: MAC -> the underlay addresses its frames go to."""
    entries: dict[str, set[str]] = {}
    for dst, mac in sock.dump(neigh.AF_BRIDGE, index):
        if mac is not None and dst is not None:
            entries.setdefault(mac, set()).add(dst)
    return entries


def neighbours(sock: neigh.NeighSocket, index: int) -> dict[str, str]:
    """The netdev's neighbour entries (IPv4): IP -> MAC."""
    return {dst: mac for dst, mac in sock.dump(socket.AF_INET, index)
            if dst is not None and mac is not None}


def _converge_flood_peers(overlay: OverlayResource, index: int, peers: Collection[str]) -> None:
    wanted = {str(ipaddress.ip_address(p)) for p in peers}
    with neigh.NeighSocket() as sock:
        present = fdb_remotes(sock, index).get(ALL_ZEROS, set())
        requests = [neigh.fdb_delete(index, ALL_ZEROS, dst) for dst in sorted(present - wanted)]
        requests += [neigh.fdb_append(index, ALL_ZEROS, dst) for dst in sorted(wanted - present)]
        _apply(sock, overlay, requests, "flood")


def _converge_remote_macs(overlay: OverlayResource, index: int,
                          macs: Mapping[str, tuple[str, str | None]]) -> None:
    wanted = {mac.lower(): (str(ipaddress.ip_address(dst)), ip) for mac, (dst, ip) in macs.items()}
    with neigh.NeighSocket() as sock:
        present = fdb_remotes(sock, index)
        present.pop(ALL_ZEROS, None)
        requests = [neigh.fdb_delete(index, mac) for mac in sorted(present.keys() - wanted)]
        for mac, (dst, _) in wanted.items():
            have = present.get(mac, set())
            if have != {dst}:
                if len(have) > 1:      # replacing moves one destination: drop the others
                    requests.append(neigh.fdb_delete(index, mac))
                requests.append(neigh.fdb_set(index, mac, dst))
        wanted_neighbours = {ip: mac for mac, (_, ip) in wanted.items()
                             if ip is not None and ipaddress.ip_address(ip).version == 4}
        present_neighbours = neighbours(sock, index)
        requests += [neigh.neigh_delete(index, ip)
                     for ip in sorted(present_neighbours.keys() - wanted_neighbours)]
        requests += [neigh.neigh_set(index, ip, mac) for ip, mac in wanted_neighbours.items()
                     if present_neighbours.get(ip) != mac]
        _apply(sock, overlay, requests, "remote MAC")


def _apply(sock: neigh.NeighSocket, overlay: OverlayResource,
           requests: list[neigh.Request], what: str) -> None:
    """Write ``requests`` in batches; every entry the kernel refused is logged, and named in
    the error (the first few) that tells the caller the netdev is not as wanted."""
    failures = sock.apply(requests)
    if not failures:
        return
    for failure in failures[:LOGGED_FAILURES]:
        log.warning("network %s (%s): %s", overlay.network, overlay.ifname, failure)
    if len(failures) > LOGGED_FAILURES:
        log.warning("network %s (%s): and %d more entries refused", overlay.network,
                    overlay.ifname, len(failures) - LOGGED_FAILURES)
    shown = "; ".join(str(f) for f in failures[:SHOWN_FAILURES])
    more = f"; and {len(failures) - SHOWN_FAILURES} more" if len(failures) > SHOWN_FAILURES else ""
    raise HostError(f"network {overlay.network}: the kernel refused {len(failures)} of "
                    f"{len(requests)} {what} entries of {overlay.ifname}: {shown}{more}")


def _refusal(overlay: OverlayResource, err: NetlinkError) -> str:
    """The kernel's refusal of a vxlan netdev, in words."""
    if err.code == EEXIST:
        return (f"network {overlay.network}: another vxlan interface on this host already uses "
                f"VNI {overlay.vni} from {overlay.local} (another lab's network?); give one of "
                f"the two networks another vni:")
    if err.code == EADDRNOTAVAIL:
        return (f"network {overlay.network}: this host cannot send VXLAN from {overlay.local}; "
                f"give the address to one of its interfaces, or correct the topology's hosts:")
    log.error("vxlan interface %s refused", overlay.ifname, exc_info=err)
    return (f"network {overlay.network}: the kernel refused its vxlan interface "
            f"{overlay.ifname} (see vnetd's log); is the vxlan module available?")
