"""``vnet trace`` in vnetd: which datapath port a node's NIC is, and the request to it.

The explanation itself is the switch's (``vnet.switch.explain``), computed in the datapath
on its live tables; vnetd only names the port and checks that the NIC exists.
"""

from __future__ import annotations

from vnet.daemon.naming import port_name
from vnet.daemon.requests import TraceRequest
from vnet.daemon.resources import NetnsNodeResource, VmNodeResource
from vnet.datapath import protocol
from vnet.errors import DaemonError


def datapath_request(node: NetnsNodeResource | VmNodeResource,
                     request: TraceRequest) -> protocol.Trace | protocol.Inject:
    """The datapath request that traces (or injects) ``request``'s frame on the node's NIC."""
    nics = [n.nic for n in node.nics] if isinstance(node, NetnsNodeResource) else [
        t.nic for t in node.taps]
    nic = request.nic
    if nic is None:
        if len(nics) != 1:
            raise DaemonError(f"node {node.node} has NICs {', '.join(nics) or 'none'}: say "
                              f"which, as {node.node}:NIC")
        nic = nics[0]
    elif nic not in nics:
        raise DaemonError(f"node {node.node} has no NIC {nic!r} (it has: "
                          f"{', '.join(nics) or 'none'})")
    kind = protocol.Trace if request.action == "explain" else protocol.Inject
    return kind(node.lab, port_name(node.node, nic), request.frame)
