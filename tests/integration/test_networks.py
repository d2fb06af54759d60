"""NAT, bridged and isolated networks.  vnetd runs in a namespace playing the host; the
"Internet" and the LANs are namespaces made by the test, linked to the host by veths named
like physical uplinks (eth1, eth2, eth3).  Nothing touches the machine's own network."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP, Dot1Q, Ether

from tests.conftest import needs_root
from vnet.daemon import naming
from vnet.host import netns
from vnet.testing import Dataplane, Lab, TestHost, popen_in_netns, run_in_netns, wait_until

pytestmark = needs_root
TOPOLOGIES = Path(__file__).parent / "topologies"
HOST_UPLINK = "203.0.113.1/24"
SERVER = "203.0.113.2"

# Prints the peer address of each connection, answers with the payload.
PEER_SERVER = """
import socket, sys
srv = socket.create_server((sys.argv[1], int(sys.argv[2]))); print("ready", flush=True)
while True:
    conn, peer = srv.accept()
    print(peer[0], flush=True)
    conn.sendall(conn.recv(100)); conn.close()
"""
CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as s:
    s.sendall(b"hello"); print(s.recv(100).decode())
"""


class External:
    """A namespace beyond a host uplink: the Internet or a LAN."""

    def __init__(self, host: TestHost, uplink: str, address: str | None) -> None:
        self.name = f"vnt-ext-{secrets.token_hex(3)}"
        netns.create(self.name)
        with IPRoute(netns=host.name) as ipr:
            ipr.link("add", ifname=uplink, kind="veth",
                     peer={"ifname": "eth0", "net_ns_fd": self.name})
            ipr.link("set", index=ipr.link_lookup(ifname=uplink)[0], state="up")
        with IPRoute(netns=self.name) as ipr:
            index = ipr.link_lookup(ifname="eth0")[0]
            if address:
                ip, prefix = address.split("/")
                ipr.addr("add", index=index, address=ip, prefixlen=int(prefix))
            ipr.link("set", index=index, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        self.processes: list[subprocess.Popen[str]] = []

    def serve(self, address: str, port: int) -> subprocess.Popen[str]:
        return start_server(self.name, address, port, self.processes)

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        return run_in_netns(self.name, command)

    def close(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()
        netns.remove(self.name)


def start_server(ns: str, address: str, port: int, owner: list[subprocess.Popen[str]]
                 ) -> subprocess.Popen[str]:
    process = popen_in_netns(ns, [sys.executable, "-c", PEER_SERVER, address, str(port)],
                             stdout=subprocess.PIPE, text=True)
    owner.append(process)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


# A connection that must succeed gets a generous deadline (a lost SYN is sent again after 1 s,
# then 3 s); one that must fail gets a bounded window (a wrong rule would let it in at once).
CONNECT_TIMEOUT = 15.0
NO_CONNECT_WINDOW = 3.0


def connect(ns: str, address: str, port: int, timeout: float = CONNECT_TIMEOUT
            ) -> subprocess.CompletedProcess[str]:
    return run_in_netns(ns, [sys.executable, "-c", CLIENT, address, str(port), str(timeout)])


def cannot_connect(ns: str, address: str, port: int) -> bool:
    return connect(ns, address, port, NO_CONNECT_WINDOW).returncode != 0


@contextmanager
def nat_host(topology: str) -> Iterator[tuple[TestHost, Lab, External]]:
    """A host whose uplink eth1 (203.0.113.1) leads to the Internet (a server at SERVER),
    with ``topology`` up on it."""
    with TestHost() as host:
        internet = External(host, "eth1", f"{SERVER}/24")
        try:
            with IPRoute(netns=host.name) as ipr:
                ipr.addr("add", index=ipr.link_lookup(ifname="eth1")[0], address="203.0.113.1",
                         prefixlen=24)
            forward_before = netns.read_sysctl(host.name, "net.ipv4.ip_forward")
            assert forward_before == "0"
            lab = host.up(TOPOLOGIES / topology)
            yield host, lab, internet
        finally:
            internet.close()


@pytest.fixture
def nat_lab() -> Iterator[tuple[TestHost, Lab, External]]:
    with nat_host("nat.yaml") as setup:
        yield setup


def test_nat_node_reaches_the_internet_as_the_host(nat_lab) -> None:
    _host, lab, internet = nat_lab
    server = internet.serve(SERVER, 7000)
    out = connect(lab.netns("n1"), SERVER, 7000)
    assert out.stdout.strip() == "hello", out.stderr
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "203.0.113.1"  # masqueraded to the uplink


def test_dhcp_gives_the_static_lease_and_a_route(nat_lab) -> None:
    _host, lab, internet = nat_lab
    addr = lab.exec("n2", ["ip", "-4", "-o", "addr", "show", "eth0"]).stdout
    assert "192.168.20.50/24" in addr
    dynamic = lab.exec("n4", ["ip", "-4", "-o", "addr", "show", "eth0"]).stdout
    assert "192.168.20.1" in dynamic  # 192.168.20.1xx: from the dynamic range
    route = lab.exec("n2", ["ip", "route", "show", "default"]).stdout
    assert "via 192.168.20.1" in route
    internet.serve(SERVER, 7001)
    assert connect(lab.netns("n4"), SERVER, 7001).stdout.strip() == "hello"


def test_inbound_only_through_a_declared_forward(nat_lab) -> None:
    _host, lab, internet = nat_lab
    # Give the Internet a route to the private subnet, so only the rules can stop it.
    internet.run("ip", "route", "add", "192.168.0.0/16", "via", "203.0.113.1")
    inside: list[subprocess.Popen[str]] = []
    try:
        server = start_server(lab.netns("n1"), "0.0.0.0", 22, inside)
        start_server(lab.netns("n1"), "0.0.0.0", 8080, inside)
        assert cannot_connect(internet.name, "192.168.20.10", 8080)   # direct: no
        assert cannot_connect(internet.name, "192.168.20.10", 22)     # direct: no
        out = connect(internet.name, "203.0.113.1", 2222)                      # forward: yes
        assert out.stdout.strip() == "hello", out.stderr
        assert server.stdout is not None
        assert server.stdout.readline().strip() == SERVER
    finally:
        for p in inside:
            p.kill()
            p.wait()


def test_two_nat_networks_cannot_reach_each_other(nat_lab) -> None:
    _host, lab, _internet = nat_lab
    inside: list[subprocess.Popen[str]] = []
    try:
        start_server(lab.netns("n1"), "0.0.0.0", 9000, inside)
        start_server(lab.netns("n3"), "0.0.0.0", 9000, inside)
        assert connect(lab.netns("n2"), "192.168.20.10", 9000).returncode == 0  # same network
        assert cannot_connect(lab.netns("n3"), "192.168.20.10", 9000)  # other one
        assert cannot_connect(lab.netns("n1"), "192.168.30.10", 9000)  # nor back
    finally:
        for p in inside:
            p.kill()
            p.wait()


def test_reach_opens_one_nat_network_to_another_one_way(nat_lab) -> None:
    """ops says reach: [inside]; ops has no uplink, so its "any way out" must not be a way
    into the lab's other NAT networks."""
    _host, lab, internet = nat_lab
    inside: list[subprocess.Popen[str]] = []
    try:
        server = start_server(lab.netns("n1"), "0.0.0.0", 9001, inside)
        start_server(lab.netns("n5"), "0.0.0.0", 9001, inside)
        start_server(lab.netns("n3"), "0.0.0.0", 9001, inside)
        out = connect(lab.netns("n5"), "192.168.20.10", 9001)
        assert out.stdout.strip() == "hello", out.stderr
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "192.168.40.10"  # routed, not masqueraded
        assert cannot_connect(lab.netns("n1"), "192.168.40.10", 9001)  # one way
        assert cannot_connect(lab.netns("n5"), "192.168.30.10", 9001)  # not listed
        assert cannot_connect(lab.netns("n3"), "192.168.40.10", 9001)
        outside = internet.serve(SERVER, 9002)
        assert connect(lab.netns("n5"), SERVER, 9002).stdout.strip() == "hello"
        assert outside.stdout is not None
        assert outside.stdout.readline().strip() == "203.0.113.1"
    finally:
        for p in inside:
            p.kill()
            p.wait()


UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(10)
s.sendto(b"vnet-nat", (sys.argv[1], int(sys.argv[2]))); print(s.recvfrom(64)[0].decode())
"""


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm")
def test_vms_on_a_nat_network_go_out_get_dhcp_and_are_reached_through_a_forward() -> None:
    with nat_host("natvm.yaml") as (host, lab, internet):
        def console(node: str) -> str:
            return str(host.cli("console", node, "--no-follow").stdout)

        def settled() -> bool:
            return ("reply from 203.0.113.2" in console("vm1")
                    and "reply from 203.0.113.2" in console("vm2")
                    and "dhcp lease" in console("vm3"))

        # Each guest boots, takes its address and pings by itself: wait for all of it.
        wait_until(settled, 60, message=lambda: "vm1 and vm2 to be answered from the Internet "
                   "and vm3 to hold a lease; their consoles end:\n" + "\n".join(
                       f"{vm}: {console(vm)[-600:]}" for vm in ("vm1", "vm2", "vm3")))
        # The Internet has no route to 192.168.20.0/24: the guests' pings are answered only
        # if they left masqueraded as the uplink's address.
        assert "gw=192.168.20.1" in console("vm1"), console("vm1")
        assert "reply from 203.0.113.2" in console("vm1"), console("vm1")
        assert lab.exec("n1", ["ping", "-c", "1", "-W", "2", "192.168.20.20"]).returncode == 0
        echo = internet.run(sys.executable, "-c", UDP_CLIENT, "203.0.113.1", "7007")
        assert echo.stdout.strip() == "vnet-nat", echo.stderr
        # DHCP: the guests' own client (DISCOVER, OFFER, REQUEST, ACK) against the network's
        # dnsmasq: vm2 gets its static lease and routes through the router it was given,
        # vm3 an address from the range.
        assert "dhcp lease 192.168.20.60/24 gw 192.168.20.1" in console("vm2"), console("vm2")
        assert "reply from 203.0.113.2" in console("vm2"), console("vm2")
        lease = console("vm3").split("dhcp lease 192.168.20.", 1)[1].split("/", 1)[0]
        assert 100 <= int(lease) <= 200, console("vm3")
        for address in ("192.168.20.60", f"192.168.20.{lease}"):
            assert lab.exec("n1", ["ping", "-c", "1", "-W", "2", address]).returncode == 0


def test_isolated_network_leaks_nothing(nat_lab) -> None:
    _host, lab, internet = nat_lab
    with Dataplane({"internet": (internet.name, "eth0"),
                    "i1": (lab.netns("i1"), "eth0")}) as dp:
        assert lab.exec("i1", ["ping", "-c", "1", "-W", "1", SERVER]).returncode != 0
        frame = Ether(src="02:00:00:00:77:01", dst="ff:ff:ff:ff:ff:ff") / ARP(
            psrc="203.0.113.50", pdst=SERVER)
        dp.send("i1", frame)
        dp.verify_no_packet(frame, "internet", timeout=0.5)
        dp.flush()
        # Nothing at all from the isolated node's own MAC reached the Internet either.
        i1_mac = next(n["nics"][0]["mac"] for n in lab.status()["nodes"] if n["name"] == "i1")
        assert not [f for _, f in dp.ports["internet"].seen if f[6:12] == bytes.fromhex(
            i1_mac.replace(":", ""))]
        # A frame addressed to the MAC of the switch port's host end (the veth's other side)
        # is the switch's, not the host's to route: before the ports were kept off the host's
        # stack, this one went out of the uplink.
        port = naming.host_ifname(lab.name, "i1", "eth0")
        with IPRoute(netns=_host.name) as ipr:
            port_mac = ipr.get_links(ipr.link_lookup(ifname=port)[0])[0].get("IFLA_ADDRESS")
        dp.flush()
        dp.send("i1", Ether(src=i1_mac, dst=port_mac) / IP(src="203.0.113.50", dst=SERVER)
                / ICMP())
        source = bytes([203, 0, 113, 50])
        dp.verify_no_frame("internet", lambda p: source in bytes(p), timeout=0.5)


def test_down_removes_rules_forwarding_dhcp_and_gateways(nat_lab) -> None:
    host, lab, _internet = nat_lab
    table = f"vnet-{lab.name}"
    assert table in host.exec(["nft", "list", "tables"]).stdout
    assert "table netdev vnet-port-" in host.exec(["nft", "list", "tables"]).stdout
    assert netns.read_sysctl(host.name, "net.ipv4.ip_forward") == "1"
    dnsmasq = subprocess.run(["pgrep", "-f", f"dhcp-{lab.name}-inside"], capture_output=True,
                             text=True).stdout.split()
    assert dnsmasq
    host.down(lab.name)
    assert table not in host.exec(["nft", "list", "tables"]).stdout
    assert "vnet-port-" not in host.exec(["nft", "list", "tables"]).stdout
    assert netns.read_sysctl(host.name, "net.ipv4.ip_forward") == "0"
    assert not Path(f"/proc/{dnsmasq[0]}").exists()
    gw = naming.host_ifname(lab.name, naming.gateway_owner("inside"), "gw")
    with IPRoute(netns=host.name) as ipr:
        names = {link.get("IFLA_IFNAME") for link in ipr.get_links()}
    assert gw not in names and "eth1" in names  # ours gone, the host's uplink untouched
    assert host.lab_namespaces(lab.name) == set()


def test_uplink_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    text = (TOPOLOGIES / "nat.yaml").read_text().replace("uplink: eth1", "uplink: eth9")
    bad = tmp_path / "nat.yaml"
    bad.write_text(text)
    with TestHost() as host:
        out = host.cli("up", str(bad), check=False)
        assert out.returncode == 1 and "uplink eth9 does not exist" in out.stderr
        assert host.call("status")["labs"] == []
        assert host.lab_namespaces("natlab") == set()


@pytest.fixture
def bridged_lab() -> Iterator[tuple[Lab, External, External]]:
    with TestHost() as host:
        lan = External(host, "eth2", "198.51.100.1/24")
        tagged_lan = External(host, "eth3", None)
        try:
            yield host.up(TOPOLOGIES / "bridged.yaml"), lan, tagged_lan
        finally:
            lan.close()
            tagged_lan.close()


def test_bridged_node_is_reached_from_the_lan_by_its_own_address_and_mac(bridged_lab) -> None:
    lab, lan, _tagged = bridged_lab
    assert lan.run("ping", "-c", "2", "-W", "1", "198.51.100.10").returncode == 0
    b1_mac = next(n["nics"][0]["mac"] for n in lab.status()["nodes"] if n["name"] == "b1")
    neighbours = lan.run("ip", "neigh", "show", "198.51.100.10").stdout
    assert b1_mac in neighbours


def test_tagged_bridged_network_leaves_the_uplink_tagged(bridged_lab) -> None:
    lab, _lan, tagged_lan = bridged_lab
    b2_mac = next(n["nics"][0]["mac"] for n in lab.status()["nodes"] if n["name"] == "b2")
    me = "02:00:00:00:88:01"
    with Dataplane({"lan": (tagged_lan.name, "eth0")}) as dp:
        who_has = ARP(op=1, hwsrc=me, psrc="198.51.100.99", pdst="198.51.100.20")
        dp.send("lan", Ether(src=me, dst="ff:ff:ff:ff:ff:ff") / who_has)   # untagged: no
        with pytest.raises(AssertionError):
            dp.receive("lan", lambda p: p.haslayer(ARP) and p[ARP].op == 2, timeout=0.5)
        dp.send("lan", Ether(src=me, dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=40) / who_has)
        reply = dp.receive("lan", lambda p: p.haslayer(ARP) and p[ARP].op == 2)
        assert reply.haslayer(Dot1Q) and reply[Dot1Q].vlan == 40
        assert reply[ARP].hwsrc == b2_mac
