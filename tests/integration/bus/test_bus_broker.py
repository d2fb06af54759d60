"""The bus against a real mosquitto 2.0.11: Will and epochs, clean stop, credentials, the
ACL, a large retained snapshot through mosquitto's default queue, reconnecting."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from tests.conftest import needs_root
from tests.integration.bus.conftest import (
    USERS,
    Observer,
    config,
    kill,
    observe,
    start_victim,
)
from vnet.bus.advertise import Advertiser
from vnet.bus.client import BusConfig, Disconnected, open_bus
from vnet.bus.messages import LabDeleted, LabRealised, MacEntry, SnapshotPart, Status
from vnet.testing import wait_until
from vnet.testing.broker import Broker

pytestmark = needs_root


def test_a_killed_host_is_seen_lost_by_its_will_with_its_epoch(broker: Broker) -> None:
    victim = start_victim(broker, "h2")
    try:
        async def scenario() -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
            h1 = await observe(broker)
            try:
                await h1.until(lambda: (h1.peer_state("h2") or ("",))[0] == "online",
                               "h2 online")
                online = h1.peer_state("h2")
                kill(victim)                                       # kill -9: no DISCONNECT
                await h1.until(lambda: (h1.peer_state("h2") or ("",))[0] == "lost",
                               "h2's Will")
                return online, h1.peer_state("h2")
            finally:
                await h1.bus.stop()

        online, lost = broker.run(scenario)
    finally:
        kill(victim)
    assert online is not None and lost == ("lost", online[1])


def test_a_new_process_taking_over_a_wedged_hosts_session_wins_by_epoch(broker: Broker) -> None:
    """A hung vnetd (SIGSTOP) and a new one for the same host: the broker closes the old
    connection and publishes its Will; whatever the order, the newer epoch's online stands."""
    victim = start_victim(broker, "h2")
    try:
        async def scenario() -> tuple[int, tuple[str, int] | None, int]:
            h1 = await observe(broker)
            try:
                await h1.until(lambda: (h1.peer_state("h2") or ("",))[0] == "online",
                               "h2 online")
                old = h1.peer_state("h2")
                assert old is not None
                os.kill(victim.pid, signal.SIGSTOP)
                async with open_bus(config(broker, "h2"), "h2") as h2:
                    await h2.publish_status()
                    await h1.until(lambda: (h1.peer_state("h2") or ("", 0))[1] > old[1],
                                   "the new h2")
                    # the old connection's Will (its epoch) has come and gone by the time the
                    # new connection's status arrives (mosquitto sends it first), or is stale
                    await h1.until(lambda: any(isinstance(e.message, Status)
                                               and e.message.state == "lost"
                                               for e in h1.received()), "the old Will")
                    return old[1], h1.peer_state("h2"), h2.epoch
            finally:
                await h1.bus.stop()

        old_epoch, state, new_epoch = broker.run(scenario)
    finally:
        kill(victim)
    assert state == ("online", new_epoch) and new_epoch > old_epoch


def test_a_stale_retained_online_restored_by_a_broker_restart_expires() -> None:
    """mosquitto 2.0.11: when broker and host die together, the host's retained online
    survives the broker's restart and no Will ever comes; its lease runs out."""
    with Broker(USERS, persistence=True) as broker:
        victim = start_victim(broker, "h2", lease=2.0)
        try:
            async def first() -> tuple[float, int]:
                h1 = await observe(broker)
                try:
                    await h1.until(lambda: (h1.peer_state("h2") or ("",))[0] == "online",
                                   "h2 online")
                    state = h1.peer_state("h2")
                    assert state is not None
                    return time.time(), state[1]
                finally:
                    await h1.bus.stop()

            seen, epoch = broker.run(first)
            database = broker.workdir / "mosquitto.db"
            wait_until(lambda: database.exists() and database.stat().st_mtime > seen, 15,
                       "mosquitto to save its state")
            broker.stop(kill=True)                  # both die: no Will is ever published
            kill(victim)
            broker.start()
        finally:
            kill(victim)

        async def after() -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
            h3 = await observe(broker, "h3")
            try:
                await h3.until(lambda: (h3.peer_state("h2") or ("",))[0] == "online",
                               "the restored retained online")
                restored = h3.peer_state("h2")
                await h3.until(lambda: (h3.peer_state("h2") or ("",))[0] == "expired",
                               "its lease to run out", timeout=10)
                return restored, h3.peer_state("h2")
            finally:
                await h3.bus.stop()

        restored, final = broker.run(after)
    assert restored == ("online", epoch)          # the stale one, from before the crash
    assert final == ("expired", epoch)


def test_a_clean_stop_is_offline_and_no_will_follows(broker: Broker) -> None:
    async def scenario() -> list[str]:
        h1 = await observe(broker)
        try:
            async with open_bus(config(broker, "h2"), "h2") as h2:
                await h2.publish_status({"lab1": LabRealised(4)})
                await h1.until(lambda: h1.peer_state("h2") is not None, "h2's status")
                peer = h1.view.peers.get("h2")
                assert peer is not None and peer.labs == {"lab1": LabRealised(4)}
            await h1.until(lambda: (h1.peer_state("h2") or ("",))[0] == "offline",
                           "h2 offline")
            # a marker published after the stop arrives, and no Will came before it
            async with open_bus(config(broker, "h3"), "h3") as h3:
                await h3.publish_status()
                await h1.until(lambda: h1.peer_state("h3") is not None, "h3's status")
            return [e.message.state for e in h1.received()
                    if isinstance(e.message, Status) and e.message.host == "h2"]
        finally:
            await h1.bus.stop()

    states = broker.run(scenario)
    assert states[-1] == "offline" and "lost" not in states


def refused_seen(observer: Observer) -> Callable[[], bool]:
    return lambda: any(isinstance(e, Disconnected) for e in observer.events)


def test_wrong_or_missing_credentials_are_refused_with_a_clear_reason(broker: Broker) -> None:
    async def scenario() -> list[str]:
        reasons = []
        for options in ({"password": "wrong"}, {"username": "nobody", "password": None}):
            bus = open_bus(config(broker, "h2", **options), "h2")
            await bus.start()
            observer = Observer(bus)
            await observer.until(refused_seen(observer), "a refusal")
            assert bus.stats.connects == 0 and not bus.connected
            reasons.append(bus.stats.last_error or "")
            await bus.stop()
        return reasons

    for reason in broker.run(scenario):
        assert "refused user" in reason and "not authorised" in reason, reason
        assert "Errno" not in reason and "[code" not in reason
    anonymous = broker.exec(["mosquitto_sub", "-h", "127.0.0.1", "-t", "vnet/v1/#", "-C", "1",
                             "-W", "5"])
    assert anonymous.returncode != 0 and "not authorised" in anonymous.stderr


def test_the_acl_keeps_a_host_out_of_another_hosts_subtree(broker: Broker) -> None:
    forged = Status("h1", "lost", 2**62, 30.0).to_json()       # h2 pretending to be h1's Will
    forged_mac = json.dumps({"v": 1, "host": "h3", "lab": "lab1", "epoch": 1, "seq": 0,
                             "part": 0, "parts": 1, "macs": []}).encode()

    async def scenario() -> list[str]:
        h3 = await observe(broker, "h3")
        try:
            async with open_bus(config(broker, "h2"), "h2") as h2:
                await h3.until(lambda: h2.connected, "h2 to connect")
                client = h2._client
                assert client is not None
                await client.publish("vnet/v1/hosts/h1/status", forged, qos=1, retain=True)
                await client.publish("vnet/v1/hosts/h3/macs/lab1/snapshot/0", forged_mac,
                                     qos=1, retain=True)
                await client.publish("vnet/v1/labs/lab1/desired", b"{}", qos=1, retain=True)
                await h2.publish_status()                           # its own: allowed
                await h3.until(lambda: h3.peer_state("h2") is not None, "h2's own status")
            return [e.topic for e in h3.received()]
        finally:
            await h3.bus.stop()

    topics = broker.run(scenario)
    assert "vnet/v1/hosts/h2/status" in topics
    assert not any(t.startswith(("vnet/v1/hosts/h1/", "vnet/v1/labs/", "vnet/v1/hosts/h3/mac"))
                   for t in topics), topics
    # nor was anything retained there for a later subscriber
    retained = broker.exec(["mosquitto_sub", "-h", "127.0.0.1", "-u", "h3", "-P", USERS["h3"],
                            "-t", "vnet/v1/#", "-v", "--retained-only", "-W", "2"])
    assert "hosts/h1/status" not in retained.stdout and "labs/lab1" not in retained.stdout


def test_a_publish_the_acl_denies_is_reported_refused_at_once(broker: Broker) -> None:
    """mosquitto answers an ACL-denied QoS 1 publish with PUBACK reason 135; aiomqtt alone
    would call it confirmed.  No host of this broker may write desired state."""
    async def scenario() -> tuple[bool, float, Any, bool, dict[str, Any]]:
        async with open_bus(config(broker, "h2"), "h2") as h2:
            observer = Observer(h2)
            await observer.until(lambda: h2.connected, "h2 to connect")
            started = time.monotonic()
            denied = await h2.publish(LabDeleted("lab1", 3))
            took = time.monotonic() - started
            allowed = await h2.publish_status()
            return denied, took, h2.stats.last_refusal, allowed, h2.stats.as_dict()

    denied, took, refusal, allowed, stats = broker.run(scenario)
    print(f"\nrefused publish reported after {took * 1000:.1f} ms: {refusal}")
    assert denied is False and allowed is True
    assert refusal is not None and refusal.code == 135
    assert refusal.topic == "vnet/v1/labs/lab1/desired"
    assert refusal.reason == "Not authorized"
    assert took < 5.0                       # the PUBACK, not the 10 s publish timeout
    assert stats["refused"] == 1 and stats["state"] == "connected"


def test_a_fresh_host_gets_a_2000_mac_snapshot_through_mosquittos_default_queue() -> None:
    """mosquitto's default max_queued_messages (1000) drops per-MAC retained topics beyond
    it; batched snapshots are 2 retained messages for 2,000 MACs."""
    macs = [MacEntry("office", f"02:00:00:01:{i // 256:02x}:{i % 256:02x}", i % 3)
            for i in range(2000)]
    with Broker(USERS, max_queued=None) as broker:
        async def scenario() -> tuple[int, int]:
            async with open_bus(config(broker, "h2"), "h2") as h2:
                await h2.publish_status()
                advertiser = Advertiser("h2")
                observer = Observer(h2)
                await observer.until(lambda: h2.connected, "h2 to connect")
                parts = advertiser.snapshot("lab1", macs, h2.epoch, now=0)
                for part in parts:
                    assert await h2.publish(part)
                h1 = await observe(broker)                # subscribes after the fact
                try:
                    await h1.until(lambda: len(h1.view.location.remote_fdb("lab1")) == 2000,
                                   "all 2000 MACs")
                    got = [e for e in h1.received() if isinstance(e.message, SnapshotPart)]
                    return len(h1.view.location.remote_fdb("lab1")), len(got)
                finally:
                    await h1.bus.stop()

        entries, messages = broker.run(scenario)
    assert (entries, messages) == (2000, 2)


def test_after_a_broker_restart_a_host_reconnects_with_a_new_epoch(broker: Broker) -> None:
    async def scenario() -> tuple[int, int, int]:
        h1 = await observe(broker)
        try:
            async with open_bus(config(broker, "h2"), "h2") as h2:
                await h2.publish_status()
                await Observer(h2).until(lambda: h2.connected, "h2 to connect")
                part = SnapshotPart("h2", "lab1", h2.epoch, 0, 0, 1,
                                    (MacEntry("office", "02:00:00:00:00:22"),))
                assert await h2.publish(part)
                await h1.until(lambda: bool(h1.view.location.remote_fdb("lab1")), "h2's MAC")
                first = h2.epoch
                await asyncio.get_running_loop().run_in_executor(None, broker.restart)
                # persistence is off: everything retained is gone; h2 re-publishes its status
                # and its snapshot with a new epoch, and h1 (reconnected) sees them again
                await h1.until(lambda: (h1.peer_state("h2") or ("", 0))[1] > first,
                               "h2 online with a new epoch")
                await h1.until(lambda: bool(h1.view.location.remote_fdb("lab1")),
                               "h2's MAC again")
                return first, h2.epoch, h2.stats.connects
        finally:
            await h1.bus.stop()

    first, second, connects = broker.run(scenario)
    assert second > first and connects == 2


def test_tls_with_a_client_certificate_whose_cn_is_the_username() -> None:
    with Broker(USERS, tls_clients=["h2", "h3"]) as broker:
        assert broker.tls is not None
        tls = broker.tls

        def over_tls(host: str, cert: str, **options: Any) -> BusConfig:
            settings: dict[str, Any] = {"ca_file": tls["cafile"], **options}
            return replace(config(broker, host, password=None), broker=broker.tls_url,
                           cert_file=tls[f"{cert}.crt"], key_file=tls[f"{cert}.key"],
                           **settings)

        async def scenario() -> tuple[list[str], str | None]:
            h1 = await observe(broker)
            try:
                async with open_bus(over_tls("h2", "h2"), "h2") as h2:
                    await h2.publish_status()
                    await h1.until(lambda: h1.peer_state("h2") is not None, "h2 over TLS")
                await h1.until(lambda: (h1.peer_state("h2") or ("",))[0] == "offline",
                               "h2 offline")
                # h3's certificate cannot write under hosts/h2 (its CN is the ACL's %u):
                # the forged status never arrives, h3's own status (the marker) does
                async with open_bus(over_tls("h2", "h3"), "h2") as forger:
                    await Observer(forger).until(lambda: forger.connected, "the forger")
                    assert not await forger.publish_status()      # PUBACK 135, at once
                    refusal = forger.stats.last_refusal
                    assert refusal is not None and refusal.code == 135, refusal
                    client = forger._client
                    assert client is not None
                    await client.publish("vnet/v1/hosts/h3/status",
                                         Status("h3", "online", 1, 30.0).to_json(), qos=1)
                    await h1.until(lambda: h1.peer_state("h3") is not None, "the marker")
                async with open_bus(over_tls("h2", "h2", ca_file=tls["h3.crt"]),
                                    "h2") as untrusting:
                    watcher = Observer(untrusting)
                    await watcher.until(refused_seen(watcher), "refusing the broker's cert")
                    reason = untrusting.stats.last_error
                h2_states: list[str] = [e.message.state for e in h1.received()
                             if isinstance(e.message, Status) and e.message.host == "h2"]
                return h2_states, reason
            finally:
                await h1.bus.stop()

        states, reason = broker.run(scenario)
    assert states[-1] == "offline" and states.count("online") >= 1
    assert states.index("offline") == len(states) - 1     # nothing from the forger after it
    assert reason is not None and "does not trust" in reason and "_ssl.c" not in reason, reason
