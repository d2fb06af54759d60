"""The kernel side of resources: namespace nodes and their veths, through pyroute2.

Thin on purpose: what to create comes from ``vnet.daemon.resources``; this module only
creates and deletes, checks that it never takes over or deletes a stranger's object, and is
safe to call again on a half-created resource (deletion tolerates absence).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vnet.daemon import forwarding, naming, natrules
from vnet.daemon.resources import (
    DhcpLeaseResource,
    DhcpResource,
    GatewayResource,
    NatResource,
    NetnsNodeResource,
    VethSpec,
    VmNodeResource,
)
from vnet.errors import HostError
from vnet.host import netns, tap
from vnet.topology import Topology

log = logging.getLogger("vnet.realize")


def create_netns_node(node: NetnsNodeResource, state_dir: Path) -> None:
    with IPRoute() as ipr:
        for nic in node.nics:
            if ipr.link_lookup(ifname=nic.host_ifname):
                raise HostError(f"interface {nic.host_ifname} already exists and vnet's state "
                                f"does not record it; remove it or rename the lab or node")
    netns.create(node.netns)
    if not node.ipv6:
        # No IPv6 unless asked: router solicitations and MLD reports would be noise on every
        # link, and a packet test asserting "no other packets" would see them.
        for key in ("net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"):
            netns.write_sysctl(node.netns, key, "1")
    with IPRoute() as ipr:
        for nic in node.nics:
            # The node's end has its MAC from birth (no frame can carry a temporary one) and
            # goes up last, after its addresses (_configure_nic).
            ipr.link("add", ifname=nic.host_ifname, kind="veth",
                     peer={"ifname": nic.nic, "net_ns_fd": node.netns, "address": nic.mac})
            _keep_host_stack_off(nic.host_ifname)
            _bring_up_port_end(ipr, nic.host_ifname, nic.alias)
    with netns.open_iproute(node.netns) as ns:
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        for nic in node.nics:
            _configure_nic(ns, nic)


def _bring_up_port_end(ipr: IPRoute, ifname: str, alias: str) -> None:
    """Mark a host-side end as ours and bring it up without IPv6: a switch port must not
    speak (DAD probes and MLD reports would land on the node side of the veth).  Callers
    configure everything else first: a link goes up last."""
    netns.write_sysctl(None, f"net.ipv6.conf.{ifname}.disable_ipv6", "1")
    index = ipr.link_lookup(ifname=ifname)[0]
    ipr.link("set", index=index, ifalias=alias, state="up")


def port_table(ifname: str) -> str:
    return f"vnet-port-{ifname}"


def _keep_host_stack_off(ifname: str) -> None:
    """A switch port's frames are the datapath's alone.  An nftables ingress hook on the port
    drops every frame after AF_PACKET has seen it and before ARP or IP do, as a bridge port
    keeps frames from its own stack.  Without it the host answered a node's ARP for the
    gateway's address with the port's MAC, and routed frames sent to that MAC past the
    switch, its VLANs and the NAT rules."""
    nft(_no_port_table(ifname) + f"table netdev {port_table(ifname)} {{\n  chain ingress {{\n"
        f'    type filter hook ingress device "{ifname}" priority -500; policy drop;\n'
        "  }\n}\n")


def _no_port_table(ifname: str) -> str:
    """nft commands that leave no port table for ``ifname``, whether there was one or not."""
    return f"add table netdev {port_table(ifname)}\ndelete table netdev {port_table(ifname)}\n"


def _forget_port_table(ifname: str) -> None:
    nft(_no_port_table(ifname))


def _configure_nic(ns: IPRoute, nic: VethSpec) -> None:
    index = ns.link_lookup(ifname=nic.nic)[0]
    for address in nic.addresses:
        iface = ipaddress.ip_interface(address)
        ns.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
    ns.link("set", index=index, state="up")
    if nic.gateway is not None:
        ns.route("add", dst="0.0.0.0/0", gateway=nic.gateway, oif=index)


def delete_netns_node(node: NetnsNodeResource, state_dir: Path) -> None:
    with IPRoute() as ipr:
        for nic in node.nics:
            _forget_port_table(nic.host_ifname)
            _delete_owned_link(ipr, nic.host_ifname, nic.alias)
    netns.remove(node.netns)


def _delete_owned_link(ipr: IPRoute, ifname: str, alias: str) -> None:
    indexes = ipr.link_lookup(ifname=ifname)
    if not indexes:
        return
    link = ipr.get_links(indexes[0])[0]
    if link.get("IFLA_IFALIAS") != alias:
        log.warning("not deleting %s: it is not marked %r, so vnet did not create it",
                    ifname, alias)
        return
    try:
        ipr.link("del", index=indexes[0])
    except NetlinkError as err:
        if err.code != 19:  # ENODEV: it went with its namespace peer meanwhile
            raise


def netns_node_alive(node: NetnsNodeResource) -> bool:
    return netns.exists(node.netns)


# ---- NAT networks: gateway, nftables, DHCP ----------------------------------------------------

def create_gateway(gateway: GatewayResource, state_dir: Path) -> None:
    with IPRoute() as ipr:
        for ifname in (gateway.ifname, gateway.port_ifname):
            if ipr.link_lookup(ifname=ifname):
                raise HostError(f"interface {ifname} already exists and vnet's state does not "
                                f"record it; remove it or rename the lab or network")
        ipr.link("add", ifname=gateway.ifname, kind="veth", peer={"ifname": gateway.port_ifname})
        iface = ipaddress.ip_interface(gateway.address)
        index = ipr.link_lookup(ifname=gateway.ifname)[0]
        ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        _keep_host_stack_off(gateway.port_ifname)
        for ifname in (gateway.port_ifname, gateway.ifname):  # up last
            _bring_up_port_end(ipr, ifname, gateway.alias)


def delete_gateway(gateway: GatewayResource, state_dir: Path) -> None:
    with IPRoute() as ipr:
        _delete_owned_link(ipr, gateway.ifname, gateway.alias)
        _forget_port_table(gateway.port_ifname)
        _delete_owned_link(ipr, gateway.port_ifname, gateway.alias)


def create_nat(nat: NatResource, state_dir: Path) -> None:
    table = natrules.table_name(nat.lab)
    # One transaction: make sure the (recorded, so ours) table is empty, then fill it.
    nft(f"add table ip {table}\ndelete table ip {table}\n{nat.ruleset}")
    forwarding.hold(state_dir, nat.lab)


def delete_nat(nat: NatResource, state_dir: Path) -> None:
    table = natrules.table_name(nat.lab)
    nft(f"add table ip {table}\ndelete table ip {table}\n")
    forwarding.release(state_dir, nat.lab)


def nft(script: str) -> None:
    try:
        subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True,
                       capture_output=True)
    except FileNotFoundError:
        raise HostError("nft is not installed: install the nftables package") from None
    except subprocess.CalledProcessError as err:
        raise HostError(f"nft refused the lab's rules: {err.stderr.strip()}") from None


def create_dhcp(dhcp: DhcpResource, state_dir: Path) -> None:
    base = _dhcp_base(dhcp, state_dir)
    subnet = ipaddress.ip_network(dhcp.subnet)
    command = [
        "dnsmasq", "--conf-file=/dev/null", "--bind-interfaces", f"--interface={dhcp.interface}",
        "--except-interface=lo", f"--listen-address={dhcp.gateway}",
        f"--pid-file={base}.pid", f"--dhcp-leasefile={base}.leases",
        f"--dhcp-range={dhcp.range_start},{dhcp.range_end},{subnet.netmask},infinite",
        f"--dhcp-option=option:router,{dhcp.gateway}", "--dhcp-authoritative",
        f"--domain={dhcp.lab}.vnet", f"--local=/{dhcp.lab}.vnet/", "--no-hosts",
        "--user=root", "--group=root"]
    command += [f"--dhcp-host={mac},{ip},{name}" for mac, ip, name in dhcp.hosts]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise HostError("dnsmasq is not installed: install the dnsmasq-base package") from None
    except subprocess.CalledProcessError as err:
        raise HostError(f"dnsmasq did not start for network {dhcp.network}: "
                        f"{err.stderr.strip()}") from None


def delete_dhcp(dhcp: DhcpResource, state_dir: Path) -> None:
    base = _dhcp_base(dhcp, state_dir)
    pid_file = Path(f"{base}.pid")
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        pid = None
    if pid is not None and _is_our_dnsmasq(pid, base):
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.02)
    for suffix in (".pid", ".leases"):
        Path(f"{base}{suffix}").unlink(missing_ok=True)


def _dhcp_base(dhcp: DhcpResource, state_dir: Path) -> Path:
    return state_dir / f"dhcp-{dhcp.lab}-{dhcp.network}"


def _is_our_dnsmasq(pid: int, base: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    return f"--pid-file={base}.pid".encode() in cmdline


def create_dhcp_lease(lease: DhcpLeaseResource, state_dir: Path) -> None:
    run_dhcp_client(lease.netns, lease.nic)


def delete_dhcp_lease(lease: DhcpLeaseResource, state_dir: Path) -> None:
    """Nothing to do: the address goes with the node's namespace, the lease is infinite."""


def run_dhcp_client(netns_name: str, nic: str) -> None:
    """Get ``nic``'s address by DHCP inside the node (busybox udhcpc, one shot: the lab's
    dnsmasq leases are infinite, so nothing has to renew)."""
    script = Path(__file__).with_name("udhcpc.sh")
    command = ["busybox", "udhcpc", "-i", nic, "-f", "-q", "-n", "-t", "10", "-T", "1",
               "-s", str(script)]
    fd = os.open(netns.netns_path(netns_name), os.O_RDONLY)
    try:
        result = subprocess.run(command, preexec_fn=lambda: netns.setns_fd(fd), pass_fds=(fd,),
                                capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise HostError("busybox is not installed: install busybox-static (for ip: dhcp)") \
            from None
    finally:
        os.close(fd)
    if result.returncode != 0:
        raise HostError(f"{netns_name}: no DHCP lease for {nic}: {result.stderr.strip()[-300:]}")


# ---- checks against the host ----------------------------------------------------------------

def check_host(topology: Topology) -> None:
    """What only the host can tell: uplinks exist; NAT subnets do not overlap its addresses."""
    problems = []
    with IPRoute() as ipr:
        for network in topology.networks:
            if network.uplink and not ipr.link_lookup(ifname=network.uplink):
                problems.append(f"network {network.name}: uplink {network.uplink} does not exist "
                                f"on this host; name an existing interface (ip link)")
        host_networks = [(a.get("IFA_LABEL") or str(a.get("index")),
                          ipaddress.ip_interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"))
                         for a in ipr.get_addr(family=socket.AF_INET)]
    own = {naming.host_ifname(topology.name, naming.gateway_owner(n.name), "gw")
           for n in topology.networks}  # this lab's gateways, from an earlier `up`
    for network in topology.networks:
        if network.subnet is None:
            continue
        for label, iface in host_networks:
            if label in own:
                continue
            if network.mode == "nat" and iface.network.overlaps(network.subnet):
                problems.append(f"network {network.name}: subnet {network.subnet} overlaps "
                                f"{iface} on the host's {label}; choose another subnet")
    if problems:
        raise HostError("\n".join(problems))


# The kernel side of each host resource kind, for vnetd's reconciliation: (resource, state_dir).
CREATE: dict[type, Callable[[Any, Path], None]] = {
    NetnsNodeResource: create_netns_node, GatewayResource: create_gateway,
    NatResource: create_nat, DhcpResource: create_dhcp, DhcpLeaseResource: create_dhcp_lease}
DELETE: dict[type, Callable[[Any, Path], None]] = {
    NetnsNodeResource: delete_netns_node, GatewayResource: delete_gateway,
    NatResource: delete_nat, DhcpResource: delete_dhcp, DhcpLeaseResource: delete_dhcp_lease}


# ---- VM nodes: persistent TAPs --------------------------------------------------------------

def create_vm_taps(vm: VmNodeResource, state_dir: Path) -> None:
    with IPRoute() as ipr:
        for spec in vm.taps:
            if ipr.link_lookup(ifname=spec.ifname):
                raise HostError(f"interface {spec.ifname} already exists and vnet's state "
                                f"does not record it; remove it or rename the lab or node")
        for spec in vm.taps:
            tap.create_persistent_tap(spec.ifname)
            _keep_host_stack_off(spec.ifname)
            _bring_up_port_end(ipr, spec.ifname, spec.alias)


def delete_vm_taps(vm: VmNodeResource, state_dir: Path) -> None:
    with IPRoute() as ipr:
        for spec in vm.taps:
            _forget_port_table(spec.ifname)
            _delete_owned_link(ipr, spec.ifname, spec.alias)
