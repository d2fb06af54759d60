"""The multi-host benchmark's arithmetic and texts, apart from its I/O (pure; unit-tested).

* the topology of a benchmark lab across N hosts (one node per host, probe nodes added);
* MACs for the convergence figure, and the snapshot parts that advertise them;
* counting control messages per host from their topics, and rates over a window;
* percentiles of delays, and ICMP echo packets for the reachability probe.
"""

from __future__ import annotations

import statistics
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from vnet.bench.cluster import host_address, host_name, hosts_block
from vnet.bus.messages import MAX_ENTRIES, MacEntry, SnapshotPart
from vnet.packet.inet import internet_checksum

NETWORK = "red"
VLAN = 10


@dataclass(frozen=True)
class Node:
    """A benchmark node: one NIC on the red network."""

    name: str
    host: str
    ip: str                   # with prefix
    mac: str | None = None


def node_ip(index: int) -> str:
    """Node ``index`` (1..65000) in 10.254.0.0/16: 10.254.0.1, ... 10.254.0.250, 10.254.1.1."""
    high, low = divmod(index - 1, 250)
    return f"10.254.{high}.{low + 1}"


def base_nodes(count: int, macs: Mapping[int, str]) -> list[Node]:
    """Node ``nI`` on host ``hI`` for each host; ``macs`` fixes some nodes' MACs."""
    return [Node(f"n{i}", host_name(i), f"{node_ip(i)}/16", macs.get(i))
            for i in range(1, count + 1)]


def topology_text(lab: str, count: int, nodes: Sequence[Node],
                  extra_hosts: Mapping[str, str] | None = None) -> str:
    """The lab across the cluster's ``count`` hosts (plus ``extra_hosts``: name ->
    address, hosts without nodes, such as the MAC source)."""
    hosts = hosts_block(count)
    if extra_hosts:
        head, bus = hosts.rsplit("bus:", 1)
        hosts = head + "".join(f"  {name}: {{address: {address}}}\n"
                               for name, address in extra_hosts.items()) + "bus:" + bus
    lines = [f"name: {lab}", hosts.rstrip("\n"), "networks:",
             f"  {NETWORK}: {{vlan: {VLAN}, mac_limit: 65536}}", "nodes:"]
    for node in nodes:
        mac = f", mac: \"{node.mac}\"" if node.mac else ""
        lines.append(f"  {node.name}: {{kind: netns, host: {node.host}, nics: [{{name: eth0, "
                     f"network: {NETWORK}, ip: {node.ip}{mac}}}]}}")
    return "\n".join(lines) + "\n"


def source_address(count: int) -> str:
    """An underlay address for a host without nodes, after the cluster's hosts."""
    return host_address(count + 1)


# -- MAC convergence --------------------------------------------------------------------------


def many_macs(count: int, prefix: int = 0x0A) -> list[str]:
    """``count`` distinct unicast, locally administered MACs: 02:PP:00:00:00:00 upwards."""
    if not 0 <= count <= 2**32:
        raise ValueError("count must be 0..2**32")
    return [f"02:{prefix:02x}:" + ":".join(f"{b:02x}" for b in i.to_bytes(4, "big"))
            for i in range(count)]


def snapshot_parts(host: str, lab: str, epoch: int, network: str, macs: Sequence[str],
                   part_size: int = MAX_ENTRIES) -> list[SnapshotPart]:
    """The retained snapshot that advertises ``macs`` as ``host``'s (seq 0, no deltas)."""
    chunks = [macs[i:i + part_size] for i in range(0, len(macs), part_size)] or [[]]
    return [SnapshotPart(host, lab, epoch, 0, part, len(chunks),
                         tuple(MacEntry(network, mac, 0) for mac in chunk))
            for part, chunk in enumerate(chunks)]


# -- control messages ---------------------------------------------------------------------------


def writer_of(topic: str, root: str = "vnet/v1") -> str | None:
    """Who writes ``topic``: the host of ``ROOT/hosts/HOST/...``, ``"desired"`` for a lab's
    desired state, None outside the tree."""
    if not topic.startswith(root + "/"):
        return None
    levels = topic[len(root) + 1:].split("/")
    if levels[0] == "hosts" and len(levels) >= 3 and levels[1]:
        return levels[1]
    if levels[0] == "labs":
        return "desired"
    return None


def kind_of(topic: str, root: str = "vnet/v1") -> str:
    """status, snapshot, delta, resync, desired or other."""
    levels = topic[len(root) + 1:].split("/") if topic.startswith(root + "/") else []
    if levels[:1] == ["labs"]:
        return "desired"
    if len(levels) >= 3 and levels[0] == "hosts":
        if levels[2] in ("status", "resync"):
            return levels[2]
        if levels[2] == "macs" and len(levels) >= 5:
            return "snapshot" if levels[4] == "snapshot" else "delta"
    return "other"


@dataclass(frozen=True)
class MessageCount:
    """Control messages seen over a window, per writer and per kind."""

    seconds: float
    by_host: Mapping[str, int]
    by_kind: Mapping[str, int]

    def per_host_rates(self, hosts: Iterable[str]) -> dict[str, float]:
        """Messages/s each of ``hosts`` wrote (0 for a silent one)."""
        return {h: self.by_host.get(h, 0) / self.seconds for h in hosts}


def count_messages(topics: Iterable[str], seconds: float, root: str = "vnet/v1"
                   ) -> MessageCount:
    if seconds <= 0:
        raise ValueError("the window must be longer than 0 s")
    by_host: dict[str, int] = {}
    by_kind: dict[str, int] = {}
    for topic in topics:
        writer = writer_of(topic, root)
        if writer is None:
            continue
        by_host[writer] = by_host.get(writer, 0) + 1
        kind = kind_of(topic, root)
        by_kind[kind] = by_kind.get(kind, 0) + 1
    return MessageCount(seconds, by_host, by_kind)


# -- delays -------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0..100) of ``values``; NaN for none."""
    if not values:
        return float("nan")
    if not 0 <= q <= 100:
        raise ValueError("q must be 0..100")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))       # ceil(n q / 100), at least 1
    return ordered[int(rank) - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50, p99, min, max and n of ``values`` (NaN where there are none)."""
    nan = float("nan")
    return {"p50": statistics.median(values) if values else nan,
            "p99": percentile(values, 99), "min": min(values, default=nan),
            "max": max(values, default=nan), "n": float(len(values))}


def delays(started: float, arrivals: Mapping[str, float | None]) -> tuple[list[float],
                                                                          list[str]]:
    """Seconds from ``started`` to each arrival, and the names that never arrived."""
    got = sorted(t - started for t in arrivals.values() if t is not None)
    missing = sorted(name for name, t in arrivals.items() if t is None)
    return got, missing


# -- ICMP echo ----------------------------------------------------------------------------------

ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0


def echo_request(ident: int, seq: int, payload: bytes = b"vnet-reach") -> bytes:
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident & 0xFFFF, seq & 0xFFFF)
    csum = internet_checksum(header + payload)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, csum, ident & 0xFFFF,
                       seq & 0xFFFF) + payload


def is_echo_reply(packet: bytes, ident: int) -> bool:
    """Whether a raw IPv4 packet (as a raw ICMP socket returns it) is an echo reply to
    ``ident``."""
    if len(packet) < 20:
        return False
    ihl = (packet[0] & 0x0F) * 4
    icmp = packet[ihl:ihl + 8]
    if len(icmp) < 8:
        return False
    kind, _, _, got, _ = struct.unpack("!BBHHH", icmp)
    return bool(kind == ICMP_ECHO_REPLY and got == ident & 0xFFFF)
