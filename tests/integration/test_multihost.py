"""One lab across three hosts, without the bus: each vnetd realises its host's part, and the
networks that span hosts cross an underlay in VXLAN (kernel vxlan netdevs as switch ports).

The underlay is a namespace with a Linux bridge and one veth per host namespace, each host's
end holding its address from the topology.  Every host runs its own vnetd (``--host hN``) and
brings up the same file.  An "Internet" namespace hangs off h1 only; a rogue namespace on the
underlay sends VXLAN that must not get in.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

from tests.conftest import needs_root
from vnet.daemon import naming
from vnet.errors import DaemonError
from vnet.host import netns
from vnet.testing import Lab, TestHost, wait_until
from vnet.testing.dataplane import Dataplane
from vnet.testing.lab import popen_in_netns, run_in_netns
from vnet.testing.underlay import attach, ip, make_underlay
from vnet.topology import Topology, parse_topology

pytestmark = [needs_root,
              pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                 reason="needs /dev/kvm (a VM node on h2)")]

HOSTS = ("h1", "h2", "h3")
ADDRESS = {"h1": "10.90.0.1", "h2": "10.90.0.2", "h3": "10.90.0.3"}
ROGUE = "10.90.0.66"
INTERNET = "203.0.113.2"
BOOT_WAIT = 90.0   # the tiny guest's ring-0 start is emulated (docs/kvm.md)

# red spans all three hosts (with a trunk on h2, so ARP crosses as broadcast); blue is on h2
# and h3 only; green (h1, h3) has only static addresses, so its ARP is answered by the vxlan
# netdevs' proxy; inet is a NAT network whose gateway and DHCP server are on h1, where the
# Internet is, and whose one node is on h3.
TOPOLOGY = """
name: {lab}
hosts:
  h1: {{address: 10.90.0.1}}
  h2: {{address: 10.90.0.2}}
  h3: {{address: 10.90.0.3}}
bus: {{broker: "mqtt://10.90.0.254:1883"}}
networks:
  red:   {{vlan: 10}}
  blue:  {{vlan: 20}}
  green: {{vlan: 30}}
  inet:  {{vlan: 40, mode: nat, subnet: 192.168.30.0/24, host: h1, uplink: wan0,
          dhcp: {{range: [192.168.30.100, 192.168.30.199]}}}}
nodes:
  a:  {{kind: netns, host: h1, nics: [{{name: eth0, network: red, ip: 10.10.0.1/24}},
                                     {{name: eth1, network: green, ip: 10.30.0.1/24}}]}}
  v2: {{kind: vm, host: h2, memory: 16M, cmdline: "ping=10.10.0.1",
        nics: [{{name: eth0, network: red, ip: 10.10.0.2/24}}]}}
  b:  {{kind: netns, host: h2, nics: [{{name: eth0, network: blue, ip: 10.10.0.12/24}}]}}
  t:  {{kind: netns, host: h2, nics: [{{name: eth0, trunk: [red, blue]}}]}}
  c:  {{kind: netns, host: h3, nics: [{{name: eth0, network: red, ip: 10.10.0.3/24}},
                                     {{name: eth1, network: inet, ip: dhcp}},
                                     {{name: eth2, network: green, ip: 10.30.0.3/24}}]}}
  d:  {{kind: netns, host: h3, nics: [{{name: eth0, network: blue, ip: 10.10.0.13/24}}]}}
"""


@dataclass
class Span:
    topology: Topology
    path: Path
    underlay: str
    internet: str
    rogue: str
    hosts: dict[str, TestHost]
    labs: dict[str, Lab]
    dataplane: Dataplane | None = None

    def node(self, name: str) -> Lab:
        """The lab on the host that runs ``name``."""
        host = self.topology.node(name).host
        assert host is not None
        return self.labs[host]

    def ping(self, node: str, address: str) -> bool:
        return self.node(node).exec(node, ["ping", "-c", "1", "-W", "1", address]).returncode == 0

    def vni(self, network: str) -> int:
        return self.topology.vni_of(network)


def build_underlay(underlay: str, hosts: dict[str, TestHost], rogue: str) -> None:
    """The underlay: each host's ``ul0`` (its address) and the rogue namespace's ``eth0``
    (an address no topology declares) on one bridge."""
    make_underlay(underlay)
    for name, host in hosts.items():
        attach(underlay, host.name, name, f"{ADDRESS[name]}/24")
    attach(underlay, rogue, "rogue", f"{ROGUE}/24", ifname="eth0")


def attach_internet(internet: str, h1: TestHost) -> None:
    """An "Internet" namespace behind h1's ``wan0`` (the NAT network's uplink)."""
    netns.create(internet)
    ip(h1.name, "link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns",
       internet)
    ip(h1.name, "addr", "add", "203.0.113.1/24", "dev", "wan0")
    ip(h1.name, "link", "set", "wan0", "up")
    ip(internet, "addr", "add", f"{INTERNET}/24", "dev", "eth0")
    ip(internet, "link", "set", "eth0", "up")
    ip(internet, "link", "set", "lo", "up")


@pytest.fixture(scope="module")
def span() -> Iterator[Span]:
    token = secrets.token_hex(2)
    workdir = Path(tempfile.mkdtemp(prefix="vnet-multihost-"))
    path = workdir / "span.yaml"
    path.write_text(TOPOLOGY.format(lab=f"mh{token}"))
    topology = parse_topology(path.read_text(), source=str(path))
    underlay, internet, rogue = f"vnt-ul-{token}", f"vnt-in-{token}", f"vnt-rg-{token}"
    hosts: dict[str, TestHost] = {}
    span = Span(topology, path, underlay, internet, rogue, hosts, {})
    try:
        for name in HOSTS:
            hosts[name] = TestHost(host=name)
        netns.create(rogue)
        build_underlay(underlay, hosts, rogue)
        attach_internet(internet, hosts["h1"])
        for name in HOSTS:   # h1 first: c on h3 takes its address from h1's DHCP server
            span.labs[name] = hosts[name].up(path)
        yield span
    finally:
        if span.dataplane is not None:
            span.dataplane.close()
        for host in hosts.values():
            host.close()
        for namespace in (underlay, internet, rogue):
            netns.remove(namespace)


@pytest.fixture
def dp(span: Span) -> Dataplane:
    """Captures on every namespace node's NIC on every host, on each host's underlay NIC
    (``ul:h1``: what reaches h1; a capture sees no frame its own host sends) and on the
    rogue's NIC."""
    if span.dataplane is None:
        nics = {name: place for lab in span.labs.values() for name, place in lab.nics().items()}
        nics.update({f"ul:{h}": (span.hosts[h].name, "ul0") for h in HOSTS})
        nics["rogue:eth0"] = (span.rogue, "eth0")
        span.dataplane = Dataplane(nics)
    span.dataplane.flush()
    return span.dataplane


def marked(marker: bytes) -> Callable[[Packet], bool]:
    return lambda p: marker in bytes(p)


def vxlan_datagram(to: str, vni: int, marker: bytes) -> Callable[[Packet], bool]:
    def where(p: Packet) -> bool:
        if IP not in p or UDP not in p or p[IP].dst != to or p[UDP].dport != 4789:
            return False
        payload = bytes(p[UDP].payload)
        return int.from_bytes(payload[4:7], "big") == vni and marker in payload
    return where


def nothing_arrives(dp: Dataplane, port: str, where: Callable[[Packet], bool],
                    timeout: float = 1.0) -> bool:
    try:
        dp.receive(port, where, timeout=timeout)
    except AssertionError:
        return True
    return False


def broadcast(src: str, src_ip: str, marker: bytes) -> Packet:
    return (Ether(src=src, dst="ff:ff:ff:ff:ff:ff") / IP(src=src_ip, dst="255.255.255.255")
            / UDP(sport=9999, dport=9999) / Raw(marker))


def mac_of(span: Span, node: str, nic: str = "eth0") -> str:
    return next(n.mac for n in span.topology.node(node).nics if n.name == nic)


# -- the tests -------------------------------------------------------------------------------

def test_nodes_on_different_hosts_reach_each_other_in_their_vlan_only(span: Span) -> None:
    wait_until(lambda: span.ping("a", "10.10.0.3"), message="a (h1) to ping c (h3) on red")
    assert span.ping("b", "10.10.0.13")               # blue: h2 -> h3
    assert not span.ping("a", "10.10.0.13")           # same subnet, d is in blue
    assert not span.ping("a", "10.10.0.12")
    # green's addresses are all in the file: the vxlan netdevs answer its ARP themselves.
    assert span.ping("a", "10.30.0.3")
    links = span.hosts["h1"].exec(["ip", "-d", "-o", "link", "show", "type", "vxlan"]).stdout
    green = next(line for line in links.splitlines() if " proxy " in line)
    assert f"id {span.vni('green')} " in green
    assert len(links.splitlines()) == 3               # red, green, inet: not blue
    mtu = span.node("c").exec("c", ["cat", "/sys/class/net/eth0/mtu"]).stdout.strip()
    assert mtu == "1450"                              # the underlay's 1500 - 50


def test_a_trunk_on_h2_sees_frames_from_other_hosts_tagged(span: Span, dp: Dataplane) -> None:
    dp.send("a:eth0", broadcast(mac_of(span, "a"), "10.10.0.1", b"red-from-h1"))
    frame = dp.receive("t:eth0", marked(b"red-from-h1"))
    assert Dot1Q in frame and frame[Dot1Q].vlan == 10
    dp.send("d:eth0", broadcast(mac_of(span, "d"), "10.10.0.13", b"blue-from-h3"))
    frame = dp.receive("t:eth0", marked(b"blue-from-h3"))
    assert Dot1Q in frame and frame[Dot1Q].vlan == 20
    dp.receive("b:eth0", marked(b"blue-from-h3"))      # and untagged to blue's access port
    assert nothing_arrives(dp, "a:eth0", marked(b"blue-from-h3"), timeout=0.5)


def test_broadcast_goes_only_to_the_hosts_that_have_the_network(span: Span,
                                                                dp: Dataplane) -> None:
    dp.send("d:eth0", broadcast(mac_of(span, "d"), "10.10.0.13", b"blue-bcast"))
    dp.receive("ul:h2", vxlan_datagram(ADDRESS["h2"], span.vni("blue"), b"blue-bcast"))
    assert nothing_arrives(dp, "ul:h1", vxlan_datagram(ADDRESS["h1"], span.vni("blue"),
                                                       b"blue-bcast"))
    dp.send("a:eth1", broadcast(mac_of(span, "a", "eth1"), "10.30.0.1", b"green-bcast"))
    dp.receive("ul:h3", vxlan_datagram(ADDRESS["h3"], span.vni("green"), b"green-bcast"))
    assert nothing_arrives(dp, "ul:h2", vxlan_datagram(ADDRESS["h2"], span.vni("green"),
                                                       b"green-bcast"))
    dp.send("a:eth0", broadcast(mac_of(span, "a"), "10.10.0.1", b"red-bcast"))
    for host in ("h2", "h3"):                          # one copy per peer (head-end)
        dp.receive(f"ul:{host}", vxlan_datagram(ADDRESS[host], span.vni("red"), b"red-bcast"))


def test_a_nat_node_on_h3_gets_its_address_from_h1_and_reaches_the_internet(
        span: Span) -> None:
    c = span.node("c")
    out = c.exec("c", ["ip", "-4", "-o", "addr", "show", "dev", "eth1"]).stdout
    assert " inet 192.168.30.1" in out and "/24" in out, out   # from the DHCP range
    leases = Path(span.hosts["h1"].state_dir).glob("dhcp-*.leases")
    assert any(mac_of(span, "c", "eth1") in p.read_text() for p in leases)
    wait_until(lambda: span.ping("c", INTERNET), message="c (h3) to ping the Internet via h1")
    tables = span.hosts["h3"].exec(["nft", "list", "tables"]).stdout
    assert "vnet-overlay-" in tables and f"ip vnet-{span.topology.name}" not in tables


def test_a_vm_on_h2_pings_a_node_on_h1(span: Span) -> None:
    h2 = span.labs["h2"]
    log = ""

    def replied() -> bool:
        nonlocal log
        log = h2.host.cli("console", "v2", "--no-follow").stdout
        return "reply from 10.10.0.1" in log

    wait_until(replied, BOOT_WAIT, message=lambda: f"v2's pings to be answered:\n{log[-1500:]}")
    wait_until(lambda: span.ping("a", "10.10.0.2"), BOOT_WAIT, message="a to ping v2")


def test_vxlan_from_an_address_that_is_not_a_peer_is_dropped(span: Span, dp: Dataplane) -> None:
    h1_mac = span.hosts["h1"].exec(["cat", "/sys/class/net/ul0/address"]).stdout.strip()
    rogue_mac = run_in_netns(span.rogue, ["cat", "/sys/class/net/eth0/address"]).stdout.strip()

    def datagram(source: str, marker: bytes) -> Packet:
        inner = (Ether(src="02:66:66:66:66:66", dst=mac_of(span, "a"))
                 / IP(src="10.10.0.66", dst="10.10.0.1") / UDP(sport=7, dport=9) / Raw(marker))
        return (Ether(src=rogue_mac, dst=h1_mac) / IP(src=source, dst=ADDRESS["h1"])
                / UDP(sport=40000, dport=4789) / VXLAN(vni=span.vni("red"), flags=0x08) / inner)

    # The same datagram from a peer's address gets in: what the filter is there to stop.
    dp.send("rogue:eth0", datagram(ADDRESS["h2"], b"spoofed-peer"))
    dp.receive("a:eth0", marked(b"spoofed-peer"))
    before = counted_drops(span.hosts["h1"], span.topology.name)
    dp.send("rogue:eth0", datagram(ROGUE, b"from-rogue"))
    wait_until(lambda: counted_drops(span.hosts["h1"], span.topology.name) > before,
               message="h1's overlay filter to count the rogue datagram")
    assert nothing_arrives(dp, "a:eth0", marked(b"from-rogue"))


def counted_drops(host: TestHost, lab: str) -> int:
    out = host.exec(["nft", "-j", "list", "table", "inet", f"vnet-overlay-{lab}"]).stdout
    return sum(e["counter"]["packets"] for item in json.loads(out)["nftables"]
               for e in item.get("rule", {}).get("expr", []) if "counter" in e)


def test_tcp_crosses_hosts_with_offloads_on(span: Span) -> None:
    a, c = span.node("a"), span.node("c")
    features = c.exec("c", ["ethtool", "-k", "eth0"], check=True).stdout
    assert "tcp-segmentation-offload: on" in features
    server = popen_in_netns(a.netns("a"), ["iperf3", "-s", "-1", "-B", "10.10.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result: dict[str, object] = {}
    try:
        def client_ran() -> bool:
            run = c.exec("c", ["iperf3", "-c", "10.10.0.1", "-t", "2", "-J"], timeout=60)
            if run.returncode == 0:
                result.update(json.loads(run.stdout))
            return run.returncode == 0
        wait_until(client_ran, 60, message="iperf3 to connect across hosts")
    finally:
        server.kill()
        server.wait()
    received = result["end"]["sum_received"]["bytes"]  # type: ignore[index]
    assert received > 1 << 20, result["end"]


def sysfs_mtu(host: TestHost, ifname: str) -> int:
    return int(host.exec(["cat", f"/sys/class/net/{ifname}/mtu"], check=True).stdout)


def dhcp_address(span: Span, node: str, nic: str) -> str:
    out = span.node(node).exec(node, ["ip", "-4", "-o", "addr", "show", "dev", nic]).stdout
    return out.split(" inet ")[1].split("/")[0]


def test_the_vm_tap_and_the_gateway_carry_the_overlays_mtu_and_big_packets_cross(
        span: Span, dp: Dataplane) -> None:
    lab = span.topology.name
    h1, h2 = span.hosts["h1"], span.hosts["h2"]
    assert sysfs_mtu(h2, naming.host_ifname(lab, "v2", "eth0")) == 1450   # v2's TAP
    for end in (naming.gateway_ifname(lab, "inet"), naming.gateway_port_ifname(lab, "inet")):
        assert sysfs_mtu(h1, end) == 1450
    c = span.node("c")

    def ping(*args: str) -> subprocess.CompletedProcess[str]:
        return c.exec("c", ["ping", "-c", "1", "-W", "2", *args, INTERNET])

    # c (h3) through the gateway on h1: the largest packet that fits, with DF, crosses...
    wait_until(lambda: ping("-M", "do", "-s", "1422").returncode == 0,
               message="c to ping the Internet with 1450-byte packets, DF set")
    # ...one byte more is refused by c itself, never sent
    bigger = ping("-M", "do", "-s", "1423")
    assert bigger.returncode != 0 and "message too long" in bigger.stdout + bigger.stderr
    # The gateway refuses too: it is h1's stack that would send the overlay a frame too big.
    to_c = h1.exec(["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1423",
                    dhcp_address(span, "c", "eth1")])
    assert to_c.returncode != 0 and "message too long" in to_c.stdout + to_c.stderr
    # A reply the Internet sends in 1500-byte fragments is fragmented again to fit at h1's
    # gateway (at 1500 it would vanish at h1's vxlan netdev); the underlay carries no
    # fragment of a VXLAN datagram.
    wait_until(lambda: ping("-M", "dont", "-s", "2000").returncode == 0,
               message="c's 2000-byte ping to be answered through the gateway")
    assert nothing_arrives(dp, "ul:h3", lambda p: IP in p and UDP in p
                           and p[IP].dst == ADDRESS["h3"] and (p[IP].flags.MF or p[IP].frag > 0),
                           timeout=0.5)


def test_h3_knows_the_gateway_on_h1_from_the_topology(span: Span) -> None:
    lab = span.topology.name
    vxlan = naming.overlay_ifname(lab, "inet")
    gateway_mac = naming.gateway_mac(lab, "inet")
    h3 = span.hosts["h3"]
    fdb = h3.exec(["bridge", "fdb", "show", "dev", vxlan], check=True).stdout
    assert f"{gateway_mac} dst {ADDRESS['h1']} " in fdb, fdb
    neighbours = h3.exec(["ip", "neigh", "show", "dev", vxlan], check=True).stdout
    assert f"192.168.30.1 lladdr {gateway_mac} PERMANENT" in neighbours, neighbours
    address = span.hosts["h1"].exec(
        ["cat", f"/sys/class/net/{naming.gateway_ifname(lab, 'inet')}/address"]).stdout
    assert address.strip() == gateway_mac


def test_a_second_lab_with_a_vni_in_use_on_the_host_is_refused(span: Span) -> None:
    lab = span.topology.name
    vni = span.vni("red")
    other = span.path.with_name("clash.yaml")
    other.write_text(f"""
name: {lab}x
hosts:
  h1: {{address: 10.90.0.1}}
  h2: {{address: 10.90.0.2}}
bus: {{broker: "mqtt://10.90.0.254:1883"}}
networks:
  mauve: {{vlan: 50, vni: {vni}}}
nodes:
  m1: {{kind: netns, host: h1, nics: [{{name: eth0, network: mauve, ip: 10.50.0.1/24}}]}}
  m2: {{kind: netns, host: h2, nics: [{{name: eth0, network: mauve, ip: 10.50.0.2/24}}]}}
""")
    h1 = span.hosts["h1"]
    before = h1.exec(["ip", "-o", "link", "show", "type", "vxlan"]).stdout
    with pytest.raises(DaemonError) as info:
        h1.up(other)
    message = str(info.value)
    assert (f"network mauve of lab {lab}x has VNI {vni}, which network red of lab {lab} "
            f"already uses on this host") in message, message
    assert "set vni: on network mauve" in message
    assert h1.exec(["ip", "-o", "link", "show", "type", "vxlan"]).stdout == before
    assert f"vnet-overlay-{lab}x" not in h1.exec(["nft", "list", "tables"]).stdout
    assert span.ping("a", "10.10.0.3")                 # red still crosses


def test_a_vnetd_of_another_host_refuses_the_lab(span: Span) -> None:
    with TestHost(host="h9") as stranger, pytest.raises(DaemonError) as info:
        stranger.up(span.path)
    assert "runs on hosts h1, h2, h3" in str(info.value) and "--host" in str(info.value)


def test_a_host_without_its_underlay_address_refuses_the_lab(span: Span) -> None:
    with TestHost(host="h2") as unwired, pytest.raises(DaemonError) as info:
        unwired.up(span.path)
    assert ("host h2: its underlay address 10.90.0.2 (the topology's hosts:) is on no "
            "interface of this host") in str(info.value)
    assert "ip addr add 10.90.0.2/PREFIX dev IFACE" in str(info.value)


def test_down_on_each_host_removes_every_vxlan_netdev_entry_and_table(span: Span) -> None:
    if span.dataplane is not None:
        span.dataplane.close()
        span.dataplane = None
    for name in HOSTS:
        host = span.hosts[name]
        assert host.exec(["ip", "-o", "link", "show", "type", "vxlan"]).stdout.strip()
        host.down(span.topology.name)
        assert host.exec(["ip", "-o", "link", "show", "type", "vxlan"]).stdout == ""
        assert " dst " not in host.exec(["bridge", "fdb", "show"]).stdout
        assert "vnet-" not in host.exec(["nft", "list", "tables"]).stdout
    span.labs.clear()

