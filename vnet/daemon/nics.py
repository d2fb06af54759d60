"""Which NIC of a node a request means (``vnet trace``, ``vnet capture``): the one named,
or the node's only one; an error that lists the node's NICs otherwise."""

from __future__ import annotations

from vnet.daemon.resources import NetnsNodeResource, VmNodeResource
from vnet.errors import DaemonError

Node = NetnsNodeResource | VmNodeResource


def nics_of(node: Node) -> list[str]:
    return [n.nic for n in node.nics] if isinstance(node, NetnsNodeResource) else [
        t.nic for t in node.taps]


def pick_nic(node: Node, nic: str | None, also: str = "") -> str:
    """``nic`` if the node has it, or its only NIC when ``nic`` is None; ``also`` is added
    to the error (what else could be asked for)."""
    nics = nics_of(node)
    if nic is None:
        if len(nics) != 1:
            raise DaemonError(f"node {node.node} has NICs {', '.join(nics) or 'none'}: say "
                              f"which, as {node.node}:NIC")
        return nics[0]
    if nic not in nics:
        raise DaemonError(f"node {node.node} has no NIC {nic!r} (it has: "
                          f"{', '.join(nics) or 'none'}){also}")
    return nic
