"""Names of the kernel objects vnet creates, derived so that they never collide.

Kernel interface names hold at most 15 characters, so a host-side interface is named by a
hash of (lab, node, NIC) rather than by concatenation: ``vn`` + 10 hex digits.  Namespace
names have no such limit and follow containerlab's readable ``PREFIX-LAB-NODE``.  Every
interface vnet creates also carries an ``ifalias`` naming its owner, and vnet deletes only
objects its state records, so a stranger's interface with a similar name is never touched.
"""

from __future__ import annotations

import hashlib

NETNS_PREFIX = "vnet"
IFNAME_PREFIX = "vn"
IFNAME_MAX = 15


def netns_name(lab: str, node: str) -> str:
    return f"{NETNS_PREFIX}-{lab}-{node}"


def host_ifname(lab: str, node: str, nic: str) -> str:
    digest = hashlib.blake2b(f"{lab}/{node}/{nic}".encode(), digest_size=5).hexdigest()
    return IFNAME_PREFIX + digest


def port_name(node: str, nic: str) -> str:
    return f"{node}.{nic}"


def owner_alias(lab: str, node: str, nic: str) -> str:
    """The ``ifalias`` that marks an interface as created by vnet for this NIC."""
    return f"vnet:{lab}:{node}:{nic}"


def gateway_owner(network: str) -> str:
    """The pseudo-node that owns a NAT network's gateway interfaces (``@`` is not allowed in
    node names, so it cannot clash with one)."""
    return f"@gw-{network}"
