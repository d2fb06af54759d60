"""The adapter's pure parts: broker URLs, plain-words errors, drop counting, own-subtree."""

from __future__ import annotations

import asyncio
import logging

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from vnet.bus.client import BusClient, BusConfig, BusConfigError, BusStats, parse_broker_url
from vnet.bus.errors import BusError
from vnet.bus.messages import Cleared, DesiredLab, LabDeleted, Status
from vnet.bus.topics import DesiredTopic, SnapshotTopic
from vnet.topology import parse_topology

LAB = parse_topology("""
name: lab1
hosts: {h1: {address: 10.0.0.1}}
bus: {broker: "mqtt://10.0.0.9"}
networks: {office: {vlan: 10}}
nodes:
  c1: {kind: netns, host: h1, nics: [{name: eth0, network: office}]}
""")


@pytest.mark.parametrize("url, endpoint", [
    ("mqtt://10.0.0.9", ("10.0.0.9", 1883, False)),
    ("mqtts://broker.example.org", ("broker.example.org", 8883, True)),
    ("mqtt://[fd00::9]:1884", ("fd00::9", 1884, False)),
])
def test_broker_urls(url, endpoint):
    assert parse_broker_url(url) == endpoint


@pytest.mark.parametrize("url, words", [
    ("http://x", "expected mqtt://"),
    ("mqtt://", "expected mqtt://"),
    ("mqtt://x:99999", "bad broker URL"),
    ("mqtt://user:pw@x", "credentials go in the bus configuration"),
    ("mqtt://x/topic", "only scheme, host and port"),
])
def test_bad_broker_urls(url, words):
    with pytest.raises(BusConfigError, match=words):
        parse_broker_url(url)


def client() -> BusClient:
    return BusClient(BusConfig("mqtt://10.0.0.9:1883"), "h1")


@pytest.mark.parametrize("error, words", [
    (aiomqtt.MqttCodeError(ReasonCode(PacketTypes.CONNACK, identifier=135)),
     "refused user 'h1' (not authorised)"),
    (aiomqtt.MqttCodeError(5), "refused user 'h1'"),
    (aiomqtt.MqttError("[Errno 111] Connection refused"), "connection refused (is mosquitto"),
    (aiomqtt.MqttError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
                       "unable to get local issuer certificate (_ssl.c:1006)"),
     "does not trust (unable to get local issuer certificate)"),
    (TimeoutError(), "did not answer in time"),
    (aiomqtt.MqttError("Disconnected during message iteration"), "lost the broker at"),
])
def test_errors_are_explained_without_codes_or_errno(error, words):
    text = client()._explain(error)
    assert words in text
    assert "10.0.0.9:1883" in text
    assert "Errno" not in text and "[code" not in text and "_ssl.c" not in text


def test_drops_are_counted_by_kind_and_logged_once_per_kind(caplog):
    stats = BusStats()
    with caplog.at_level(logging.WARNING, logger="vnet.bus"):
        for _ in range(3):
            stats.drop(BusError("malformed", "x"))
        stats.drop(BusError("wrong-address", "y"))
    assert stats.dropped == {"malformed": 3, "wrong-address": 1}
    assert len(caplog.records) == 2
    assert stats.as_dict()["dropped"] == {"malformed": 3, "wrong-address": 1}


def test_a_host_publishes_only_its_own_messages():
    async def scenario() -> None:
        bus = client()
        with pytest.raises(ValueError, match="cannot publish a message of host 'h2'"):
            await bus.publish(Status("h2", "online", 1))
        with pytest.raises(ValueError, match="'h2'"):
            await bus.publish(Cleared(SnapshotTopic("h2", "lab1", 0)))
        # not connected: refused quietly, counted, and remembered for the next connection
        assert not await bus.publish(Cleared(DesiredTopic("lab1")))
        assert not await bus.publish_status()
        assert bus.stats.publish_failed == 2
        assert bus.stats.state == "connecting" and not bus.connected

    asyncio.run(scenario())


def test_desired_state_is_published_once_never_again_after_a_reconnect():
    """A host re-publishes its own retained state after every reconnect; a lab's desired
    state it published for a vnet up is not its own: re-publishing it could put an older
    generation back over one another host published meanwhile."""
    async def scenario() -> None:
        bus = client()
        await bus.publish(DesiredLab("lab1", 3, LAB))
        await bus.publish(LabDeleted("lab1", 4))
        await bus.publish(Cleared(DesiredTopic("lab1")))
        await bus.publish(Cleared(SnapshotTopic("h1", "lab1", 0)))
        assert list(bus._retained) == ["vnet/v1/hosts/h1/macs/lab1/snapshot/0"]

    asyncio.run(scenario())


def test_bad_host_names_and_password_files_are_config_errors(tmp_path):
    with pytest.raises(ValueError, match="bad host name"):
        BusClient(BusConfig("mqtt://x"), "h/1")
    bus = BusClient(BusConfig("mqtt://x", password_file=str(tmp_path / "missing")), "h1")
    with pytest.raises(BusConfigError, match="cannot read the bus password file"):
        bus._password()
    (tmp_path / "pw").write_text("s3cret\n")
    assert BusClient(BusConfig("mqtt://x", password_file=str(tmp_path / "pw")),
                     "h1")._password() == "s3cret"

