"""The measurements: 64-byte frames (full rate, zero-loss rate), TCP, latency, MAC-table scale.

Each function takes a built ``Testbed`` with a started ``System`` and returns plain numbers.
Counters are read from the node namespaces' own netdevs (``/proc/net/dev`` opened inside the
namespace), so what counts is what the receiver's NIC got, whatever the switch claims.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from vnet.bench import frames64, search
from vnet.bench.testbed import (
    ADDR_A,
    ADDR_B,
    MAC_A,
    MAC_B,
    SINK_ADDR,
    BenchError,
    System,
    Testbed,
    ns_cmd,
    run,
)
from vnet.host import netns
from vnet.host.netdev import PROC_NET_DEV, parse_packets
from vnet.packet.ethernet import mac_to_bytes

SCALE_MAC_BASE = "02:c0:00:00:00:00"


@dataclass(frozen=True)
class Settings:
    # 64-byte frames (vnet.bench.frames64): the generator's fixed rate asked for, the same for
    # every system; the "delivered" trial, the capture that checks the pace, each zero-loss
    # trial (RFC 2544: loss = any frame lost) and the search's trials at most
    frame_rate: int = 200_000
    frame_seconds: float = 3.0
    verify_seconds: float = 0.5
    search_seconds: float = 2.0
    search_steps: int = 7
    tcp_seconds: float = 5.0
    tcp_streams: int = 4
    pings: int = 1000
    ping_interval: float = 0.002
    scale_entries: int = 1_000_000
    # RFC 2889's address learning: the fixed offered rate of the sweep that fills the table
    # (the same for every system; the share of it learned is a figure), and the search for
    # the highest offered rate at which LEARN_TARGET of a sweep of scale_search_entries is
    # learned (scale_search_steps sweeps)
    scale_learn_rate: int = 100_000
    scale_search_entries: int = 200_000
    scale_search_steps: int = 5
    scale_seconds: float = 3.0

    @classmethod
    def quick(cls) -> Settings:
        return cls(frame_rate=20_000, frame_seconds=1.0, verify_seconds=0.2,
                   search_seconds=0.5, search_steps=3, tcp_seconds=1.0,
                   tcp_streams=2, pings=100, ping_interval=0.005, scale_entries=5000,
                   scale_learn_rate=20_000, scale_search_entries=5000, scale_search_steps=3,
                   scale_seconds=1.0)


def have_trafgen() -> bool:
    return shutil.which("trafgen") is not None


# ---- counters --------------------------------------------------------------------------------


class NetdevCounters:
    """``/proc/net/dev`` of a namespace, opened inside it once and re-read cheaply."""

    def __init__(self, netns_name: str) -> None:
        with netns.entered(netns_name):
            self.file: IO[bytes] = open(PROC_NET_DEV, "rb", buffering=0)  # noqa: SIM115

    def read(self, ifname: str) -> tuple[int, int]:
        """``(rx_packets, tx_packets)``."""
        self.file.seek(0)
        packets = parse_packets(self.file.read(), ifname)
        if packets is None:
            raise BenchError(f"no netdev {ifname}")
        return packets

    def close(self) -> None:
        self.file.close()


@contextlib.contextmanager
def counters(bed: Testbed) -> Iterator[tuple[NetdevCounters, NetdevCounters]]:
    a, b = NetdevCounters(bed.node_a), NetdevCounters(bed.node_b)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


# ---- traffic generation -----------------------------------------------------------------------


def _trafgen_conf(bed: Testbed, name: str, body: str) -> Path:
    path = bed.tmp / f"{name}.cfg"
    path.write_text("{ " + body + " }\n")
    return path


def udp64(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str) -> str:
    """A 60-byte frame (64 on the wire with the FCS): Ethernet, IPv4, UDP, 18 bytes of data."""
    return (f"eth(da={dst_mac}, sa={src_mac}), ipv4(sa={src_ip}, da={dst_ip}, ttl=64), "
            f"udp(sp=9, dp=9), fill(0x00, 18)")


def trafgen(bed: Testbed, netns_name: str, conf: Path, rate: int | None = None,
            count: int | None = None) -> subprocess.Popen[Any]:
    # leave the machine's socket-memory sysctls and IRQ affinity alone
    cmd = ["trafgen", "--dev", "eth0", "--conf", str(conf), "--cpus", "1", "--no-sock-mem",
           "--notouch-irq", "--no-cpu-stats"]
    if rate is not None:
        cmd += ["--rate", f"{max(rate, 1)}pps"]
    if count is not None:
        cmd += ["--num", str(count)]
    return bed.spawn(cmd, netns=netns_name)


def warm_up(bed: Testbed) -> None:
    """Let the switch learn both nodes' MACs (and settle) before anything is measured."""
    for src, dst in ((bed.node_a, ADDR_B), (bed.node_b, ADDR_A)):
        run(ns_cmd(src, ["ping", "-n", "-q", "-c", "3", "-i", "0.05", "-W", "1", dst]),
            check=False)


def full_rate(bed: Testbed, s: Settings) -> dict[str, float]:
    """Frames/s offered by trafgen at full speed and delivered at the receiver."""
    conf = _trafgen_conf(bed, "udp64", udp64(MAC_A, MAC_B, ADDR_A, SINK_ADDR))
    with counters(bed) as (a, b):
        proc = trafgen(bed, bed.node_a, conf)
        try:
            time.sleep(0.5)  # trafgen's start-up, and the switch's warm-up at full load
            tx0, rx0, t0 = a.read("eth0")[1], b.read("eth0")[0], time.monotonic()
            time.sleep(s.frame_seconds)
            tx1, rx1, t1 = a.read("eth0")[1], b.read("eth0")[0], time.monotonic()
        finally:
            bed.stop(proc, signal.SIGINT)
        if proc.returncode not in (0, -signal.SIGINT, 130) and tx1 == tx0:
            raise BenchError(f"trafgen failed (exit {proc.returncode})")
    elapsed = t1 - t0
    return {"offered_fps": (tx1 - tx0) / elapsed, "delivered_fps": (rx1 - rx0) / elapsed}


# ---- TCP ---------------------------------------------------------------------------------------


def tcp(bed: Testbed, seconds: float, streams: int) -> float:
    """iperf3 from node A to node B: Gbit/s received."""
    server = bed.spawn(["iperf3", "-s", "-1", "-p", "5201"], netns=bed.node_b)
    try:
        result = None
        for _ in range(50):
            time.sleep(0.1)
            result = run(ns_cmd(bed.node_a, ["iperf3", "-c", ADDR_B, "-p", "5201", "-J",
                                             "-t", str(seconds), "-P", str(streams)]),
                         check=False, timeout=seconds + 20)
            if result.returncode == 0:
                break
            if "Connection refused" not in result.stdout + result.stderr:
                break
        assert result is not None
        if result.returncode != 0:
            raise BenchError(f"iperf3 failed: {(result.stdout + result.stderr)[-400:]}")
        report = json.loads(result.stdout)
        return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        bed.stop(server)


# ---- latency -----------------------------------------------------------------------------------


_PING_TIME = re.compile(r"time=([0-9.]+) ms")


def ping_rtts(bed: Testbed, count: int, interval: float) -> list[float]:
    """Round trips (µs) of ``count`` pings from node A to node B."""
    result = run(ns_cmd(bed.node_a, ["ping", "-n", "-c", str(count), "-i", f"{interval:g}",
                                     "-W", "1", ADDR_B]), check=False,
                 timeout=count * (interval + 0.01) + 30)
    return [float(m) * 1000.0 for m in _PING_TIME.findall(result.stdout)]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def forwarding_pid(system: System) -> int | None:
    """The process that forwards the frames (vnet's datapath, ovs-vswitchd); None for the
    Linux bridge, whose forwarding runs in the kernel's softirqs, charged to whichever
    process or CPU is interrupted: not attributable."""
    proc = getattr(system, "proc", None) or getattr(system, "vswitchd", None)
    return proc.pid if proc is not None else None


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far: ``/proc/PID/task/*/schedstat``
    (nanoseconds), or ``/proc/PID/stat``'s utime + stime (clock ticks) without schedstats."""
    total, tasks = 0, Path(f"/proc/{pid}/task")
    try:
        for task in tasks.iterdir():
            with contextlib.suppress(FileNotFoundError):   # a thread that just ended
                total += int((task / "schedstat").read_text().split()[0])
        if total:
            return total / 1e9
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError as err:
        raise BenchError(f"cannot read the CPU time of process {pid}: {err}") from None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def cpu_share(pid: int | None) -> Iterator[dict[str, float]]:
    """``{"cpu_pct": ...}`` once the block ends: the share of one core ``pid`` used
    meanwhile (NaN without a process to measure)."""
    out = {"cpu_pct": float("nan")}
    c0, t0 = (cpu_seconds(pid), time.monotonic()) if pid else (0.0, 0.0)
    yield out
    if pid:
        out["cpu_pct"] = 100 * (cpu_seconds(pid) - c0) / max(time.monotonic() - t0, 1e-6)


def idle_cpu(pid: int | None, seconds: float) -> float:
    """The forwarding process's CPU share (% of a core) over ``seconds`` with no traffic."""
    with cpu_share(pid) as used:
        time.sleep(seconds)
    return used["cpu_pct"]


def latency(bed: Testbed, s: Settings, under_load: bool, pid: int | None = None
            ) -> dict[str, float]:
    """p50/p99 round trip, idle or while one TCP stream runs at full speed from A to B, and
    ``cpu_pct``: the forwarding process's (``pid``) share of a core during the pings."""
    load = None
    if under_load:
        seconds = s.pings * s.ping_interval * 1.5 + 3
        load_server = bed.spawn(["iperf3", "-s", "-1", "-p", "5202"], netns=bed.node_b)
        time.sleep(0.3)
        load = bed.spawn(["iperf3", "-c", ADDR_B, "-p", "5202", "-t", f"{seconds:.0f}"],
                         netns=bed.node_a)
        time.sleep(1.0)
    try:
        with cpu_share(pid) as used:
            rtts = ping_rtts(bed, s.pings, s.ping_interval)
    finally:
        if load is not None:
            bed.stop(load)
            bed.stop(load_server)
    lost = s.pings - len(rtts)
    return {"p50_us": percentile(rtts, 50), "p99_us": percentile(rtts, 99),
            "loss": lost / s.pings, "cpu_pct": used["cpu_pct"]}


# ---- MAC-table scale ----------------------------------------------------------------------------


LEARN_TARGET = 0.95  # of a sweep learned, for the learning-rate search (the goal)
SEARCH_START = 2     # the search starts at this many times the fixed sweep rate,
SEARCH_CEILING = 8   # goes no higher than this many times it
SEARCH_FLOOR = 16    # and no lower than it divided by this


def sweep_frames(n: int) -> list[bytes]:
    """One 60-byte frame to B from each of N source MACs SCALE_MAC_BASE + 0 .. N-1 (its last
    4 bytes count), of the local experimental EtherType: B's stack ignores them."""
    dst, prefix = mac_to_bytes(MAC_B), mac_to_bytes(SCALE_MAC_BASE)[:2]
    tail = b"\x88\xb5" + bytes(46)
    return [dst + prefix + i.to_bytes(4, "big") + tail for i in range(n)]


def _settled_entries(system: System, deadline: float = 15.0) -> int:
    """The table's size once it stops growing (the switch may still hold frames in its
    queues when the generator exits)."""
    last, end = system.table_entries(), time.monotonic() + deadline
    while time.monotonic() < end:
        time.sleep(0.3)
        now = system.table_entries()
        if now == last:
            return now
        last = now
    return last


def sweep(bed: Testbed, system: System, n: int, rate: float) -> dict[str, float]:
    """One RFC 2889 address-learning trial: an empty table, then one frame from each of N
    new source MACs offered at ``rate`` frames/s by the 64-byte generator (its own process,
    pinned to one CPU, the switch kept off it, paced smoothly: ``vnet.bench.frames64``).

    Returns ``learned`` (entries added, so the two nodes' own do not count), ``sent`` (what
    left node A's NIC), ``offered_fps`` (sent over the time the sender took: the rate the
    switch was actually offered), ``arrived`` (what the switch's port netdev received) and
    ``lost_REASON`` for what the switch counted as lost (vnet: ``rx-ring-full``,
    ``learn-limited``)."""
    system.flush_table()
    time.sleep(0.3)
    warm_up(bed)
    base = system.table_entries()
    arrived0, losses0 = bed.link_stats(bed.host, bed.port_a)[0], system.port_losses()
    cpu = frames64.generator_cpu()
    with counters(bed) as (a, _b), frames64.switch_off_cpu(bed, cpu):
        tx0 = a.read("eth0")[1]
        elapsed = frames64.generate(bed, rate, n / rate, cpu, sweep=n).seconds
        time.sleep(0.05)  # the last frames leave the qdisc
        tx = a.read("eth0")[1]
    sent = tx - tx0
    learned = _settled_entries(system) - base
    arrived = bed.link_stats(bed.host, bed.port_a)[0] - arrived0
    time.sleep(1.1)  # vnet's datapath adds up its rings' kernel drops once a second
    losses = {k: v - losses0.get(k, 0) for k, v in system.port_losses().items()}
    return {"learned": float(learned), "sent": float(sent), "offered_fps": sent / elapsed,
            "arrived": float(arrived),
            **{f"lost_{k}": float(v) for k, v in losses.items() if v}}


def learning_rate(bed: Testbed, system: System, s: Settings
                  ) -> tuple[search.Answer, list[tuple[float, float, float]]]:
    """RFC 2889's address learning rate: the highest offered rate at which LEARN_TARGET of
    ``scale_search_entries`` new MACs is learned, by ``vnet.bench.search``: from
    SEARCH_START x the fixed sweep rate, halving while sweeps fail and doubling while they
    pass (up to SEARCH_CEILING x, or the generator's own limit), then bisecting the bracket.
    Returns the answer (a measured rate or a bound, in offered rates) and the trials (rate
    asked, rate offered, share learned)."""
    n = s.scale_search_entries
    base = float(s.scale_learn_rate)
    plan = search.Plan(start=base * SEARCH_START, ceiling=base * SEARCH_CEILING,
                       floor=base / SEARCH_FLOOR, steps=s.scale_search_steps)
    trials: list[search.Trial] = []
    shares: list[tuple[float, float, float]] = []
    while (rate := search.next_rate(plan, trials)) is not None:
        t = sweep(bed, system, n, int(rate))
        share = t["learned"] / n
        trials.append(search.Trial(rate, t["offered_fps"], share >= LEARN_TARGET))
        shares.append((rate, t["offered_fps"], share))
    return search.conclude(plan, trials), shares


def scale(bed: Testbed, system: System, s: Settings) -> dict[str, float]:
    """Fill the MAC table with ``scale_entries`` learned MACs; lookup rate and memory per entry.

    Node A sends one frame from each of N source MACs at the fixed rate ``scale_learn_rate``
    (the switch learns them on A's port; the share learned is RFC 2889's learning figure at
    that rate); then node B sends at full rate to those N MACs in turn, so every frame's
    forwarding decision is a lookup that hits one of the N entries; delivered at A per
    second is the lookup rate.  Memory is the growth of the switch's resident memory (the
    forwarding process's RSS; for the Linux bridge, its FDB slab) over the learned entries.
    """
    n = s.scale_entries
    system.flush_table()
    time.sleep(0.3)
    warm_up(bed)
    mem0 = system.table_memory()
    fill = sweep(bed, system, n, s.scale_learn_rate)
    entries = system.table_entries()
    mem1 = system.table_memory()
    mac = SCALE_MAC_BASE
    lookup = _trafgen_conf(bed, "lookup", udp64(MAC_B, mac, ADDR_B, SINK_ADDR).replace(
        f"da={mac},", f"da={mac}, da[2:4]=dinc(0, {n - 1}),"))
    with counters(bed) as (a, _b):
        proc = trafgen(bed, bed.node_b, lookup)
        try:
            time.sleep(0.5)
            rx0, t0 = a.read("eth0")[0], time.monotonic()
            time.sleep(s.scale_seconds)
            rx1, t1 = a.read("eth0")[0], time.monotonic()
        finally:
            bed.stop(proc, signal.SIGINT)
    return {**{f"fill_{k}": v for k, v in fill.items()},
            "entries": float(entries), "learned_share": fill["learned"] / n,
            "learn_offered_fps": fill["offered_fps"], "lookup_fps": (rx1 - rx0) / (t1 - t0),
            "bytes_per_entry": (mem1 - mem0) / entries if entries else float("nan")}


def median_spread(values: list[float]) -> dict[str, float]:
    finite = [v for v in values if v == v]
    if not finite:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": statistics.median(finite), "min": min(finite), "max": max(finite),
            "n": len(finite)}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine() -> dict[str, Any]:
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "memory_gib": round(mem / 2**30, 1),
            "kernel": os.uname().release, "hostname": os.uname().nodename}
