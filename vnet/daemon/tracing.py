"""``vnet trace`` in vnetd: which datapath port a node's NIC is, and the request to it.

The explanation itself is the switch's (``vnet.switch.explain``), computed in the datapath
on its live tables; vnetd only names the port and checks that the NIC exists.
"""

from __future__ import annotations

from vnet.daemon.naming import port_name
from vnet.daemon.nics import pick_nic
from vnet.daemon.requests import TraceRequest
from vnet.daemon.resources import NetnsNodeResource, VmNodeResource
from vnet.datapath import protocol


def datapath_request(node: NetnsNodeResource | VmNodeResource,
                     request: TraceRequest) -> protocol.Trace | protocol.Inject:
    """The datapath request that traces (or injects) ``request``'s frame on the node's NIC."""
    nic = pick_nic(node, request.nic)
    kind = protocol.Trace if request.action == "explain" else protocol.Inject
    return kind(node.lab, port_name(node.node, nic), request.frame)
