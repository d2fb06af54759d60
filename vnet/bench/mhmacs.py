"""Convergence of M MACs: a bus client playing host ``src`` advertises them through the
broker; the time until every vnetd's overlay holds them, and until all withdrew them after
the source's clean stop (see ``vnet.bench.multihost``)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vnet.bench import tally
from vnet.bench.cluster import host_address
from vnet.bench.mhbed import SOURCE, SOURCE_PASSWORD, Bench, Log
from vnet.bench.testbed import BenchError, run
from vnet.bus.client import BusClient, BusConfig, Connected, Received
from vnet.bus.messages import DesiredLab, LabRealised
from vnet.testing.wait import wait_until

CONVERGE_TIMEOUT = 120.0


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
