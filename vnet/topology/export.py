"""The model back to plain data: ``topology_to_dict``.

The dict is itself a valid topology document (same keys as the file, every default and
derived MAC spelled out, paths resolved), so it serves ``vnet status --json``, the state file
and shipping a lab to a daemon alike, and ``parse_topology(json.dumps(d))`` gives the same
``Topology`` back.
"""

from __future__ import annotations

from typing import Any

from vnet.topology.model import Expectation, Network, Nic, Node, Topology


def topology_to_dict(t: Topology) -> dict[str, Any]:
    """A JSON-able dict of ``t`` that validates against the topology schema."""
    out: dict[str, Any] = {
        "version": 1,
        "name": t.name,
        "networks": {n.name: _network(n) for n in t.networks},
        "nodes": {n.name: _node(n) for n in t.nodes},
    }
    if t.hosts:
        out["hosts"] = {h.name: {"address": h.address} if h.description is None
                        else {"address": h.address, "description": h.description}
                        for h in t.hosts}
    if t.bus is not None:
        out["bus"] = {"broker": t.bus.broker, "topic_root": t.bus.topic_root}
    if t.expect:
        out["expect"] = [_expectation(e) for e in t.expect]
    return out


def _expectation(e: Expectation) -> dict[str, Any]:
    out: dict[str, Any] = {"from": e.source, "to": e.target}
    if e.check == "tcp":
        out.update(tcp=e.port, connects=e.want)
    else:
        out[e.check] = e.want
    if e.vlan is not None:
        out["vlan"] = e.vlan
    out["within"] = e.window
    return out


def _network(n: Network) -> dict[str, Any]:
    out: dict[str, Any] = {"vlan": n.vlan, "mode": n.mode}
    if n.subnet is not None:
        out["subnet"] = str(n.subnet)
    if n.gateway is not None:
        out["gateway"] = str(n.gateway)
    if n.host is not None:
        out["host"] = n.host
    if n.uplink is not None:
        out["uplink"] = n.uplink
    elif n.uplinks:
        out["uplink"] = dict(n.uplinks)
    if n.mode == "bridged":
        out["tagged"] = n.tagged
    if n.dhcp is not None:
        out["dhcp"] = {"range": [str(n.dhcp.range_start), str(n.dhcp.range_end)],
                       "leases": {k: str(v) for k, v in n.dhcp.leases.items()}}
    if n.forwards:
        out["forward"] = [{"proto": f.proto, "port": f.port, "to": f"{f.node}:{f.node_port}"}
                          for f in n.forwards]
    out["mac_aging"] = n.mac_aging
    out["mac_limit"] = n.mac_limit
    if n.vni is not None:
        out["vni"] = n.vni
    return out


def _node(n: Node) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": n.kind, "nics": [_nic(nic) for nic in n.nics]}
    if n.host is not None:
        out["host"] = n.host
    if n.kind == "vm":
        out.update(vcpus=n.vcpus, memory=n.memory, kernel=n.kernel, restart=n.restart)
        if n.cmdline is not None:
            out["cmdline"] = n.cmdline
        if n.initrd is not None:
            out["initrd"] = str(n.initrd)
        if n.disk is not None:
            out["disk"] = {"path": str(n.disk.path), "readonly": n.disk.readonly}
    return out


def _nic(nic: Nic) -> dict[str, Any]:
    out: dict[str, Any] = {"name": nic.name, "mac": nic.mac}
    if nic.network is not None:
        out["network"] = nic.network
    else:
        out["trunk"] = list(nic.trunk)
        out["native"] = nic.native
    if nic.dhcp:
        out["ip"] = "dhcp"
    elif nic.ip is not None:
        out["ip"] = str(nic.ip)
    return out
