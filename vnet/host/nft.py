"""nftables from vnetd: one ``nft -f`` transaction per change, and the port tables.

A table vnet owns is always replaced or removed whole, in one transaction that first makes
sure it exists (``add table`` is a no-op for an existing one) and then deletes it, so the
same script works whether the table was there or not.
"""

from __future__ import annotations

import subprocess

from vnet.errors import HostError


def nft(script: str) -> None:
    """Run ``script`` as one ``nft -f`` transaction (all or nothing)."""
    try:
        subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True,
                       capture_output=True)
    except FileNotFoundError:
        raise HostError("nft is not installed: install the nftables package") from None
    except subprocess.CalledProcessError as err:
        raise HostError(f"nft refused the lab's rules: {err.stderr.strip()}") from None


def no_table(family: str, table: str) -> str:
    """nft commands that leave no ``table`` of ``family``, whether there was one or not."""
    return f"add table {family} {table}\ndelete table {family} {table}\n"


def table_exists(family: str, table: str) -> bool:
    try:
        return subprocess.run(["nft", "list", "table", family, table], capture_output=True,
                              check=False).returncode == 0
    except FileNotFoundError:
        return False


def port_table(ifname: str) -> str:
    return f"vnet-port-{ifname}"


def keep_host_stack_off(ifname: str) -> None:
    """A switch port's frames are the datapath's alone.  An nftables ingress hook on the port
    drops every frame after AF_PACKET has seen it and before ARP or IP do, as a bridge port
    keeps frames from its own stack.  Without it the host answered a node's ARP for the
    gateway's address with the port's MAC, and routed frames sent to that MAC past the
    switch, its VLANs and the NAT rules."""
    nft(no_table("netdev", port_table(ifname))
        + f"table netdev {port_table(ifname)} {{\n  chain ingress {{\n"
        f'    type filter hook ingress device "{ifname}" priority -500; policy drop;\n'
        "  }\n}\n")


def forget_port_table(ifname: str) -> None:
    nft(no_table("netdev", port_table(ifname)))
