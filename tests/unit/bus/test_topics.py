"""The topic tree: every topic built parses back to its address; anything else is bad-topic."""

from __future__ import annotations

import pytest

from vnet.bus.errors import BusError
from vnet.bus.topics import (
    DeltaTopic,
    DesiredTopic,
    ResyncTopic,
    SnapshotTopic,
    StatusTopic,
    TopicTree,
)

TREE = TopicTree()


@pytest.mark.parametrize("address", [
    DesiredTopic("lab1"), StatusTopic("h1"), StatusTopic("host-2.example.org"),
    SnapshotTopic("h1", "lab1", 0), SnapshotTopic("h1", "lab1", 9999),
    DeltaTopic("H_1", "a-b"), ResyncTopic("h1"),
])
def test_build_then_parse_round_trips(address):
    topic = TREE.build(address)
    assert topic.startswith("vnet/v1/")
    assert TREE.parse(topic) == address


def test_the_documented_spelling():
    assert TREE.desired("lab1") == "vnet/v1/labs/lab1/desired"
    assert TREE.status("h1") == "vnet/v1/hosts/h1/status"
    assert TREE.snapshot("h1", "lab1", 2) == "vnet/v1/hosts/h1/macs/lab1/snapshot/2"
    assert TREE.delta("h1", "lab1") == "vnet/v1/hosts/h1/macs/lab1/delta"
    assert TREE.resync("h1") == "vnet/v1/hosts/h1/resync"
    assert TREE.subscription == "vnet/v1/#"
    assert TREE.own_subtree("h1") == "vnet/v1/hosts/h1/#"


def test_another_root():
    tree = TopicTree("site-a/vnet/v1")
    assert tree.parse("site-a/vnet/v1/hosts/h1/status") == StatusTopic("h1")
    assert isinstance(tree.parse("vnet/v1/hosts/h1/status"), BusError)


@pytest.mark.parametrize("topic, why", [
    ("", "outside the tree"),
    ("vnet/v2/hosts/h1/status", "outside the tree"),
    ("$SYS/broker/uptime", "outside the tree"),
    ("vnet/v1", "not a topic"),
    ("vnet/v1/hosts/h1", "not a topic"),
    ("vnet/v1/hosts/h1/status/extra", "not a topic"),
    ("vnet/v1/hosts//status", "bad host name"),
    ("vnet/v1/hosts/-h/status", "bad host name"),
    ("vnet/v1/hosts/h+/status", "bad host name"),
    ("vnet/v1/labs/Lab/desired", "bad lab name"),
    ("vnet/v1/labs/a-very-long-lab-name/desired", "bad lab name"),
    ("vnet/v1/hosts/h1/macs/lab1/snapshot/x", "not a number"),
    ("vnet/v1/hosts/h1/macs/lab1/snapshot/-1", "not a number"),
    ("vnet/v1/hosts/h1/macs/lab1/snapshot/007", "not a number"),
    ("vnet/v1/hosts/h1/macs/lab1/snapshot/10000", "not a number"),
    ("vnet/v1/hosts/h1/macs/lab1", "not a topic"),
])
def test_bad_topics_are_returned_as_errors_not_raised(topic, why):
    result = TREE.parse(topic)
    assert isinstance(result, BusError)
    assert result.kind == "bad-topic"
    assert why in result.detail


def test_building_with_bad_names_is_a_programming_error():
    with pytest.raises(ValueError, match="bad host name"):
        TREE.status("h/1")
    with pytest.raises(ValueError, match="bad lab name"):
        TREE.desired("#")
    with pytest.raises(ValueError, match="bad topic root"):
        TopicTree("vnet/#")
