"""Names of the kernel objects vnet creates, derived so that they never collide.

Kernel interface names hold at most 15 characters, so a host-side interface is named by a
hash of (lab, node, NIC) rather than by concatenation: ``vn`` + 10 hex digits.  Namespace
names have no such limit and follow containerlab's readable ``PREFIX-LAB-NODE``; the prefix is
vnetd's ``netns_prefix`` (default ``vnet``), so that several vnetds on one machine (test hosts,
one per suite) never want the same namespace.  Every
interface vnet creates also carries an ``ifalias`` naming its owner, and vnet deletes only
objects its state records, so a stranger's interface with a similar name is never touched.
"""

from __future__ import annotations

import hashlib

from vnet.topology.values import derive_mac

NETNS_PREFIX = "vnet"
NETNS_PREFIX_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$"
NETNS_PREFIX_WHY = ("1 to 20 lower-case letters, digits or '-', starting and ending with a letter "
                    "or digit")
IFNAME_PREFIX = "vn"
IFNAME_MAX = 15


def netns_name(lab: str, node: str, prefix: str = NETNS_PREFIX) -> str:
    """A node's namespace: ``PREFIX-LAB-NODE``."""
    return f"{prefix}-{lab}-{node}"


def host_ifname(lab: str, node: str, nic: str) -> str:
    digest = hashlib.blake2b(f"{lab}/{node}/{nic}".encode(), digest_size=5).hexdigest()
    return IFNAME_PREFIX + digest


# Switch port names.  A node's port is NODE.NIC (as users read it in `vnet fdb`).  Every other
# port (a NAT network's gateway, a bridged network's uplink) is named with a leading "@",
# which node names cannot contain: so a node called "uplink" with a NIC "eth2" and the
# uplink eth2 get different ports.
NON_NODE_PORT_PREFIX = "@"


def port_name(node: str, nic: str) -> str:
    """The switch port of a node's NIC."""
    return f"{node}.{nic}"


def uplink_port_name(uplink: str) -> str:
    """The switch port on a bridged network's uplink (a host interface)."""
    return f"{NON_NODE_PORT_PREFIX}uplink.{uplink}"


def gateway_port_name(network: str) -> str:
    """The switch port of a NAT network's gateway."""
    return port_name(gateway_owner(network), "port")


def is_uplink_port(name: str) -> bool:
    return name.startswith(f"{NON_NODE_PORT_PREFIX}uplink.")


def owner_alias(lab: str, node: str, nic: str) -> str:
    """The ``ifalias`` that marks an interface as created by vnet for this NIC."""
    return f"vnet:{lab}:{node}:{nic}"


def gateway_owner(network: str) -> str:
    """The pseudo-node that owns a NAT network's gateway interfaces (``@`` is not allowed in
    node names, so it cannot clash with one)."""
    return f"{NON_NODE_PORT_PREFIX}gw-{network}"


def gateway_ifname(lab: str, network: str) -> str:
    """The host-side interface that holds a NAT network's gateway address (its nftables
    rules, its dnsmasq and the host's overlap check all name it)."""
    return host_ifname(lab, gateway_owner(network), "gw")


def gateway_port_ifname(lab: str, network: str) -> str:
    """The other end of the gateway's veth pair: a port of the lab's switch."""
    return host_ifname(lab, gateway_owner(network), "port")


def gateway_mac(lab: str, network: str) -> str:
    """The MAC of a NAT network's gateway (its ``gateway_ifname``): derived as a NIC's is,
    from the gateway's pseudo-node, whose ``@`` no node name has, so it is stable across
    hosts and restarts and never a derived node MAC."""
    return derive_mac(lab, gateway_owner(network), "gw")


def gateway_alias(lab: str, network: str) -> str:
    return owner_alias(lab, gateway_owner(network), "gw")


# The overlay: one kernel vxlan netdev per (lab, network) that spans hosts.  Its name is a
# hash as a NIC's host end is, with its own prefix ("vx"), so it can never equal a "vn" name.
OVERLAY_IFNAME_PREFIX = "vx"


def overlay_ifname(lab: str, network: str) -> str:
    """The vxlan netdev of ``network`` of ``lab`` in the host namespace (12 characters)."""
    digest = hashlib.blake2b(f"{lab}/{network}".encode(), digest_size=5).hexdigest()
    return OVERLAY_IFNAME_PREFIX + digest


def overlay_owner(network: str) -> str:
    """The pseudo-node that owns a network's vxlan netdev (``@``: never a node's name)."""
    return f"{NON_NODE_PORT_PREFIX}overlay-{network}"


def overlay_port_name(network: str) -> str:
    """The switch port on a network's vxlan netdev."""
    return port_name(overlay_owner(network), "vxlan")


def is_overlay_port(name: str) -> bool:
    """A vxlan netdev's switch port: what is learned there lives on another host."""
    return name.startswith(f"{NON_NODE_PORT_PREFIX}overlay-") and name.endswith(".vxlan")


def overlay_alias(lab: str, network: str) -> str:
    return owner_alias(lab, overlay_owner(network), "vxlan")
