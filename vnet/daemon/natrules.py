"""nftables rules of a NAT network, generated as text (pure; applied by ``vnet.host.nft``).

One table per lab and family (``table ip vnet-LAB``), so that ``vnet down`` deletes the table
and nothing else, and two labs never edit each other's rules.  For every NAT network:

* outbound: traffic from the subnet leaving by the uplink is masqueraded;
* inbound: only declared forwards (``dnat`` from the uplink's port to a node's port) get in;
* isolation: nothing else may be forwarded into or out of the network's gateway interface.
  Two NAT networks of the lab cannot reach each other unless the file says so (``reach``:
  routed, not masqueraded, new connections one way, replies back); that rule comes before
  the way out, so a network with no named uplink ("any way out") does not reach them either.

The forward chain's policy is ``accept`` and its rules match only this lab's gateway
interfaces: the host's other traffic is none of vnet's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network


@dataclass(frozen=True)
class PortForward:
    proto: str           # "tcp" | "udp"
    port: int            # on the host's uplink
    to_address: IPv4Address
    to_port: int


@dataclass(frozen=True)
class NatNetwork:
    name: str
    subnet: IPv4Network
    gateway_ifname: str  # the host-side interface holding the gateway address
    uplink: str | None   # None: any interface the host routes through
    forwards: tuple[PortForward, ...] = ()
    reach: tuple[str, ...] = ()  # names of the lab's NAT networks it may connect to


def table_name(lab: str) -> str:
    return f"vnet-{lab}"


def ruleset(lab: str, networks: list[NatNetwork]) -> str:
    """The whole table for ``lab``, to load with ``nft -f`` (the table is created fresh)."""
    table = table_name(lab)
    by_name = {net.name: net for net in networks}
    gateways = ", ".join(f'"{net.gateway_ifname}"' for net in networks)
    pre, post, fwd = [], [], []
    for net in networks:    # forwards into a network, and replies to what it opened
        in_if = f'iifname "{net.uplink}" ' if net.uplink else ""
        for f in net.forwards:
            pre.append(f"{in_if}fib daddr type local {f.proto} dport {f.port} "
                       f"dnat to {f.to_address}:{f.to_port}")
            fwd.append(f'{in_if}oifname "{net.gateway_ifname}" ip daddr {f.to_address} '
                       f"{f.proto} dport {f.to_port} ct status dnat accept")
        fwd.append(f'oifname "{net.gateway_ifname}" ct state established,related accept')
    for net in networks:    # between the lab's networks: only what ``reach`` allows
        for other in (by_name[name] for name in net.reach if name in by_name):
            post.append(f"ip saddr {net.subnet} ip daddr {other.subnet} accept")
            fwd.append(f'iifname "{net.gateway_ifname}" oifname "{other.gateway_ifname}" '
                       f"ip daddr {other.subnet} accept")
    fwd.append(f"iifname {{ {gateways} }} oifname {{ {gateways} }} drop")
    for net in networks:    # the way out, masqueraded
        out_if = f'oifname "{net.uplink}" ' if net.uplink else ""
        post.append(f"ip saddr {net.subnet} {out_if}ip daddr != {net.subnet} masquerade")
        fwd.append(f'iifname "{net.gateway_ifname}" {out_if}accept')
    for net in networks:    # after every accept: the rest of the network's traffic stops here
        fwd.append(f'iifname "{net.gateway_ifname}" drop')
        fwd.append(f'oifname "{net.gateway_ifname}" drop')
    lines = [f"table ip {table} {{",
             "  chain prerouting {", "    type nat hook prerouting priority dstnat;",
             *[f"    {r}" for r in pre], "  }",
             "  chain postrouting {", "    type nat hook postrouting priority srcnat;",
             *[f"    {r}" for r in post], "  }",
             "  chain forward {", "    type filter hook forward priority filter; policy accept;",
             *[f"    {r}" for r in fwd], "  }",
             "}"]
    return "\n".join(lines) + "\n"
