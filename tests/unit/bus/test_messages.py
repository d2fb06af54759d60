"""Payloads: round trips, and every way a received payload is refused, by kind."""

from __future__ import annotations

import json
from textwrap import dedent
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vnet.bus.errors import ERROR_KINDS, BusError
from vnet.bus.messages import (
    LIMITS,
    MAX_ENTRIES,
    Cleared,
    Delta,
    DesiredLab,
    LabDeleted,
    LabRealised,
    MacEntry,
    Message,
    Resync,
    SnapshotPart,
    Status,
    decode,
    is_retained,
    topic_of,
)
from vnet.bus.topics import DesiredTopic, SnapshotTopic, StatusTopic, TopicTree
from vnet.topology import parse_topology

TREE = TopicTree()
LAB = parse_topology(dedent("""
    name: lab1
    hosts: {h1: {address: 10.0.0.1}, h2: {address: 10.0.0.2}}
    bus: {broker: "mqtt://10.0.0.9:1883"}
    networks: {office: {vlan: 10}}
    nodes:
      c1: {kind: netns, host: h1, nics: [{name: eth0, network: office}]}
      c2: {kind: netns, host: h2, nics: [{name: eth0, network: office}]}
"""))

MESSAGES: list[Message] = [
    DesiredLab("lab1", 3, LAB),
    Status("h1", "online", 17, 30.0, "10.0.0.1",
           {"lab1": LabRealised(3), "lab2": LabRealised(1, "no such uplink eth9")}),
    Status("h1", "lost", 17),
    SnapshotPart("h1", "lab1", 17, 5, 1, 2,
                 (MacEntry("office", "02:00:00:00:00:01", 0),
                  MacEntry("office", "02:00:00:00:00:02", 7))),
    Delta("h1", "lab1", 17, 6, (MacEntry("office", "02:00:00:00:00:03", 1),),
          (("office", "02:00:00:00:00:01"),)),
    Resync("h2", "h1", "lab1"),
    LabDeleted("lab1", 4),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip_through_topic_and_bytes(message):
    topic = topic_of(TREE, message)
    assert decode(TREE, topic, message.to_json()) == message


def test_retain_per_type():
    assert [is_retained(m) for m in MESSAGES] == [True, True, True, True, False, False, True]


def test_empty_retained_payload_is_a_clear():
    assert decode(TREE, "vnet/v1/labs/lab1/desired", b"") == Cleared(DesiredTopic("lab1"))
    assert decode(TREE, "vnet/v1/hosts/h1/status", b"") == Cleared(StatusTopic("h1"))
    assert (decode(TREE, "vnet/v1/hosts/h1/macs/lab1/snapshot/3", b"")
            == Cleared(SnapshotTopic("h1", "lab1", 3)))
    error = decode(TREE, "vnet/v1/hosts/h1/macs/lab1/delta", b"")
    assert isinstance(error, BusError)
    assert error.kind == "malformed"


def status_doc(**changes: Any) -> dict[str, Any]:
    doc = {"v": 1, "host": "h1", "state": "online", "epoch": 5, "lease": 30, "address": None,
           "labs": {}}
    doc.update(changes)
    return doc


def refused(topic: str, doc_or_bytes: dict[str, Any] | bytes) -> BusError:
    data = doc_or_bytes if isinstance(doc_or_bytes, bytes) else json.dumps(doc_or_bytes).encode()
    result = decode(TREE, topic, data)
    assert isinstance(result, BusError), result
    assert result.kind in ERROR_KINDS
    return result


STATUS = "vnet/v1/hosts/h1/status"


@pytest.mark.parametrize("data, kind, words", [
    (b"{", "malformed", "not JSON"),
    (b"\xff\xfe", "malformed", "not UTF-8"),
    (b"[1, 2]", "malformed", "not a JSON object"),
    (b'{"v": 1, "v": 1}', "malformed", "duplicate key"),
    (b'{"v": 1, "lease": NaN}', "malformed", "not JSON"),
    (b"[" * 600_000, "oversized", "at most"),
    (b"[" * 50_000, "malformed", "not JSON"),
    (b'{"host": "h1"}', "malformed", "schema version"),
    (b'{"v": true}', "malformed", "schema version"),
    (b'{"v": 2, "anything": "new"}', "unknown-version", "version 2"),
])
def test_bytes_that_are_not_a_payload(data, kind, words):
    error = refused(STATUS, data)
    assert (error.kind, words in error.detail) == (kind, True), error


@pytest.mark.parametrize("changes, words", [
    ({"state": "sleeping"}, "state must be one of online, offline, lost"),
    ({"epoch": 0}, "epoch must be an integer"),
    ({"epoch": True}, "epoch must be an integer"),
    ({"epoch": 2**63}, "epoch must be an integer"),
    ({"epoch": 5.0}, "epoch must be an integer"),
    ({"lease": 0.5}, "lease must be a number"),
    ({"lease": "30"}, "lease must be a number"),
    ({"address": "10.0.0.300"}, "not an IP address"),
    ({"address": 167772161}, "must be an IP address or null"),
    ({"labs": {"Lab": {"generation": 1}}}, "bad lab name"),
    ({"labs": {"lab1": {"generation": -1}}}, "generation must be an integer"),
    ({"labs": {"lab1": {"generation": 1, "error": 5}}}, "error must be a string"),
    ({"labs": {"lab1": {"generation": 1, "why": "x"}}}, "unknown key 'why'"),
    ({"labs": {"lab1": 3}}, "not a JSON object"),
    ({"extra": 1}, "unknown key 'extra'"),
    ({"host": "h 1"}, "bad host name"),
])
def test_status_fields_are_checked(changes, words):
    error = refused(STATUS, status_doc(**changes))
    assert error.kind == "malformed"
    assert words in error.detail


def test_missing_key():
    doc = status_doc()
    del doc["lease"]
    assert "missing key 'lease'" in refused(STATUS, doc).detail


def test_a_payload_naming_another_host_is_wrongly_addressed():
    error = refused("vnet/v1/hosts/h1/status", status_doc(host="h2"))
    assert error.kind == "wrong-address"
    assert "'h2'" in error.detail and "'h1'" in error.detail


def snapshot_doc(**changes: Any) -> dict[str, Any]:
    doc = {"v": 1, "host": "h1", "lab": "lab1", "epoch": 5, "seq": 0, "part": 0, "parts": 1,
           "macs": [["office", "02:00:00:00:00:01", 0]]}
    doc.update(changes)
    return doc


SNAP0 = "vnet/v1/hosts/h1/macs/lab1/snapshot/0"


@pytest.mark.parametrize("topic, changes, kind, words", [
    (SNAP0, {"lab": "lab2"}, "wrong-address", "lab2"),
    ("vnet/v1/hosts/h1/macs/lab1/snapshot/1", {}, "wrong-address", "part 0"),
    (SNAP0, {"part": 1, "parts": 1}, "malformed", "part 1 of only 1"),
    (SNAP0, {"macs": [["office", "02:00:00:00:00:01"]]}, "malformed", "[network, mac, seq]"),
    (SNAP0, {"macs": [["office", "02:00:00:00:00:0G", 0]]}, "malformed", "bad MAC"),
    (SNAP0, {"macs": [["office", "02:00:00:00:00:AA", 0]]}, "malformed", "lower-case"),
    (SNAP0, {"macs": [["office", "01:00:5e:00:00:01", 0]]}, "malformed", "group address"),
    (SNAP0, {"macs": [["Office", "02:00:00:00:00:01", 0]]}, "malformed", "bad network"),
    (SNAP0, {"macs": [["office", "02:00:00:00:00:01", 2**32]]}, "malformed", "mobility"),
    (SNAP0, {"macs": [["office", "02:00:00:00:00:01", 0]] * 2}, "malformed", "listed twice"),
    (SNAP0, {"macs": [["office", f"02:00:00:00:{i // 256:02x}:{i % 256:02x}", 0]
                      for i in range(MAX_ENTRIES + 1)]}, "malformed", "at most"),
])
def test_snapshot_checks(topic, changes, kind, words):
    error = refused(topic, snapshot_doc(**changes))
    assert (error.kind, words in error.detail) == (kind, True), error


def test_delta_checks():
    topic = "vnet/v1/hosts/h1/macs/lab1/delta"
    base = {"v": 1, "host": "h1", "lab": "lab1", "epoch": 5, "seq": 1, "set": [],
            "withdraw": []}
    both = dict(base, set=[["office", "02:00:00:00:00:01", 0]],
                withdraw=[["office", "02:00:00:00:00:01"]])
    assert "both set and withdrawn" in refused(topic, both).detail
    assert "seq must be" in refused(topic, dict(base, seq=0)).detail
    assert refused(topic, dict(base, host="h2")).kind == "wrong-address"


def test_resync_checks():
    topic = "vnet/v1/hosts/h2/resync"
    assert refused(topic, {"v": 1, "host": "h1", "peer": "h3", "lab": "lab1"}).kind == \
        "wrong-address"
    assert "asks itself" in refused(topic, {"v": 1, "host": "h2", "peer": "h2",
                                            "lab": "lab1"}).detail


def test_desired_lab_is_checked_by_the_topology_loader():
    topic = "vnet/v1/labs/lab1/desired"
    good = json.loads(DesiredLab("lab1", 3, LAB).to_json())
    bad = json.loads(json.dumps(good))
    bad["topology"]["networks"]["office"]["vlan"] = 5000
    error = refused(topic, bad)
    assert error.kind == "invalid-topology"
    assert "vlan" in error.detail
    renamed = json.loads(json.dumps(good))
    renamed["topology"]["name"] = "lab2"
    assert refused(topic, renamed).kind == "wrong-address"
    assert refused("vnet/v1/labs/lab2/desired", good).kind == "wrong-address"


def test_a_tombstone_says_deleted_true_and_nothing_else():
    topic = "vnet/v1/labs/lab1/desired"
    assert decode(TREE, topic, LabDeleted("lab1", 4).to_json()) == LabDeleted("lab1", 4)
    doc = {"v": 1, "lab": "lab1", "generation": 4, "deleted": True}
    assert "deleted must be true" in refused(topic, {**doc, "deleted": False}).detail
    assert "deleted must be true" in refused(topic, {**doc, "deleted": 1}).detail
    with_topology = {**doc, "topology": json.loads(DesiredLab("lab1", 3, LAB).to_json())
                     ["topology"]}
    assert "unknown key 'topology'" in refused(topic, with_topology).detail
    assert refused("vnet/v1/labs/lab2/desired", doc).kind == "wrong-address"
    assert "generation" in refused(topic, {**doc, "generation": 0}).detail


def test_every_payload_kind_has_a_size_limit():
    big = b'{"v": 1, "pad": "' + b"x" * LIMITS["desired"] + b'"}'
    for topic in ("vnet/v1/labs/lab1/desired", STATUS, SNAP0,
                  "vnet/v1/hosts/h1/macs/lab1/delta", "vnet/v1/hosts/h1/resync"):
        assert refused(topic, big).kind == "oversized"


def test_a_full_part_of_worst_case_entries_fits_the_limit():
    entries = tuple(MacEntry("n" + "x" * 30, f"02:ff:ff:ff:{i // 256:02x}:{i % 256:02x}",
                             2**32 - 1) for i in range(MAX_ENTRIES))
    part = SnapshotPart("h" * 63, "l" * 16, 2**63 - 1, 2**63 - 1, 9998, 9999, entries)
    data = part.to_json()
    assert len(data) <= LIMITS["snapshot"]
    assert decode(TREE, topic_of(TREE, part), data) == part


def test_a_full_status_of_worst_case_labs_fits_the_limit():
    labs = {f"l{i:03d}" + "x" * 12: LabRealised(2**63 - 1, "\x01" * 500) for i in range(256)}
    status = Status("h" * 63, "online", 2**63 - 1, 3600.0, "fe80::1", labs)
    assert len(status.to_json()) <= LIMITS["status"]
    decoded = decode(TREE, STATUS.replace("h1", "h" * 63), status.to_json())
    assert isinstance(decoded, Status)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(topic=st.sampled_from([STATUS, SNAP0, "vnet/v1/labs/lab1/desired",
                              "vnet/v1/hosts/h1/macs/lab1/delta", "vnet/v1/hosts/h1/resync"]),
       doc=st.dictionaries(st.sampled_from(["v", "host", "lab", "epoch", "seq", "state", "lease",
                                            "address", "labs", "part", "parts", "macs", "set",
                                            "withdraw", "peer", "generation", "topology",
                                            "deleted", "x"]),
                           json_values))
def test_fuzzed_documents_decode_or_raise_only_bus_errors(topic, doc):
    doc.setdefault("v", 1)
    result = decode(TREE, topic, json.dumps(doc).encode())
    assert isinstance(result, (BusError, Status, SnapshotPart, DesiredLab, LabDeleted, Delta,
                               Resync))


@settings(max_examples=400, deadline=None)
@given(topic=st.text(max_size=80), payload=st.binary(max_size=300))
def test_fuzzed_bytes_and_topics_never_raise(topic, payload):
    result = decode(TREE, topic, payload)
    assert isinstance(result, (BusError, Cleared))


@settings(max_examples=300, deadline=None)
@given(message=st.sampled_from(MESSAGES[1:]), data=st.data())
def test_garbled_valid_payloads_never_raise(message, data):
    raw = bytearray(message.to_json())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    result = decode(TREE, topic_of(TREE, message), bytes(raw))
    assert isinstance(result, (BusError, type(message)))
