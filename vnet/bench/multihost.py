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
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from vnet.bench import tally
from vnet.bench.cluster import host_name
from vnet.bench.mhbed import Bench, Log, Settings
from vnet.bench.mhmacs import measure_macs
from vnet.bench.mhoverlay import measure_overlay
from vnet.bench.testbed import BenchError, ns_cmd, run
from vnet.errors import VnetError

__all__ = ["PARTS", "Settings", "markdown", "run_multihost"]

ADMIN, ADMIN_PASSWORD = "vnet-admin", "admin-secret"   # vnet.testing.broker's defaults
PROBE_INTERVAL = 0.01
REACH_TIMEOUT = 90.0
QUIET_BEFORE_COUNTING = 5.0   # s: the advertiser coalesces snapshots for 2 s after a change


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
        run(ns_cmd(bench.node_netns(node), ["sysctl", "-q", "-w",
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
                ns_cmd(bench.node_netns(node), [sys.executable, "-m",
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
                bench.node_netns(new), seen, stop))
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
        if bench.node_netns(new) in seen:
            born = seen[bench.node_netns(new)]
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


# -- the whole run --------------------------------------------------------------------------


PARTS: dict[str, Callable[[Bench, Log], dict[str, Any]]] = {
    "reach": measure_reach, "steady": measure_steady, "macs": measure_macs,
    "overlay": measure_overlay}


def run_multihost(settings: Settings, log: Log, parts: Sequence[str] = tuple(PARTS),
                  step: Callable[[str], AbstractContextManager[Any]] = nullcontext
                  ) -> dict[str, Any]:
    """Build the cluster, bring the lab up, measure ``parts`` (each inside ``step(part)``:
    progress), remove everything."""
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
            with step(part):
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
