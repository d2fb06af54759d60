"""vnetd's Prometheus endpoint, scraped for real: a TestHost whose vnetd.yaml has
``metrics: {listen: 127.0.0.1:9470}`` (inside the host's own namespace, so nothing listens
on the machine's), frames sent between two namespace nodes, the endpoint scraped from inside
the host namespace and parsed with prometheus_client's parser; the numbers are checked
against the frames sent, the MAC table, and what the datapath, a VM and the bus went
through."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent

import pytest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.conftest import needs_root
from vnet.daemon.metricsserver import MAX_CLIENTS
from vnet.errors import DaemonError
from vnet.host import netns
from vnet.testing import Lab, TestHost, wait_until
from vnet.testing.broker import Broker

pytestmark = needs_root
TOPOLOGIES = Path(__file__).parent / "topologies"
PORT = 9470
CONFIG = f"metrics: {{listen: 127.0.0.1:{PORT}}}\n"
FRAMES = 50
PAYLOAD = b"m" * 100

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def get(host: TestHost, path: str = "/metrics") -> tuple[int, str, str]:
    """An HTTP GET from inside the host's namespace (no proxy: http.client, not urllib):
    status, content type, body."""
    with netns.entered(host.name):
        connection = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
        try:
            connection.request("GET", path)
            reply = connection.getresponse()
            return reply.status, reply.getheader("Content-Type") or "", reply.read().decode()
        finally:
            connection.close()


def scrape(host: TestHost) -> Samples:
    status, content_type, body = get(host)
    assert status == 200, body
    assert content_type.startswith("text/plain"), content_type
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def port_value(host: TestHost, name: str, lab: str, port: str) -> float:
    return value(scrape(host), name, lab=lab, port=port) or 0.0


def raw(host: TestHost, data: bytes, *, close_write: bool = True) -> bytes:
    """Send ``data`` on a TCP connection to the endpoint and read the whole reply."""
    with netns.entered(host.name):
        sock = socket.create_connection(("127.0.0.1", PORT), timeout=30)
    with sock:
        sock.sendall(data)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def pair() -> Iterator[tuple[TestHost, Lab]]:
    with TestHost(config=CONFIG) as host:
        yield host, host.up(TOPOLOGIES / "pair.yaml")


def macs(lab: Lab) -> dict[str, str]:
    return {node["name"]: nic["mac"] for node in lab.status()["nodes"] for nic in node["nics"]}


def test_the_port_counters_count_the_frames_sent(pair: tuple[TestHost, Lab]) -> None:
    host, lab = pair
    mac = macs(lab)
    frame = (Ether(src=mac["left"], dst=mac["right"]) / IP(src="10.2.0.1", dst="10.2.0.2")
             / UDP(sport=4000, dport=4001) / PAYLOAD)
    before = scrape(host)
    rx0 = value(before, "vnet_port_rx_frames_total", lab="pair", port="left.eth0") or 0
    tx0 = value(before, "vnet_port_tx_frames_total", lab="pair", port="right.eth0") or 0
    lab.dataplane.send("left:eth0", frame, count=FRAMES)
    arrived = 0

    def all_arrived() -> bool:
        nonlocal arrived
        arrived += lab.dataplane.count("right:eth0", frame, timeout=0.2)
        return arrived >= FRAMES
    wait_until(all_arrived, message=lambda: f"{FRAMES} frames at right (got {arrived})")

    wait_until(lambda: port_value(host, "vnet_port_rx_frames_total", "pair", "left.eth0")
               >= rx0 + FRAMES, message=f"left's port to count {FRAMES} more frames in")
    wait_until(lambda: port_value(host, "vnet_port_tx_frames_total", "pair", "right.eth0")
               >= tx0 + FRAMES, message=f"right's port to count {FRAMES} more frames out")
    samples = scrape(host)
    assert (value(samples, "vnet_port_rx_bytes_total", lab="pair", port="left.eth0") or 0
            ) >= FRAMES * len(frame)
    assert (value(samples, "vnet_port_tx_bytes_total", lab="pair", port="right.eth0") or 0
            ) >= FRAMES * len(frame)
    # the same numbers as vnet status shows
    counters = lab.counters("left:eth0")
    assert value(samples, "vnet_port_rx_frames_total", lab="pair", port="left.eth0") <= (
        counters["rx_frames"])
    assert value(samples, "vnet_port_learn_limited_total", lab="pair", port="left.eth0") == 0
    assert value(samples, "vnet_port_mac_moves_total", lab="pair", port="left.eth0") == 0

    # the MAC table: as many entries as vnet fdb lists (left's MAC at least, learned now)
    def fdb_matches() -> bool:
        entries = lab.fdb()
        return (any(e["mac"] == mac["left"] for e in entries)
                and value(scrape(host), "vnet_fdb_entries", lab="pair") == len(entries))
    wait_until(fdb_matches, message="vnet_fdb_entries to match vnet fdb")

    assert value(samples, "vnet_datapath_up") == 1
    assert value(samples, "vnet_datapath_state", state="running") == 1
    assert value(samples, "vnet_datapath_restarts_total") == 0
    assert value(samples, "vnet_labs") == 1
    assert not [name for name, _ in samples if name.startswith("vnet_bus_")]  # no bus here


def test_drops_by_reason(pair: tuple[TestHost, Lab]) -> None:
    host, lab = pair
    left = macs(lab)["left"]
    # a group source MAC is never learned: dropped as bad-src-mac
    bad = Ether(src="01:00:5e:00:00:01", dst=left) / IP() / UDP() / PAYLOAD
    lab.dataplane.send("right:eth0", bad, count=7)
    wait_until(lambda: (value(scrape(host), "vnet_port_drops_total", lab="pair",
                              port="right.eth0", reason="bad-src-mac") or 0) >= 7,
               message="7 bad-src-mac drops on right's port")


def test_the_endpoint_survives_bad_requests_and_vnet_status_works(
        pair: tuple[TestHost, Lab]) -> None:
    host, _lab = pair
    assert raw(host, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 Bad Request")
    assert raw(host, b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    assert raw(host, b"GET /nothing HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404 ")
    assert raw(host, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 100_000 + b"\r\n\r\n"
               ).startswith(b"HTTP/1.1 431 ")
    assert raw(host, b"\xff\xfe\x00\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw(host, b"GET /met") == b""             # left half-way: no reply, no harm
    with netns.entered(host.name):                  # one that connects and sends nothing
        idle = socket.create_connection(("127.0.0.1", PORT), timeout=30)
    with idle:
        assert get(host)[0] == 200                  # does not hold up the others
        assert "Status" not in host.cli("status").stderr
        assert host.call("ping")["pid"]
    status, _, body = get(host, "/")
    assert status == 200 and "/metrics" in body
    # more idle connections than it serves at once: the next one is told it is busy
    with contextlib.ExitStack() as stack, netns.entered(host.name):
        for _ in range(MAX_CLIENTS):
            stack.enter_context(socket.create_connection(("127.0.0.1", PORT), timeout=30))
        wait_until(lambda: raw(host, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(
            b"HTTP/1.1 503 "), message="a scrape past the limit to be refused as busy")
    wait_until(lambda: get(host)[0] == 200, message="scrapes to be served again")
    assert scrape(host)[("vnet_datapath_up", frozenset())] == 1


def test_an_unreachable_datapath_is_reported_and_a_restart_counted(
        pair: tuple[TestHost, Lab]) -> None:
    host, lab = pair
    datapath = host.call("ping")["datapath_pid"]
    lab.dataplane.send("left:eth0", Ether(src=macs(lab)["left"], dst="ff:ff:ff:ff:ff:ff")
                       / IP() / UDP() / PAYLOAD, count=5)
    wait_until(lambda: port_value(host, "vnet_port_rx_frames_total", "pair", "left.eth0") >= 5,
               message="left's port to count 5 frames")
    os.kill(datapath, signal.SIGSTOP)             # alive, but answers nothing
    try:
        samples = scrape(host)
        assert value(samples, "vnet_datapath_up") == 0
        assert (value(samples, "vnet_port_rx_frames_total", lab="pair", port="left.eth0")
                or 0) >= 5, "the last counters read are still shown"
        assert value(samples, "vnet_fdb_entries", lab="pair") is None
    finally:
        os.kill(datapath, signal.SIGCONT)
    wait_until(lambda: value(scrape(host), "vnet_datapath_up") == 1,
               message="the datapath to answer scrapes again")

    os.kill(datapath, signal.SIGKILL)
    wait_until(lambda: host.call("ping")["datapath_pid"] not in (None, datapath),
               message="a new datapath")
    wait_until(lambda: value(scrape(host), "vnet_datapath_restarts_total") == 1,
               message="vnet_datapath_restarts_total to be 1")
    wait_until(lambda: value(scrape(host), "vnet_datapath_state", state="running") == 1,
               message="the new datapath to run")
    assert port_value(host, "vnet_port_rx_frames_total", "pair", "left.eth0") >= 5, (
        "a port counter went down across the datapath's restart")


VM_TOPOLOGY = """\
name: mvm
networks:
  net: {vlan: 10}
nodes:
  c1:  {kind: netns, nics: [{name: eth0, network: net, ip: 10.11.0.1/24}]}
  vm1: {kind: vm, memory: 16M, nics: [{name: eth0, network: net, ip: 10.11.0.11/24}]}
"""


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm")
def test_vm_state_and_restarts(tmp_path: Path) -> None:
    topology = tmp_path / "mvm.yaml"
    topology.write_text(VM_TOPOLOGY)
    with TestHost(config=CONFIG) as host:
        lab = host.up(topology)
        running = {"lab": "mvm", "node": "vm1", "state": "running"}
        wait_until(lambda: value(scrape(host), "vnet_vm_state", **running) == 1,
                   message="vm1 to be running")
        assert value(scrape(host), "vnet_vm_restarts_total", lab="mvm", node="vm1") == 0
        pid = host.call("node", node="vm1", lab="mvm")["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: value(scrape(host), "vnet_vm_restarts_total", lab="mvm",
                                 node="vm1") == 1, message="vm1's restart to be counted")
        wait_until(lambda: value(scrape(host), "vnet_vm_state", **running) == 1,
                   message="vm1 to run again")
        assert value(scrape(host), "vnet_vm_state", lab="mvm", node="vm1",
                     state="crashed") == 0
        host.cli("vm", "stop", "vm1")
        samples = scrape(host)
        assert value(samples, "vnet_vm_state", lab="mvm", node="vm1", state="stopped") == 1
        assert value(samples, "vnet_port_rx_frames_total", lab="mvm", port="vm1.eth0") is not None
        lab.close()


def test_bus_metrics(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(Broker({"h1": "pw-one", "h2": "pw-two"}, listen=None))
        password = tmp_path / "h1.pw"
        password.write_text("pw-one\n")
        password.chmod(0o600)
        host = stack.enter_context(TestHost(config=dedent(f"""
            host: h1
            bus: {{broker: "mqtt://10.254.1.1:1883", username: h1,
                  password_file: {password}, keepalive: 5}}
            {CONFIG}""")))
        assert value(scrape(host), "vnet_bus_connected") in (0, 1)
        broker.link(host.name, 1)
        wait_until(lambda: value(scrape(host), "vnet_bus_connected") == 1,
                   message="the bus to connect")
        samples = scrape(host)
        assert value(samples, "vnet_bus_state", state="connected") == 1
        assert (value(samples, "vnet_bus_connects_total") or 0) >= 1
        # its own status, at least, went out; the retained one comes back to it
        wait_until(lambda: (value(scrape(host), "vnet_bus_messages_published_total") or 0) >= 1,
                   message="a message published")
        wait_until(lambda: (value(scrape(host), "vnet_bus_messages_received_total") or 0) >= 1,
                   message="a message received")
        # a bad message from a rogue but authorised client is dropped, and counted
        broker.exec(["mosquitto_pub", "-h", "127.0.0.1", "-u", "h2", "-P", "pw-two", "-q", "1",
                     "-t", "vnet/v1/hosts/h2/status", "-m", "{not json"], check=True)
        wait_until(lambda: (value(scrape(host), "vnet_bus_messages_dropped_total",
                                  kind="malformed") or 0) >= 1,
                   message="the bad message to be counted as dropped")


def test_no_endpoint_unless_configured() -> None:
    with TestHost() as host, pytest.raises(ConnectionRefusedError):
        get(host)


def test_an_address_it_cannot_have_is_a_clear_error() -> None:
    with pytest.raises(DaemonError) as caught:   # vnetd exits before it answers
        TestHost(config="metrics: {listen: 10.99.99.99:9470}\n")
    assert "vnetd: metrics.listen 10.99.99.99:9470: 10.99.99.99 is not an address of this " \
        "host" in str(caught.value)
    assert "Traceback" not in str(caught.value)
