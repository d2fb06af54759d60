"""What must be unique across a lab: VLANs, VNIs, subnets (no overlap), untagged networks per
uplink, MACs, forwarded host ports.  Run by the loader once every network and node is built;
each clash is reported at the later definition and names the earlier one (pure)."""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, Sequence

from vnet.topology.model import Network, Node
from vnet.topology.report import KeyPath, Reporter, quote


def check_unique(rep: Reporter, networks: Sequence[Network], nodes: Sequence[Node],
                 nic_paths: Mapping[tuple[str, str], KeyPath],
                 forward_index: Mapping[str, Sequence[int]]) -> None:
    """Every clash in the lab, reported to ``rep``.  ``nic_paths``: (node, NIC) -> the NIC's
    key path; ``forward_index``: network -> the file index of each of its forwards."""
    _check_vlans(rep, networks)
    _check_vnis(rep, networks)
    _check_subnets(rep, networks)
    _check_uplinks(rep, networks)
    _check_macs(rep, nodes, nic_paths)
    _check_forward_ports(rep, networks, forward_index)


def _check_vlans(rep: Reporter, networks: Sequence[Network]) -> None:
    owner: dict[int, str] = {}
    for net in networks:
        if net.vlan in owner:
            rep.error(("networks", net.name, "vlan"), f"VLAN {net.vlan} is already used by "
                      f"network {quote(owner[net.vlan])}: each network needs its own VLAN")
        owner.setdefault(net.vlan, net.name)


def _check_vnis(rep: Reporter, networks: Sequence[Network]) -> None:
    owner: dict[int, str] = {}
    for net in networks:
        if net.vni is None:
            continue
        if net.vni in owner:
            rep.error(("networks", net.name, "vni"), f"VNI {net.vni} is already used by "
                      f"network {quote(owner[net.vni])}: each network needs its own VNI")
        owner.setdefault(net.vni, net.name)


def _check_subnets(rep: Reporter, networks: Sequence[Network]) -> None:
    """No subnet overlaps an earlier one.  Two IPv4 networks overlap when one holds the
    other, so a subnet looks up its supernets (one per shorter prefix) and, among the
    sorted first addresses of the earlier ones, one inside it: O(n log n), not pairs."""
    by_prefix: dict[tuple[int, int], Network] = {}  # (first address, prefix length)
    starts: list[int] = []  # first addresses of the earlier subnets, sorted
    at_start: list[Network] = []  # the network of each of ``starts``
    for net in networks:
        if net.subnet is None:
            continue
        first = int(net.subnet.network_address)
        last = int(net.subnet.broadcast_address)
        other = next((by_prefix[key] for key in _supernets(first, net.subnet.prefixlen)
                      if key in by_prefix), None)
        i = bisect.bisect_left(starts, first)
        if other is None and i < len(starts) and starts[i] <= last:
            other = at_start[i]
        if other is not None:
            rep.error(("networks", net.name, "subnet"), f"{net.subnet} overlaps the subnet "
                      f"{other.subnet} of network {quote(other.name)}")
        by_prefix.setdefault((first, net.subnet.prefixlen), net)
        starts.insert(i, first)
        at_start.insert(i, net)


def _supernets(first: int, prefixlen: int) -> Iterator[tuple[int, int]]:
    """(first address, prefix length) of each IPv4 network that holds this one, itself too."""
    for length in range(prefixlen + 1):
        mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
        yield first & mask, length


def _check_uplinks(rep: Reporter, networks: Sequence[Network]) -> None:
    untagged: dict[tuple[str | None, str], str] = {}
    for net in networks:
        if net.mode != "bridged" or net.tagged:
            continue
        pairs = (list(net.uplinks.items()) if net.uplinks
                 else [(None, net.uplink)] if net.uplink is not None else [])
        for host, uplink in pairs:
            path: KeyPath = ("networks", net.name, "uplink")
            on = ""
            if host is not None:
                path, on = (*path, host), f" on host {quote(host)}"
            if (host, uplink) in untagged:
                rep.error(path, f"network {quote(untagged[(host, uplink)])} is already bridged "
                          f"untagged onto {uplink}{on}: at most one untagged network per uplink "
                          "(set tagged: true on the others)")
            untagged.setdefault((host, uplink), net.name)


def _check_macs(rep: Reporter, nodes: Sequence[Node],
                nic_paths: Mapping[tuple[str, str], KeyPath]) -> None:
    owner: dict[str, str] = {}
    for node in nodes:
        for nic in node.nics:
            path = nic_paths[(node.name, nic.name)]
            where = f"nodes.{node.name}.nics[{path[-1]}]"
            if nic.mac in owner:
                derived = "" if (*path, "mac") in rep.lines else " (derived)"
                rep.error((*path, "mac"), f"MAC {nic.mac}{derived} is already used by "
                          f"{owner[nic.mac]}")
            owner.setdefault(nic.mac, where)


def _check_forward_ports(rep: Reporter, networks: Sequence[Network],
                         forward_index: Mapping[str, Sequence[int]]) -> None:
    owner: dict[tuple[str, int], str] = {}
    for net in networks:
        for fw, i in zip(net.forwards, forward_index[net.name], strict=True):
            key = (fw.proto, fw.port)
            if key in owner:
                rep.error(("networks", net.name, "forward", i, "port"),
                          f"host port {fw.proto}/{fw.port} is already forwarded by {owner[key]}")
            owner.setdefault(key, f"networks.{net.name}.forward[{i}]")
