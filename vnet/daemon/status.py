"""What ``vnet status`` shows of a lab, rendered from its recorded resources: each node,
network and port as its driver describes it, with the datapath's counters on the ports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vnet.daemon import naming
from vnet.daemon.reconciler import Drivers
from vnet.daemon.resources import (
    GatewayResource,
    NetnsNodeResource,
    NetworkResource,
    PortResource,
    VmNodeResource,
)
from vnet.daemon.state import LabRecord


def lab_status(record: LabRecord, drivers: Drivers, stats: Mapping[str, Any],
               failure: str | None = None) -> dict[str, Any]:
    """``stats``: the datapath's counters of this lab's ports, by port name; ``failure``:
    why the lab is not all there (vnetd could not rebuild it), if it is not."""
    ports = {r.name: r for r in record.resources if isinstance(r, PortResource)}

    def nic(node: str, described: dict[str, Any]) -> dict[str, Any]:
        port = ports.get(naming.port_name(node, described["name"]))
        if port is None:
            return {**described, "port": None, "mode": None, "vlans": [], "native": None,
                    "counters": None}
        on_port = drivers[port].describe(port)
        return {**described, "port": on_port["port"], "mode": on_port["mode"],
                "vlans": on_port["vlans"], "native": on_port["native"],
                "counters": stats.get(port.name)}

    nodes = []
    for res in record.resources:
        if isinstance(res, NetnsNodeResource | VmNodeResource):
            node = drivers[res].describe(res)
            nodes.append({**node, "nics": [nic(res.node, n) for n in node["nics"]]})
    gateways = {r.network: drivers[r].describe(r)["address"] for r in record.resources
                if isinstance(r, GatewayResource)}
    networks = []
    for res in record.resources:
        if isinstance(res, NetworkResource):
            network = drivers[res].describe(res)
            networks.append({"name": network["name"], "vlan": network["vlan"],
                             "mode": network["mode"], "gateway": gateways.get(network["name"]),
                             "uplink": network["uplink"]})
    uplinks = [{"port": p.name, "ifname": p.ifname, "vlans": drivers[p].describe(p)["vlans"],
                "counters": stats.get(p.name)}
               for p in ports.values() if naming.is_uplink_port(p.name)]
    return {"name": record.lab, "source": record.source, "networks": networks,
            "nodes": nodes, "uplinks": uplinks,
            "pending": [f"{r.kind}:{r.key[1]}" for r in record.pending()], "failed": failure}
