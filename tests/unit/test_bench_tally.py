"""The multi-host benchmark's pure parts: topology text, MACs and snapshot parts, counting
control messages by writer, percentiles, ICMP echo packets (vnet/bench/tally.py, cluster.py)."""

from __future__ import annotations

import math
import struct

import pytest

from vnet.bench import tally
from vnet.bench.cluster import broker_url, host_address, hosts_block
from vnet.bus.messages import MAX_ENTRIES
from vnet.bus.topics import TopicTree
from vnet.daemon.config import parse_config
from vnet.packet.inet import internet_checksum
from vnet.testing.underlay import daemon_config
from vnet.topology import parse_topology


def test_host_addresses_are_distinct_and_stay_in_the_underlay() -> None:
    addresses = [host_address(i) for i in range(1, 600)]
    assert addresses[:2] == ["10.90.0.1", "10.90.0.2"]
    assert addresses[249:251] == ["10.90.0.250", "10.90.1.1"]
    assert len(set(addresses)) == len(addresses)
    with pytest.raises(ValueError):
        host_address(0)


def test_the_benchmark_topology_loads_and_places_one_node_per_host() -> None:
    nodes = tally.base_nodes(16, {1: "02:b0:00:00:00:0a"})
    text = tally.topology_text("mb1", 16, [*nodes, tally.Node("x0", "h16", "10.254.4.1/16")],
                               {"src": tally.source_address(16)})
    topology = parse_topology(text, source="<bench>")
    assert [h.name for h in topology.hosts] == [f"h{i}" for i in range(1, 17)] + ["src"]
    assert topology.node("n1").host == "h1" and topology.node("x0").host == "h16"
    assert topology.node("n1").nics[0].mac == "02:b0:00:00:00:0a"
    assert topology.bus is not None and topology.bus.broker == "mqtt://10.90.255.254:1883"
    assert "src: {address: 10.90.0.17}" in text


def test_hosts_block_names_every_host_and_the_broker() -> None:
    block = hosts_block(3)
    assert block.splitlines() == ["hosts:", "  h1: {address: 10.90.0.1}",
                                  "  h2: {address: 10.90.0.2}", "  h3: {address: 10.90.0.3}",
                                  'bus: {broker: "mqtt://10.90.255.254:1883"}']


def test_daemon_config_is_a_valid_vnetd_config(tmp_path) -> None:
    password = tmp_path / "h2.password"
    password.write_text("secret\n")
    password.chmod(0o600)
    config = parse_config(daemon_config("h2", broker_url(), password), source="<h2>",
                          hostname="other")
    assert config.host == "h2"
    assert config.bus is not None and config.bus.username == "h2"


def test_many_macs_are_distinct_unicast_and_locally_administered() -> None:
    macs = tally.many_macs(70_000)
    assert len(set(macs)) == 70_000
    assert macs[0] == "02:0a:00:00:00:00" and macs[257] == "02:0a:00:00:01:01"
    assert all(int(m[:2], 16) & 0x03 == 0x02 for m in macs[:1000])


def test_snapshot_parts_hold_every_mac_once_within_the_part_limit() -> None:
    macs = tally.many_macs(10_000)
    parts = tally.snapshot_parts("src", "mb1", 7, "red", macs)
    assert len(parts) == 10 and {p.parts for p in parts} == {10}
    assert [p.part for p in parts] == list(range(10))
    assert all(len(p.macs) <= MAX_ENTRIES for p in parts)
    assert [e.mac for p in parts for e in p.macs] == macs
    assert all(p.epoch == 7 and p.seq == 0 and p.host == "src" for p in parts)
    assert len(parts[0].to_json()) < 128 * 1024            # the snapshot part's size limit
    assert tally.snapshot_parts("src", "mb1", 7, "red", [])[0].parts == 1


def test_snapshot_parts_pass_the_bus_receivers_checks() -> None:
    from vnet.bus.messages import SnapshotPart, topic_of
    tree = TopicTree("vnet/v1")
    part = tally.snapshot_parts("src", "mb1", 7, "red", tally.many_macs(1500))[1]
    topic = topic_of(tree, part)
    assert topic == "vnet/v1/hosts/src/macs/mb1/snapshot/1"
    parsed = tree.parse(topic)
    assert not isinstance(parsed, Exception)
    assert SnapshotPart.from_json(part.to_json(), parsed) == part


@pytest.mark.parametrize("topic, writer, kind", [
    ("vnet/v1/hosts/h3/status", "h3", "status"),
    ("vnet/v1/hosts/h3/macs/lab/snapshot/0", "h3", "snapshot"),
    ("vnet/v1/hosts/h12/macs/lab/delta", "h12", "delta"),
    ("vnet/v1/hosts/h1/resync", "h1", "resync"),
    ("vnet/v1/labs/lab/desired", "desired", "desired"),
    ("vnet/v2/hosts/h1/status", None, "other"),
    ("other/vnet/v1/hosts/h1/status", None, "other"),
    ("vnet/v1/hosts", None, "other"),
    ("vnet/v1", None, "other"),
])
def test_writer_and_kind_of_a_topic(topic: str, writer: str | None, kind: str) -> None:
    assert tally.writer_of(topic) == writer
    assert tally.kind_of(topic) == kind


def test_count_messages_per_host_and_kind_over_a_window() -> None:
    topics = (["vnet/v1/hosts/h1/status"] * 3 + ["vnet/v1/hosts/h2/status"] * 2
              + ["vnet/v1/hosts/h2/macs/lab/delta", "vnet/v1/labs/lab/desired", "junk"])
    count = tally.count_messages(topics, 10.0)
    assert dict(count.by_host) == {"h1": 3, "h2": 3, "desired": 1}
    assert dict(count.by_kind) == {"status": 5, "delta": 1, "desired": 1}
    assert count.per_host_rates(["h1", "h2", "h3"]) == {"h1": 0.3, "h2": 0.3, "h3": 0.0}
    with pytest.raises(ValueError):
        tally.count_messages(topics, 0)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]          # 1..100
    assert tally.percentile(values, 50) == 50.0
    assert tally.percentile(values, 99) == 99.0
    assert tally.percentile(values, 100) == 100.0
    assert tally.percentile(values, 0) == 1.0
    assert tally.percentile([3.0, 1.0, 2.0], 99) == 3.0    # few samples: p99 is the max
    assert math.isnan(tally.percentile([], 50))
    with pytest.raises(ValueError):
        tally.percentile(values, 101)


def test_summary_and_delays() -> None:
    got, missing = tally.delays(100.0, {"h1": 100.5, "h2": None, "h3": 101.5})
    assert got == [0.5, 1.5] and missing == ["h2"]
    s = tally.summary(got)
    assert (s["p50"], s["p99"], s["min"], s["max"], s["n"]) == (1.0, 1.5, 0.5, 1.5, 2.0)
    assert math.isnan(tally.summary([])["p50"])


def test_echo_request_checksum_verifies_and_replies_are_recognised() -> None:
    request = tally.echo_request(0x1234, 7)
    assert internet_checksum(request) == 0                   # a correct checksum sums to zero
    assert request[0] == 8 and struct.unpack("!HH", request[4:8]) == (0x1234, 7)
    ip_header = bytes([0x45]) + bytes(19)
    reply = bytearray(request)
    reply[0] = 0
    assert tally.is_echo_reply(ip_header + bytes(reply), 0x1234)
    assert not tally.is_echo_reply(ip_header + bytes(reply), 0x1235)   # someone else's
    assert not tally.is_echo_reply(ip_header + request, 0x1234)        # a request
    assert not tally.is_echo_reply(ip_header[:10], 0x1234)
    assert internet_checksum(b"\x01") == (~0x0100) & 0xFFFF
