"""``vnet bench --measure multihost --hosts N``: a lab across N hosts on this machine.

The cluster (``vnet.bench.cluster``: a real mosquitto, N host namespaces with a vnetd each, an
underlay bridge) carries lab ``mbPID``: network ``red`` with node ``nI`` on host ``hI``.
Measured, each by the benchmark itself (vnetd's own figures are not trusted for timing):

* **reach**: a node ``xK`` is added on one host (``vnet up`` of the next generation, from h1);
  a probe in every other host's node sends ICMP echo requests to it every 10 ms from before
  the publish (neighbour retransmission 10 ms, so ARP timers do not dominate); the delay to
  each probe's first reply, from the publish and from the node's namespace appearing;
* **steady**: control messages on the broker over a window with nothing changing: a
  subscriber (the broker's admin user) counts every non-retained message under
  ``vnet/v1/#``, per writing host and kind;
* **macs**: a bus client playing host ``src`` (in the lab's hosts, no nodes) advertises M MACs
  in one retained snapshot (parts of 1,024); the time until every vnetd's overlay holds them
  (``vnet status``'s ``remote_macs`` of the network: counted after the kernel FDB was
  written), then its clean stop (``offline``) and the time until every host withdrew them;
* **overlay**: TCP (iperf3) and 64-byte frames (trafgen) from n1 (h1) to n2 (h2) through
  the vxlan ports vnetd built, against a Linux bridge + kernel vxlan netdev (VNI 99) in the
  same two host namespaces over the same underlay, taking turns in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vnet import jsonlines
from vnet.bench import measure, tally
from vnet.bench.cluster import Cluster, host_address, host_name
from vnet.bench.testbed import (
    ADDR_A,
    ADDR_B,
    MAC_A,
    MAC_B,
    BenchError,
    Testbed,
    ns_cmd,
    run,
)
from vnet.bus.client import BusClient, BusConfig, Connected, Received
from vnet.bus.messages import DesiredLab, LabRealised
from vnet.errors import VnetError
from vnet.testing.wait import wait_until

SOURCE = "src"
SOURCE_PASSWORD = "pw-src"
ADMIN, ADMIN_PASSWORD = "vnet-admin", "admin-secret"   # vnet.testing.broker's defaults
PROBE_INTERVAL = 0.01
REACH_TIMEOUT = 90.0
CONVERGE_TIMEOUT = 120.0
QUIET_BEFORE_COUNTING = 5.0   # s: the advertiser coalesces snapshots for 2 s after a change
REF_VNI = 99
NODE_MTU = 1450
Log = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    hosts: int = 16
    reach_trials: int = 4
    macs: int = 10_000
    steady_seconds: float = 30.0
    tcp_seconds: float = 5.0
    frame_seconds: float = 3.0
    overlay_repeat: int = 2

    @classmethod
    def quick(cls, hosts: int = 3) -> Settings:
        return cls(hosts=hosts, reach_trials=2, macs=2_000, steady_seconds=10.0,
                   tcp_seconds=2.0, frame_seconds=1.0, overlay_repeat=1)


@dataclass
class Bench:
    """The cluster and the lab on it."""

    settings: Settings
    log: Log
    tag: int = field(default_factory=lambda: os.getpid() % 10000)
    generation: int = 0

    def __post_init__(self) -> None:
        self.lab = f"mb{self.tag}"
        self.cluster = Cluster(self.settings.hosts, f"vmh{self.tag}",
                               extra_users={SOURCE: SOURCE_PASSWORD}, log=self.log)
        self.nodes = tally.base_nodes(self.settings.hosts, {1: MAC_A, 2: MAC_B})

    def node_netns(self, node: str) -> str:
        return f"vnet-{self.lab}-{node}"

    def up(self, nodes: Sequence[tally.Node], extra_hosts: Mapping[str, str] | None = None
           ) -> float:
        """``vnet up`` of the next generation from h1; seconds until it returned."""
        text = tally.topology_text(self.lab, self.settings.hosts, nodes, extra_hosts)
        path = self.cluster.workdir / f"{self.lab}.yaml"
        path.write_text(text)
        h1 = self.cluster.hosts[0].daemon
        started = time.monotonic()
        reply = jsonlines.call(h1.socket, {"op": "up", "text": text, "source": str(path)},
                               timeout=600)
        if not reply.get("ok"):
            raise BenchError(f"vnet up of generation {self.generation + 1}: "
                             f"{reply.get('error')}")
        self.generation = int(reply["result"]["generation"])
        return time.monotonic() - started

    def remote_macs(self, index: int) -> int:
        host = self.cluster.hosts[index]
        overlay = self.cluster.bus_status(host)["overlay"].get(f"{self.lab}/{tally.NETWORK}")
        return int(overlay["remote_macs"]) if overlay else -1


# -- reach ----------------------------------------------------------------------------------------


def probe(address: str, timeout: float, interval: float = PROBE_INTERVAL) -> None:
    """The probe process (``--probe``): echo requests to ``address`` every ``interval`` s;
    prints ``ready``, then the wall-clock time of the first reply (or ``none``)."""
    import select
    import socket

    ident = os.getpid() & 0xFFFF
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    print("ready", flush=True)
    deadline, seq = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        seq += 1
        with contextlib.suppress(OSError):    # no neighbour yet: EHOSTUNREACH
            sock.sendto(tally.echo_request(ident, seq), (address, 0))
        until = time.monotonic() + interval
        while (left := until - time.monotonic()) > 0:
            if not select.select([sock], [], [], left)[0]:
                break
            packet, (source, _) = sock.recvfrom(2048)
            if source == address and tally.is_echo_reply(packet, ident):
                print(f"{time.time():.6f}", flush=True)
                return
    print("none", flush=True)


def _ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.wait(10)
        errors = proc.stderr.read() if proc.stderr else ""
        raise BenchError(f"a reach probe did not start: {line!r} {errors[-300:]}")


def _watch_netns(name: str, seen: dict[str, float], stop: threading.Event) -> None:
    path = Path("/run/netns") / name
    while not stop.is_set():
        if path.exists():
            seen[name] = time.time()
            return
        time.sleep(0.002)


def measure_reach(bench: Bench, log: Log) -> dict[str, Any]:
    s, n = bench.settings, bench.settings.hosts
    for node in bench.nodes:       # ARP retries every 10 ms, not every second
        run(ns_cmd(bench.node_netns(node.name), ["sysctl", "-q", "-w",
                                                 "net.ipv4.neigh.eth0.retrans_time_ms=10"]))
    from_publish: list[float] = []
    from_netns: list[float] = []
    up_seconds: list[float] = []
    missing: list[str] = []
    for trial in range(s.reach_trials):
        target = n - (trial % n)                    # h16, h15, ...
        new = tally.Node(f"x{trial}", host_name(target), f"{tally.node_ip(1000 + trial)}/16")
        address = new.ip.split("/")[0]
        probers = {}
        for node in bench.nodes:
            if node.host == new.host:
                continue
            probers[node.host] = subprocess.Popen(
                ns_cmd(bench.node_netns(node.name), [sys.executable, "-m",
                                                     "vnet.bench.multihost", "--probe",
                                                     address, str(REACH_TIMEOUT)]),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                start_new_session=True)
        try:
            for proc in probers.values():
                _ready(proc)
            seen: dict[str, float] = {}
            stop = threading.Event()
            watcher = threading.Thread(target=_watch_netns, daemon=True, args=(
                bench.node_netns(new.name), seen, stop))
            watcher.start()
            published = time.time()
            up_seconds.append(bench.up([*bench.nodes, new]))
            arrivals: dict[str, float | None] = {}
            for host, proc in probers.items():
                out, _ = proc.communicate(timeout=REACH_TIMEOUT + 30)
                last = out.strip().splitlines()[-1] if out.strip() else "none"
                arrivals[host] = None if last == "none" else float(last)
            stop.set()
            watcher.join()
        finally:
            for proc in probers.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        got, lost = tally.delays(published, arrivals)
        from_publish += got
        missing += [f"{new.name} from {h}" for h in lost]
        if bench.node_netns(new.name) in seen:
            born = seen[bench.node_netns(new.name)]
            from_netns += [t - born for t in (a for a in arrivals.values() if a is not None)]
        log(f"  reach {new.name} on {new.host}: vnet up {up_seconds[-1]:.2f} s; reached from "
            f"{len(got)}/{len(arrivals)} hosts, p50 {tally.summary(got)['p50']:.2f} s, "
            f"max {tally.summary(got)['max']:.2f} s after the publish")
    bench.up(bench.nodes)       # the probe node goes again
    return {"from_publish_s": tally.summary(from_publish),
            "from_netns_s": tally.summary(from_netns),
            "up_s": tally.summary(up_seconds), "unreached": missing,
            "samples": len(from_publish)}


# -- steady state -------------------------------------------------------------------------------


def count_control_messages(bench: Bench, seconds: float) -> tally.MessageCount:
    """Every non-retained message under the tree over ``seconds``, seen by the broker's
    admin user from inside the broker's namespace."""
    import aiomqtt

    broker = bench.cluster.broker
    assert broker is not None

    async def scenario() -> tally.MessageCount:
        topics: list[str] = []
        async with aiomqtt.Client("127.0.0.1", broker.port, username=ADMIN,
                                  password=ADMIN_PASSWORD) as client:
            await client.subscribe("vnet/v1/#", qos=0)
            started = time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    async for message in client.messages:
                        if not message.retain:      # the retained store replayed: not traffic
                            topics.append(str(message.topic))
            return tally.count_messages(topics, time.monotonic() - started)

    return broker.run(scenario, timeout=seconds + 60)


def measure_steady(bench: Bench, log: Log) -> dict[str, Any]:
    time.sleep(QUIET_BEFORE_COUNTING)
    count = count_control_messages(bench, bench.settings.steady_seconds)
    hosts = [h.name for h in bench.cluster.hosts]
    rates = list(count.per_host_rates(hosts).values())
    total = sum(count.by_host.values()) / count.seconds
    log(f"  steady state over {count.seconds:.0f} s: {total:.2f} msg/s in all, per host "
        f"median {tally.summary(rates)['p50']:.3f} msg/s; by kind {dict(count.by_kind)}")
    return {"window_s": count.seconds, "total_per_s": total,
            "per_host_per_s": tally.summary(rates), "by_kind": dict(count.by_kind)}


# -- MAC convergence ---------------------------------------------------------------------------


@dataclass
class SourceState:
    """What the MAC source's thread and the benchmark tell each other."""

    lab: str
    macs: Sequence[str]
    ready: threading.Event = field(default_factory=threading.Event)
    go: threading.Event = field(default_factory=threading.Event)
    published: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    times: dict[str, float] = field(default_factory=dict)
    error: BaseException | None = None


def run_source(bench: Bench, state: SourceState) -> None:
    """Host ``src`` on the bus (in the broker's namespace): online, reports every desired
    generation naming it as realised (it has nothing to build), publishes the snapshot on
    ``go`` and says ``offline`` on ``stop``."""
    broker = bench.cluster.broker
    assert broker is not None

    async def scenario() -> None:
        bus = BusClient(BusConfig(f"mqtt://127.0.0.1:{broker.port}", username=SOURCE,
                                  password=SOURCE_PASSWORD, lease=60.0), SOURCE)
        connected = asyncio.Event()
        epoch = 0

        async def events() -> None:
            nonlocal epoch
            async for event in bus:
                if isinstance(event, Connected):
                    epoch = event.epoch
                    connected.set()
                elif (isinstance(event, Received) and isinstance(event.message, DesiredLab)
                      and event.message.lab == state.lab
                      and SOURCE in {h.name for h in event.message.topology.hosts}):
                    await bus.publish_status({state.lab: LabRealised(event.message.generation)})

        await bus.start()
        reader = asyncio.get_running_loop().create_task(events())
        try:
            await asyncio.wait_for(connected.wait(), 60)
            await bus.publish_status({})
            state.ready.set()
            while not state.go.is_set():
                await asyncio.sleep(0.005)
            parts = tally.snapshot_parts(SOURCE, state.lab, epoch, tally.NETWORK, state.macs)
            state.times["publish"] = time.time()
            for part in parts:
                if not await bus.publish(part):
                    raise BenchError(f"the broker did not take snapshot part {part.part}")
            state.times["published"] = time.time()
            state.published.set()
            while not state.stop.is_set():
                await asyncio.sleep(0.005)
            state.times["stop"] = time.time()
            await bus.stop()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await bus.stop()

    try:
        broker.run(scenario, timeout=CONVERGE_TIMEOUT * 3)
    except BaseException as err:   # handed to the benchmark's thread
        state.error = err
        state.ready.set()
        state.published.set()


def _all_hosts_until(bench: Bench, condition: Callable[[int], bool], timeout: float
                     ) -> list[float | None]:
    """Each host's wall-clock time when ``condition(host index)`` first held (polled every
    20 ms by a thread per host), None for a host where it did not within ``timeout``."""
    times: list[float | None] = [None] * len(bench.cluster.hosts)

    def watch(index: int) -> None:
        with contextlib.suppress(AssertionError):
            wait_until(lambda: condition(index), timeout, interval=0.02)
            times[index] = time.time()

    threads = [threading.Thread(target=watch, args=(i,)) for i in range(len(times))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times


def _late(bench: Bench, times: Sequence[float | None], log: Log) -> list[str]:
    """The hosts that did not get there, with their count and their vnetd's overlay errors."""
    late = []
    for index, at in enumerate(times):
        if at is None:
            host = bench.cluster.hosts[index]
            errors = [line for line in host.daemon.log().splitlines()
                      if "overlay of" in line or "Error" in line][-2:]
            late.append(f"{host.name} ({bench.remote_macs(index)} remote MACs)")
            log(f"    {host.name} did not: {bench.remote_macs(index)} remote MACs; "
                f"its log: {' | '.join(errors) or '-'}")
    return late


def measure_macs(bench: Bench, log: Log) -> dict[str, Any]:
    s = bench.settings
    state = SourceState(bench.lab, tally.many_macs(s.macs))
    thread = threading.Thread(target=run_source, args=(bench, state), daemon=True)
    thread.start()
    try:
        if not state.ready.wait(90) or state.error:
            raise BenchError(f"the MAC source did not come online: {state.error}")
        bench.up(bench.nodes, {SOURCE: host_address(s.hosts + 1)})
        baseline = [bench.remote_macs(i) for i in range(s.hosts)]
        state.go.set()
        arrived = _all_hosts_until(
            bench, lambda i: bench.remote_macs(i) >= baseline[i] + s.macs, CONVERGE_TIMEOUT)
        if state.error:
            raise BenchError(f"the MAC source failed: {state.error}")
        started = state.times["publish"]
        converge = [t - started for t in arrived if t is not None]
        late = _late(bench, arrived, log)
        fdb = kernel_fdb_entries(bench, 0)
        state.stop.set()
        withdraw: list[float] = []
        late_withdraw = ["not measured: the MACs never arrived everywhere"]
        if not late:    # else a host short of them would count as withdrawn at once
            gone = _all_hosts_until(bench, lambda i: bench.remote_macs(i) <= baseline[i],
                                    CONVERGE_TIMEOUT)
            withdraw = [t - state.times["stop"] for t in gone if t is not None]
            late_withdraw = _late(bench, gone, log)
    finally:
        state.go.set()
        state.stop.set()
        thread.join(60)
    publish = state.times["published"] - state.times["publish"]
    log(f"  {s.macs} MACs: published in {publish:.2f} s; {len(converge)}/{s.hosts} hosts had "
        f"them within {CONVERGE_TIMEOUT:.0f} s, the last after "
        f"{tally.summary(converge)['max']:.2f} s (median host "
        f"{tally.summary(converge)['p50']:.2f} s); h1's kernel FDB then held {fdb} entries; "
        f"withdrawn on {len(withdraw)}/{s.hosts} hosts, the last "
        f"{tally.summary(withdraw)['max']:.2f} s after the source's clean stop")
    result = {"macs": s.macs, "publish_s": publish, "converge_s": tally.summary(converge),
              "withdraw_s": tally.summary(withdraw), "h1_kernel_fdb": fdb,
              "timeout_s": CONVERGE_TIMEOUT, "late": late, "late_withdraw": late_withdraw}
    try:            # src out of the lab's hosts again; the figures stand if this fails
        bench.up(bench.nodes)
    except (BenchError, OSError) as err:
        log(f"  after the MACs: {err}")
        result["next_up_failed"] = str(err)
    return result


def vxlan_ifname(netns: str) -> str:
    out = run(["ip", "-n", netns, "-o", "link", "show", "type", "vxlan"]).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line]
    names = [n for n in names if n != "rvx"]
    if not names:
        raise BenchError(f"no vxlan interface in {netns}")
    return names[0]


def kernel_fdb_entries(bench: Bench, index: int) -> int:
    ns = bench.cluster.hosts[index].daemon.name
    out = run(["bridge", "-n", ns, "fdb", "show", "dev", vxlan_ifname(ns)], timeout=300).stdout
    return sum(1 for line in out.splitlines() if " dst " in line
               and not line.startswith("00:00:00:00:00:00"))


# -- overlay throughput ------------------------------------------------------------------------


class NodePair(Testbed):
    """Two nodes vnetd made (nothing to build; ``close`` removes only processes)."""

    def __init__(self, node_a: str, node_b: str, tag: str) -> None:
        super().__init__(tag)
        self.node_a, self.node_b = node_a, node_b


class ReferencePair(Testbed):
    """The kernel's reference in the same host namespaces: node ``ra`` behind h1 and ``rb``
    behind h2, each on a Linux bridge with a kernel vxlan netdev (VNI 99) over the same
    underlay, with n1's and n2's addresses and MACs (their own namespaces)."""

    def __init__(self, tag: str, hosts: Sequence[tuple[str, str, str]]) -> None:
        super().__init__(tag)
        self.hosts = hosts      # (host namespace, local address, peer address) of h1, h2

    def build(self) -> None:
        self.add_namespaces(self.node_a, self.node_b)
        for (host, local, peer), node, addr, mac in zip(
                self.hosts, (self.node_a, self.node_b), (ADDR_A, ADDR_B), (MAC_A, MAC_B),
                strict=True):
            run(["ip", "-n", host, "link", "add", "rp", "mtu", str(NODE_MTU), "type", "veth",
                 "peer", "name", "eth0", "mtu", str(NODE_MTU), "netns", node])
            run(["ip", "-n", node, "link", "set", "eth0", "address", mac])
            run(["ip", "-n", node, "addr", "add", f"{addr}/16", "dev", "eth0"])
            run(["ip", "-n", node, "link", "set", "eth0", "up"])
            run(["ip", "-n", host, "link", "add", "rvx", "mtu", str(NODE_MTU), "type", "vxlan",
                 "id", str(REF_VNI), "local", local, "dstport", "4789", "nolearning"])
            run(["bridge", "-n", host, "fdb", "append", "00:00:00:00:00:00", "dev", "rvx",
                 "dst", peer])
            run(["ip", "-n", host, "link", "add", "rbr", "type", "bridge"])
            for ifname in ("rp", "rvx"):
                run(["ip", "-n", host, "link", "set", ifname, "master", "rbr", "up"])
            run(["ip", "-n", host, "link", "set", "rbr", "up"])

    def close(self) -> None:
        for host, _, _ in self.hosts:
            for ifname in ("rbr", "rvx", "rp"):
                run(["ip", "-n", host, "link", "del", ifname], check=False)
        super().close()


def measure_overlay(bench: Bench, log: Log) -> dict[str, Any]:
    s = bench.settings
    h1, h2 = bench.cluster.hosts[0], bench.cluster.hosts[1]
    vnet = NodePair(bench.node_netns("n1"), bench.node_netns("n2"), f"vmo{bench.tag}")
    ref = ReferencePair(f"vmr{bench.tag}", ((h1.daemon.name, h1.address, h2.address),
                                            (h2.daemon.name, h2.address, h1.address)))
    settings = replace(measure.Settings(), frame_seconds=s.frame_seconds)
    runs: dict[str, dict[str, list[float]]] = {"vnet": {}, "bridge": {}}
    try:
        ref.build()
        for _ in range(s.overlay_repeat):
            for name, bed in (("vnet", vnet), ("bridge", ref)):
                measure.warm_up(bed)
                figures = {"tcp_1_gbps": measure.tcp(bed, s.tcp_seconds, 1),
                           "tcp_4_gbps": measure.tcp(bed, s.tcp_seconds, 4)}
                if measure.have_trafgen():
                    full = measure.full_rate(bed, settings)
                    figures["frames_delivered_fps"] = full["delivered_fps"]
                    figures["frames_offered_fps"] = full["offered_fps"]
                for key, value in figures.items():
                    runs[name].setdefault(key, []).append(value)
                log(f"  overlay {name}: TCP 1 stream {figures['tcp_1_gbps']:.2f}, 4 streams "
                    f"{figures['tcp_4_gbps']:.2f} Gbit/s; 64 B delivered "
                    f"{figures.get('frames_delivered_fps', float('nan')) / 1e3:.0f} k/s")
    finally:
        vnet.close()
        ref.close()
    return {name: {key: measure.median_spread(values) for key, values in figures.items()}
            for name, figures in runs.items()}


# -- the whole run --------------------------------------------------------------------------


PARTS: dict[str, Callable[[Bench, Log], dict[str, Any]]] = {
    "reach": measure_reach, "steady": measure_steady, "macs": measure_macs,
    "overlay": measure_overlay}


def run_multihost(settings: Settings, log: Log, parts: Sequence[str] = tuple(PARTS)
                  ) -> dict[str, Any]:
    """Build the cluster, bring the lab up, measure ``parts``, remove everything."""
    bench = Bench(settings, log)
    result: dict[str, Any] = {"hosts": settings.hosts, "settings": settings.__dict__}
    try:
        started = time.monotonic()
        bench.cluster.build()
        result["cluster_build_s"] = time.monotonic() - started
        result["first_up_s"] = bench.up(bench.nodes)
        log(f"  {settings.hosts} hosts online after {result['cluster_build_s']:.0f} s; the lab "
            f"up on all of them in {result['first_up_s']:.1f} s")
        for part in parts:
            try:
                result[part] = PARTS[part](bench, log)
            except (BenchError, VnetError, AssertionError, OSError,
                    subprocess.TimeoutExpired) as err:
                log(f"  {part}: failed: {err}")
                result[part] = {"error": str(err)}
    finally:
        bench.cluster.close([bench.lab])
    return result


def _f(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def markdown(result: dict[str, Any], machine: Mapping[str, Any], started: str) -> str:
    n = result["hosts"]
    lines = [f"| multi-host figure ({n} hosts, one vnetd each, one mosquitto) | value |",
             "|---|---|",
             f"| all {n} vnetds see each other online (cluster start) | "
             f"{_f(result.get('cluster_build_s', float('nan')), 0)} s |",
             f"| first `vnet up` of the lab ({n} nodes, one per host) | "
             f"{_f(result.get('first_up_s', float('nan')), 1)} s |"]
    reach = result.get("reach", {})
    if "from_publish_s" in reach:
        p, b, u = reach["from_publish_s"], reach["from_netns_s"], reach["up_s"]
        lines += [f"| new node reachable from every other host, from `vnet up` "
                  f"({reach['samples']} probes) | p50 {_f(p['p50'])} s, p99 {_f(p['p99'])} s |",
                  f"| the same, from the node's namespace appearing | p50 {_f(b['p50'])} s, "
                  f"p99 {_f(b['p99'])} s |",
                  f"| `vnet up` adding one node (returns when all hosts realised it) | "
                  f"p50 {_f(u['p50'])} s, max {_f(u['max'])} s |"]
        if reach["unreached"]:
            lines.append(f"| never reached | {', '.join(reach['unreached'])} |")
    macs = result.get("macs", {})
    if "converge_s" in macs:
        c, w = macs["converge_s"], macs["withdraw_s"]
        late = (f"; **{len(macs['late'])} hosts not within {macs['timeout_s']:.0f} s**: "
                f"{', '.join(macs['late'])}" if macs["late"] else "")
        late_w = (f"; **not within {macs['timeout_s']:.0f} s: "
                  f"{', '.join(macs['late_withdraw'])}**" if macs["late_withdraw"] else "")
        lines += [f"| {macs['macs']} MACs advertised (one snapshot, {-(-macs['macs'] // 1024)} "
                  f"retained parts): in every host's overlay | {_f(c['max'])} s (median host "
                  f"{_f(c['p50'])} s; publishing took {_f(macs['publish_s'])} s{late}) |",
                  f"| the same MACs withdrawn everywhere after their host's clean stop | "
                  f"{_f(w['max'])} s (median host {_f(w['p50'])} s{late_w}) |"]
    steady = result.get("steady", {})
    if "per_host_per_s" in steady:
        lines += [f"| control messages per host in steady state ({steady['window_s']:.0f} s "
                  f"window) | median {_f(steady['per_host_per_s']['p50'], 3)} msg/s "
                  f"(max {_f(steady['per_host_per_s']['max'], 3)}; all hosts "
                  f"{_f(steady['total_per_s'])} msg/s; {steady['by_kind']}) |"]
    overlay = result.get("overlay", {})
    if "vnet" in overlay and "bridge" in overlay:
        lines += ["", "| overlay h1 → h2 (same run, same underlay) | vnet (vnetd's vxlan "
                  "ports, CPython datapath) | Linux bridge + kernel vxlan | ratio |",
                  "|---|---|---|---|"]
        for key, label, scale, unit in (("tcp_1_gbps", "TCP, 1 stream", 1.0, "Gbit/s"),
                                        ("tcp_4_gbps", "TCP, 4 streams", 1.0, "Gbit/s"),
                                        ("frames_delivered_fps", "64 B frames delivered",
                                         1e3, "k/s")):
            v, r = overlay["vnet"].get(key), overlay["bridge"].get(key)
            if v is None or r is None:
                continue
            ratio = v["median"] / r["median"] if r["median"] else float("nan")
            lines.append(f"| {label} | {_f(v['median'] / scale, 2)} {unit} | "
                         f"{_f(r['median'] / scale, 2)} {unit} | x{_f(ratio)} |")
    for part in PARTS:
        if "error" in result.get(part, {}):
            lines.append(f"\n{part}: failed: {result[part]['error']}")
    lines += ["", f"Machine: {machine['cpu']}, {machine['cores']} cores, "
              f"{machine['memory_gib']} GiB, kernel {machine['kernel']}; {started}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        probe(sys.argv[2], float(sys.argv[3]))
        sys.exit(0)
    print("usage: vnet bench --measure multihost [--hosts N]", file=sys.stderr)
    sys.exit(2)
