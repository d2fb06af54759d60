"""The bus service's logic with a fake bus, a fake reconcile and a recording overlay (no
root, no broker): what a desired message, a tombstone, a liveness change or a vnet up does."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from textwrap import dedent
from typing import Any

import pytest

from tests.unit.test_overlay_sync import BlockingOverlay
from vnet.bus.client import BusEvent, BusStats, Connected, Disconnected, Received, Refusal
from vnet.bus.messages import (
    Delta,
    DesiredLab,
    LabDeleted,
    LabRealised,
    Message,
    SnapshotPart,
    Status,
    is_desired_state,
)
from vnet.bus.view import BusView
from vnet.daemon.bus_overlay import live_overlay, static_overlay_plan
from vnet.daemon.bus_service import BusService
from vnet.errors import DaemonError, HostError
from vnet.topology import Topology, parse_topology

GRACE = 0.05   # s a Will waits before it counts (vnet.bus.liveness)
C1, C2, C3 = "02:00:00:00:01:01", "02:00:00:00:02:01", "02:00:00:00:03:01"
LAB = parse_topology(dedent(f"""
    name: lab1
    hosts: {{h1: {{address: 10.0.0.1}}, h2: {{address: 10.0.0.2}}, h3: {{address: 10.0.0.3}}}}
    bus: {{broker: "mqtt://10.0.0.9"}}
    networks: {{office: {{vlan: 10}}}}
    nodes:
      c1: {{kind: netns, host: h1, nics: [{{name: eth0, network: office, mac: "{C1}"}}]}}
      c2: {{kind: netns, host: h2, nics: [{{name: eth0, network: office, mac: "{C2}",
                                           ip: 10.1.0.2/24}}]}}
      c3: {{kind: netns, host: h3, nics: [{{name: eth0, network: office, mac: "{C3}"}}]}}
"""))
ELSEWHERE = parse_topology(dedent("""
    name: lab2
    hosts: {h2: {address: 10.0.0.2}, h3: {address: 10.0.0.3}}
    bus: {broker: "mqtt://10.0.0.9"}
    networks: {office: {vlan: 10}}
    nodes:
      c2: {kind: netns, host: h2, nics: [{name: eth0, network: office}]}
"""))

ELSEWHERE_TOO = parse_topology(dedent("""
    name: lab3
    hosts: {h1: {address: 10.0.0.1}, h4: {address: 10.0.0.4}}
    bus: {broker: "mqtt://10.0.0.9"}
    networks: {office: {vlan: 10}}
    nodes:
      c4: {kind: netns, host: h4, nics: [{name: eth0, network: office}]}
"""))


class FakeBus:
    """The client's interface over a queue: the test delivers events; desired state that
    the service publishes comes back to it, as from a broker (unless ``echo`` is off)."""

    def __init__(self, echo: bool = True) -> None:
        self.stats = BusStats()
        self.epoch = 0
        self.connected = False
        self.echo = echo
        self.published: list[Message] = []
        self.statuses: list[dict[str, LabRealised]] = []
        self.stopped = False
        self.fail_next: BaseException | None = None
        self.refuse: Refusal | None = None
        self._events: asyncio.Queue[BusEvent | None] = asyncio.Queue()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True
        self._events.put_nowait(None)

    async def publish_status(self, labs: Mapping[str, LabRealised] | None = None) -> bool:
        self.statuses.append(dict(labs or {}))
        return self.connected

    async def publish(self, message: Message) -> bool:
        if self.refuse is not None:
            self.stats.refuse(self.refuse)
            return False
        self.published.append(message)
        if self.echo and is_desired_state(message):
            self.deliver(message)
        return self.connected

    def connect(self, epoch: int = 7) -> None:
        self.epoch, self.connected = epoch, True
        self._events.put_nowait(Connected(epoch, time.monotonic()))

    def deliver(self, message: Message) -> None:
        self._events.put_nowait(Received(message, "-", time.monotonic()))

    def __aiter__(self) -> FakeBus:
        return self

    async def __anext__(self) -> BusEvent:
        event = await self._events.get()
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        if event is None:
            raise StopAsyncIteration
        return event


class FakeRealiser:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.error: BaseException | None = None

    async def realise_part(self, topology: Topology) -> None:
        self.calls.append(("up", topology.name))
        if self.error is not None:
            raise self.error

    async def remove_part(self, lab: str) -> bool:
        self.calls.append(("down", lab))
        return True


class RecordingOverlay:
    def __init__(self) -> None:
        self.peers: dict[tuple[str, str], set[str]] = {}
        self.macs: dict[tuple[str, str], dict[str, tuple[str, str | None]]] = {}

    async def set_flood_peers(self, lab: str, network: str, peers: Collection[str]) -> None:
        self.peers[(lab, network)] = set(peers)

    async def set_remote_macs(self, lab: str, network: str,
                              macs: Mapping[str, tuple[str, str | None]]) -> None:
        self.macs[(lab, network)] = dict(macs)


async def until(condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


class Harness:
    def __init__(self, echo: bool = True, overlay: Any = None, **options: Any) -> None:
        self.buses: list[FakeBus] = []
        self.echo = echo
        self.realiser = FakeRealiser()
        self.overlay = overlay if overlay is not None else RecordingOverlay()
        self.service = BusService("h1", self.connect, self.realiser, self.overlay,
                                  backoff=(0.001, 0.002), will_grace=GRACE, **options)

    def connect(self) -> FakeBus:
        bus = FakeBus(self.echo)
        self.buses.append(bus)
        bus.connect()
        return bus

    @property
    def bus(self) -> FakeBus:
        return self.buses[-1]

    async def settle(self) -> None:
        """Until every delivered event is handled and the worker is idle."""
        await until(lambda: self.buses and self.bus._events.empty()
                    and not self.service._pending and self.service.overlay_sync.idle,
                    "the service to settle")
        for _ in range(20):
            await asyncio.sleep(0)


def run(scenario: Callable[[Harness], Any], echo: bool = True, overlay: Any = None,
        **options: Any) -> None:
    async def main() -> None:
        harness = Harness(echo, overlay, **options)
        await harness.service.start()
        try:
            await until(lambda: harness.buses, "a connection")
            await scenario(harness)
        finally:
            await harness.service.stop()
    asyncio.run(main())


def online(host: str, epoch: int = 3, **labs: LabRealised) -> Status:
    return Status(host, "online", epoch, 30.0, None, labs)


# -- desired state in, status out -------------------------------------------------------------

def test_a_desired_message_triggers_one_reconcile_and_a_status_with_its_generation():
    async def scenario(h: Harness) -> None:
        h.bus.deliver(DesiredLab("lab1", 4, LAB))
        await h.settle()
        assert h.realiser.calls == [("up", "lab1")]
        assert h.bus.statuses[-1] == {"lab1": LabRealised(4)}
        assert h.service.reconciles == 1
    run(scenario)


def test_a_repeated_or_older_generation_does_nothing():
    async def scenario(h: Harness) -> None:
        h.bus.deliver(DesiredLab("lab1", 4, LAB))
        await h.settle()
        statuses = len(h.bus.statuses)
        h.bus.deliver(DesiredLab("lab1", 4, LAB))     # a retained repeat
        h.bus.deliver(DesiredLab("lab1", 3, LAB))     # older: stale, counted
        await h.settle()
        assert h.realiser.calls == [("up", "lab1")]
        assert len(h.bus.statuses) == statuses
        assert h.bus.stats.dropped == {"stale": 1}
    run(scenario)


def test_a_reconcile_error_is_reported_in_the_status():
    async def scenario(h: Harness) -> None:
        h.realiser.error = HostError("network office: uplink eth9 does not exist on this host")
        h.bus.deliver(DesiredLab("lab1", 2, LAB))
        await h.settle()
        assert h.bus.statuses[-1] == {"lab1": LabRealised(
            2, "network office: uplink eth9 does not exist on this host")}
        h.realiser.error = TypeError("a bug")              # not a user's error: no repr
        h.bus.deliver(DesiredLab("lab1", 3, LAB))
        await h.settle()
        assert h.bus.statuses[-1] == {"lab1": LabRealised(3, "internal error in vnetd (see "
                                                             "its log)")}
    run(scenario)


def test_a_tombstone_takes_the_part_down_and_the_lab_leaves_the_status():
    async def scenario(h: Harness) -> None:
        h.bus.deliver(DesiredLab("lab1", 2, LAB))
        await h.settle()
        h.bus.deliver(LabDeleted("lab1", 3))
        await h.settle()
        assert h.realiser.calls == [("up", "lab1"), ("down", "lab1")]
        assert h.bus.statuses[-1] == {}
    run(scenario)


def test_a_lab_of_other_hosts_is_not_realised_here():
    async def scenario(h: Harness) -> None:
        h.bus.deliver(DesiredLab("lab2", 1, ELSEWHERE))
        await h.settle()
        assert ("up", "lab2") not in h.realiser.calls
        assert "lab2" not in h.bus.statuses[-1]
    run(scenario)


def test_the_local_node_macs_are_advertised_after_realising():
    async def scenario(h: Harness) -> None:
        h.bus.deliver(DesiredLab("lab1", 1, LAB))
        await h.settle()
        await until(lambda: any(p.macs for p in h.bus.published
                                if isinstance(p, SnapshotPart)), "a snapshot with c1's MAC")
        parts = [m for m in h.bus.published if isinstance(m, SnapshotPart) and m.macs]
        assert {(e.network, e.mac) for e in parts[-1].macs} == {("office", C1)}
        assert parts[-1].epoch == 7
    run(scenario)


# -- liveness -> overlay ----------------------------------------------------------------------

def test_a_lost_host_leaves_the_flood_peers_and_its_macs_go():
    async def scenario(h: Harness) -> None:
        h.bus.deliver(online("h2"))
        h.bus.deliver(online("h3"))
        h.bus.deliver(DesiredLab("lab1", 1, LAB))
        await h.settle()
        key = ("lab1", "office")
        assert h.overlay.peers[key] == {"10.0.0.2", "10.0.0.3"}
        assert h.overlay.macs[key] == {C2: ("10.0.0.2", "10.1.0.2"), C3: ("10.0.0.3", None)}
        h.bus.deliver(Status("h3", "lost", 3))
        await h.settle()
        assert h.overlay.peers[key] == {"10.0.0.2", "10.0.0.3"}  # the Will's grace
        await until(lambda: h.overlay.peers[key] == {"10.0.0.2"}, "h3 withdrawn")
        assert h.overlay.macs[key] == {C2: ("10.0.0.2", "10.1.0.2")}
        h.bus.deliver(online("h3", epoch=4))                     # back, new epoch
        await h.settle()
        assert h.overlay.peers[key] == {"10.0.0.2", "10.0.0.3"}
    run(scenario)


def test_wills_just_before_our_own_disconnect_withdraw_nothing():
    """mosquitto sends every client's Will when it shuts down, then closes the connections:
    those Wills say nothing about the hosts; nor do they when they come back retained."""
    async def scenario(h: Harness) -> None:
        h.bus.deliver(online("h2"))
        h.bus.deliver(online("h3"))
        h.bus.deliver(DesiredLab("lab1", 1, LAB))
        await h.settle()
        key = ("lab1", "office")
        assert h.overlay.peers[key] == {"10.0.0.2", "10.0.0.3"}
        h.bus.deliver(Status("h2", "lost", 3))
        h.bus.deliver(Status("h3", "lost", 3))
        h.bus.connected = False
        h.bus._events.put_nowait(Disconnected("the broker closed the connection",
                                              time.monotonic()))
        await h.settle()
        await asyncio.sleep(GRACE * 4)
        h.bus.connect(epoch=8)
        h.bus._events.put_nowait(Received(Status("h2", "lost", 3), "-", time.monotonic(),
                                          retained=True))
        await h.settle()
        await asyncio.sleep(GRACE * 4)
        assert h.overlay.peers[key] == {"10.0.0.2", "10.0.0.3"}
        assert h.overlay.macs[key] == {C2: ("10.0.0.2", "10.1.0.2"), C3: ("10.0.0.3", None)}
        assert {p.host: p.state for p in h.service.view.peers} == {"h2": "online",
                                                                  "h3": "online"}
        h.bus.deliver(Status("h3", "lost", 3))                   # while connected: it counts
        await until(lambda: h.overlay.peers[key] == {"10.0.0.2"}, "h3 withdrawn")
    run(scenario)


def test_a_will_held_back_is_void_once_the_connection_is_gone_before_its_event():
    async def scenario(h: Harness) -> None:
        h.bus.deliver(online("h2"))
        h.bus.deliver(DesiredLab("lab1", 1, LAB))
        await h.settle()
        key = ("lab1", "office")
        h.bus.deliver(Status("h2", "lost", 3))
        await h.settle()
        h.bus.connected = False              # dropped; its Disconnected not handled yet
        await asyncio.sleep(GRACE * 4)
        assert h.overlay.peers[key] == {"10.0.0.2", "10.0.0.3"}
    run(scenario)


def test_overlay_updates_of_a_network_never_overlap_and_the_latest_wins(monkeypatch):
    """The session, the ticker and the worker all ask for overlay updates; while one call
    of a network is in the driver no other starts (they would fight over the same FDB
    entries), and what ends up applied is the latest state."""
    ticks: list[float] = []
    tick = BusView.tick

    def counting_tick(view: BusView, now: float) -> Any:
        ticks.append(now)
        return tick(view, now)

    monkeypatch.setattr(BusView, "tick", counting_tick)
    overlay = BlockingOverlay()
    key = ("lab1", "office")

    async def scenario(h: Harness) -> None:
        overlay.gate.clear()
        h.bus.deliver(online("h2"))
        h.bus.deliver(online("h3"))
        h.bus.deliver(DesiredLab("lab1", 1, LAB))
        await until(lambda: overlay.calls, "the first overlay call")
        h.bus.deliver(Status("h3", "lost", 3))         # the wanted state moves on meanwhile
        seen = len(ticks)
        await until(lambda: len(ticks) >= seen + 2 or overlay.most_inside[key] > 1,
                    "two ticks of the ticker while the call blocks", timeout=10)
        assert overlay.most_inside[key] == 1 and len(overlay.calls) == 1
        overlay.gate.set()
        await until(lambda: overlay.peers.get(key) == frozenset({"10.0.0.2"})
                    and overlay.macs.get(key) == {C2: ("10.0.0.2", "10.1.0.2")},
                    "the latest state applied")
        await h.settle()
        assert overlay.most_inside[key] == 1
        assert len(overlay.calls) <= 4                  # not one per tick or event
        assert h.service.describe()["overlay"]["lab1/office"] == {
            "flood_peers": ["10.0.0.2"], "remote_macs": 1}
    run(scenario, overlay=overlay)


def test_live_overlay_adds_learned_macs_of_alive_hosts_only():
    plan = static_overlay_plan(LAB, "h1")
    learned = {("office", "02:aa:00:00:00:01"): "h2", ("office", "02:aa:00:00:00:02"): "h3"}
    live = live_overlay(LAB, plan, ["h1", "h2"], learned)["office"]
    assert live.peers == {"10.0.0.2"}
    assert dict(live.macs) == {C2: ("10.0.0.2", "10.1.0.2"),
                               "02:aa:00:00:00:01": ("10.0.0.2", None)}


# -- vnet up / down through the bus -----------------------------------------------------------

def test_up_publishes_the_next_generation_and_waits_for_every_host():
    async def scenario(h: Harness) -> None:
        h.bus.deliver(online("h2", lab1=LabRealised(5)))
        h.bus.deliver(online("h3"))
        await h.settle()
        up = asyncio.create_task(h.service.publish_up(LAB, timeout=10))
        await until(lambda: h.realiser.calls, "h1 to realise")
        published = [m for m in h.bus.published if isinstance(m, DesiredLab)]
        assert [m.generation for m in published] == [6]       # h2 had seen 5
        assert not up.done()
        h.bus.deliver(online("h2", lab1=LabRealised(6)))
        h.bus.deliver(online("h3", lab1=LabRealised(6)))
        answer = await asyncio.wait_for(up, 5)
        assert [(r["host"], r["state"]) for r in answer["hosts"]] == [
            ("h1", "realised"), ("h2", "realised"), ("h3", "realised")]
        down = asyncio.create_task(h.service.publish_down("lab1", timeout=10))
        await until(lambda: ("down", "lab1") in h.realiser.calls, "h1 to take it down")
        h.bus.deliver(online("h2"))
        h.bus.deliver(online("h3"))
        answer = await asyncio.wait_for(down, 5)
        assert [(r["host"], r["state"]) for r in answer["hosts"]] == [
            ("h1", "removed"), ("h2", "removed"), ("h3", "removed")]
        assert LabDeleted("lab1", 7) in h.bus.published
    run(scenario)


def test_up_names_the_hosts_that_failed_were_down_or_did_not_answer():
    async def scenario(h: Harness) -> None:
        h.bus.deliver(online("h2"))
        await h.settle()
        up = asyncio.create_task(h.service.publish_up(LAB, timeout=0.5))
        await until(lambda: h.realiser.calls, "h1 to realise")
        h.bus.deliver(online("h2", lab1=LabRealised(1, "uplink eth9 does not exist")))
        h.bus.deliver(online("h3"))
        h.bus.deliver(Status("h3", "lost", 3))
        with pytest.raises(DaemonError) as err:
            await asyncio.wait_for(up, 5)
        text = str(err.value)
        assert "h2: failed: uplink eth9 does not exist" in text
        assert "h3: down: its vnetd is lost" in text
        assert "h1" not in text.split("\n", 1)[1]
        h.bus.deliver(LabDeleted("lab1", 2))
        await h.settle()
        up = asyncio.create_task(h.service.publish_up(ELSEWHERE_TOO, timeout=0.3))
        with pytest.raises(DaemonError, match="h4: no answer after 0 s: no status from its"):
            await asyncio.wait_for(up, 5)
    run(scenario)


def test_desired_state_the_broker_refuses_is_reported_at_once_with_its_reason():
    async def scenario(h: Harness) -> None:
        h.bus.refuse = Refusal("vnet/v1/labs/lab1/desired", 135, "Not authorized")
        started = time.monotonic()
        with pytest.raises(DaemonError) as err:
            await h.service.publish_up(LAB)
        assert time.monotonic() - started < 1.0          # no wait for an echo
        assert ("the broker refused generation 1 (Not authorized, MQTT reason 135)"
                in str(err.value))
        assert "ACL lets its user 'h1' write ROOT/labs/#" in str(err.value)
        assert h.realiser.calls == []
    run(scenario)


def test_desired_state_the_broker_swallows_is_reported_with_the_acl_advice(monkeypatch):
    monkeypatch.setattr("vnet.daemon.bus_service.ECHO_TIMEOUT", 0.2)

    async def scenario(h: Harness) -> None:
        with pytest.raises(DaemonError, match="ACL lets its user 'h1' write ROOT/labs/#"):
            await h.service.publish_up(LAB)
        assert h.realiser.calls == []
    run(scenario, echo=False)


def test_up_without_a_connection_says_so():
    async def scenario(h: Harness) -> None:
        h.bus.connected = False
        h.bus.stats.last_error = "cannot connect to the broker at 10.0.0.9:1883"
        with pytest.raises(DaemonError, match=r"not connected to the bus \(cannot connect"):
            await h.service.publish_up(LAB)
    run(scenario)


# -- never dies silently --------------------------------------------------------------------

def test_a_bug_in_a_session_is_logged_and_a_new_session_rebuilds_the_state(caplog):
    async def scenario(h: Harness) -> None:
        h.bus.deliver(DesiredLab("lab1", 1, LAB))
        await h.settle()
        first = h.bus
        with caplog.at_level(logging.ERROR, logger="vnet.daemon.bus"):
            first.fail_next = RuntimeError("a bug")
            first.deliver(online("h2"))
            await until(lambda: len(h.buses) == 2, "a new session")
        assert "internal error" in caplog.text and first.stopped
        assert h.service.restarts == 1
        h.bus.deliver(DesiredLab("lab1", 1, LAB))     # the retained state, again
        await h.settle()
        assert h.bus.statuses[-1] == {"lab1": LabRealised(1)}
        assert h.service.view is not None and "lab1" in h.service.view.desired
    run(scenario)


# -- vnetd's API routes multi-host labs through the bus --------------------------------------

class FakeService:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def publish_up(self, topology: Topology) -> dict[str, Any]:
        self.calls.append(("up", topology.name))
        return {"lab": topology.name, "generation": 1, "hosts": []}

    async def publish_down(self, lab: str) -> dict[str, Any]:
        self.calls.append(("down", lab))
        return {"lab": lab, "generation": 2, "hosts": []}

    def knows(self, lab: str) -> bool:
        return lab == "lab1"


def test_vnetd_publishes_a_multi_host_lab_on_its_bus_and_realises_it_alone_without(
        tmp_path, monkeypatch):
    from vnet.daemon.requests import DownRequest, UpRequest
    from vnet.daemon.service import Vnetd

    text = (tmp_path / "lab1.yaml")
    text.write_text(dedent(f"""
        name: lab1
        hosts: {{h1: {{address: 10.0.0.1}}, h2: {{address: 10.0.0.2}}}}
        bus: {{broker: "mqtt://10.0.0.9"}}
        networks: {{office: {{vlan: 10}}}}
        nodes:
          c1: {{kind: netns, host: h1, nics: [{{name: eth0, network: office, mac: "{C1}"}}]}}
    """))
    realised: list[str] = []

    async def realise_part(topology: Topology) -> dict[str, Any]:
        realised.append(topology.name)
        return {"lab": topology.name, "created": 3, "removed": 0, "changed": True}

    async def scenario() -> None:
        daemon = Vnetd(tmp_path / "vnetd.sock", tmp_path, host="h1")
        monkeypatch.setattr(daemon, "realise_part", realise_part)
        request = UpRequest(text.read_text(), str(text))
        answer = await daemon.op_up(request)                   # no bus: this host's part
        assert realised == ["lab1"]
        assert f"run 'vnet up {text}' on h2 too" in answer["note"]
        service = FakeService()
        daemon.bus = service  # type: ignore[assignment]
        assert (await daemon.op_up(request))["generation"] == 1
        assert (await daemon.op_down(DownRequest("lab1")))["generation"] == 2
        assert service.calls == [("up", "lab1"), ("down", "lab1")] and realised == ["lab1"]

    asyncio.run(scenario())


# -- MACs learned on local ports --------------------------------------------------------------

class FakeDatapath:
    """The datapath's fdb op: the rows the test sets (age 0: just seen)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.reads = 0

    async def read_fdb(self, lab: str) -> list[dict[str, Any]]:
        assert lab == "lab1"
        self.reads += 1
        return [dict(r) for r in self.rows]


def fdb_row(mac: str, port: str) -> dict[str, Any]:
    return {"vlan": 10, "mac": mac, "port": port, "age": 0.0, "static": False}


def delta_sets(h: Harness) -> set[str]:
    return {e.mac for m in h.bus.published if isinstance(m, Delta) for e in m.set}


def delta_withdrawals(h: Harness) -> set[str]:
    return {mac for m in h.bus.published if isinstance(m, Delta) for _, mac in m.withdraw}


def test_macs_learned_on_local_ports_are_advertised_and_withdrawn_when_they_go(caplog):
    """A guest's new MAC on its port is advertised; another host's node MAC shown on a local
    port is refused (no hijack); what the switch learned from the vxlan port is the other
    host's and never advertised; the MAC gone from the switch is withdrawn."""
    datapath, new_mac, remote = FakeDatapath(), "02:aa:00:00:00:01", "02:bb:00:00:00:01"

    async def scenario(h: Harness) -> None:
        h.bus.deliver(online("h2"))
        h.bus.deliver(DesiredLab("lab1", 1, LAB))
        await h.settle()
        datapath.rows = [fdb_row(new_mac, "c1.eth0"), fdb_row(C2, "c1.eth0"),
                         fdb_row(C1, "c1.eth0"), fdb_row(remote, "@overlay-office.vxlan")]
        await until(lambda: new_mac in delta_sets(h), "the learned MAC's delta")
        await until(lambda: any(isinstance(m, SnapshotPart) and new_mac in
                                {e.mac for e in m.macs} for m in h.bus.published),
                    "a snapshot with the learned MAC")
        assert delta_sets(h) & {C2, remote} == set()
        assert h.service.describe()["learned"] == {"lab1/office": {
            "advertised": 2, "left_out": 0, "left_out_total": 0, "limit": 1024}}
        datapath.rows = [fdb_row(C1, "c1.eth0")]          # aged out of the switch
        await until(lambda: new_mac in delta_withdrawals(h), "the withdrawal")
        await until(lambda: any(isinstance(m, SnapshotPart) and {e.mac for e in m.macs} ==
                                {C1} for m in h.bus.published[-3:]),
                    "a snapshot with the topology's MAC alone")
        assert C1 not in delta_withdrawals(h)
    with caplog.at_level(logging.WARNING, logger="vnet.daemon.bus"):
        run(scenario, read_fdb=datapath.read_fdb, learn_interval=0.01)
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals == [f"bus: h1 claims MAC {C2} in lab1/office, which the topology places "
                        "on h2; refused"]


def test_a_flood_of_learned_macs_is_bounded_and_counted(caplog):
    datapath = FakeDatapath()
    datapath.rows = [fdb_row(f"02:ff:00:00:{i >> 8:02x}:{i & 0xff:02x}", "c1.eth0")
                     for i in range(500)]   # (a bigger table is read less often)

    async def scenario(h: Harness) -> None:
        h.bus.deliver(DesiredLab("lab1", 1, LAB))
        await h.settle()
        await until(lambda: (h.service.describe()["learned"].get("lab1/office") or {}).get(
            "advertised") == 100, "the bound's worth advertised")
        published, reads = len(h.bus.published), datapath.reads
        await until(lambda: datapath.reads >= reads + 5, "five more polls")
        assert not [m for m in h.bus.published[published:] if isinstance(m, Delta)]
        assert h.service.describe()["learned"]["lab1/office"] == {
            "advertised": 100, "left_out": 400, "left_out_total": 400, "limit": 100}
        assert len(delta_sets(h) - {C1}) == 100
    with caplog.at_level(logging.WARNING, logger="vnet.daemon.bus"):
        run(scenario, read_fdb=datapath.read_fdb, learn_interval=0.01, learned_limit=100)
    assert sum("more than 100 MACs learned" in r.getMessage() for r in caplog.records) == 1


def test_a_new_session_snapshot_has_the_learned_macs_before_any_poll():
    datapath, new_mac = FakeDatapath(), "02:aa:00:00:00:07"
    datapath.rows = [fdb_row(new_mac, "c1.eth0")]

    async def scenario(h: Harness) -> None:
        h.bus.deliver(DesiredLab("lab1", 1, LAB))
        await h.settle()
        await until(lambda: new_mac in delta_sets(h), "the learned MAC's delta")
        h.service._learn_interval = 3600.0      # no poll in the next session
        first = h.bus
        first.fail_next = RuntimeError("a bug")
        first.deliver(online("h2"))
        await until(lambda: len(h.buses) == 2, "a new session")
        assert first.stopped
        h.bus.deliver(DesiredLab("lab1", 1, LAB))     # the retained state, again
        await h.settle()
        await until(lambda: any(isinstance(m, SnapshotPart) and new_mac in
                                {e.mac for e in m.macs} for m in h.bus.published),
                    "the new session's snapshot with the learned MAC")
    run(scenario, read_fdb=datapath.read_fdb, learn_interval=0.01)


def test_the_service_stops_while_the_learner_polls_without_pause():
    """Stopped again and again while the learner reads MAC tables back to back: each stop
    ends.  With Python 3.11's ``asyncio.wait_for`` around the read, a cancellation that
    came as the read completed was swallowed, the learner polled on for ever and the stop
    (vnetd's too) never returned; the loop runs in a thread so that the test fails then
    instead of hanging."""
    async def once() -> None:
        datapath = FakeDatapath()
        datapath.rows = [fdb_row(C1, "c1.eth0")]
        h = Harness(True, None, read_fdb=datapath.read_fdb, learn_interval=0.0)
        await h.service.start()
        await until(lambda: h.buses, "a connection")
        h.bus.deliver(DesiredLab("lab1", 1, LAB))
        await h.settle()
        await until(lambda: datapath.reads > 3, "a few polls")
        await h.service.stop()

    async def many() -> None:
        for _ in range(500):
            await once()

    worker = threading.Thread(target=asyncio.run, args=(many(),), daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "a stop of the bus service never returned"
