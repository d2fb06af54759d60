"""The bus's topic tree: build topics, and parse a received one into a typed address.

Every topic lives under one root (``vnet/v1`` unless the topology's ``bus.topic_root``
says otherwise; the version is part of the root, so an incompatible tree is a new root)::

    ROOT/labs/LAB/desired                      retained   the operator's desired topology
    ROOT/hosts/HOST/status                     retained   liveness, epoch, realised labs
    ROOT/hosts/HOST/macs/LAB/snapshot/PART     retained   where the host's MACs live (batched)
    ROOT/hosts/HOST/macs/LAB/delta                        changes since the snapshot
    ROOT/hosts/HOST/resync                                "please re-publish your snapshot"

A host writes only under ``ROOT/hosts/HOST/`` (mosquitto: ``pattern write
vnet/v1/hosts/%u/#``).  ``parse`` never raises: a topic outside the tree or with a bad name
comes back as a ``BusError`` of kind ``bad-topic`` for the caller to count and drop.
See docs/bus.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vnet.bus.errors import BusError
from vnet.topology.fields import HOST_NAME, LAB_NAME, TOPIC_ROOT
from vnet.topology.model import DEFAULT_TOPIC_ROOT

MAX_PART = 9999  # snapshot parts are numbered 0..MAX_PART

_LAB = re.compile(LAB_NAME)
_HOST = re.compile(HOST_NAME)
_ROOT = re.compile(TOPIC_ROOT)
_PART = re.compile(r"^(0|[1-9][0-9]{0,3})$")


@dataclass(frozen=True)
class DesiredTopic:
    lab: str


@dataclass(frozen=True)
class StatusTopic:
    host: str


@dataclass(frozen=True)
class SnapshotTopic:
    host: str
    lab: str
    part: int


@dataclass(frozen=True)
class DeltaTopic:
    host: str
    lab: str


@dataclass(frozen=True)
class ResyncTopic:
    host: str


Topic = DesiredTopic | StatusTopic | SnapshotTopic | DeltaTopic | ResyncTopic
RETAINED_TOPICS = (DesiredTopic, StatusTopic, SnapshotTopic)


def is_host_name(name: str) -> bool:
    return _HOST.fullmatch(name) is not None


def is_lab_name(name: str) -> bool:
    return _LAB.fullmatch(name) is not None


class TopicTree:
    """The topics under one root; ``TopicTree()`` is the default ``vnet/v1`` tree."""

    def __init__(self, root: str = DEFAULT_TOPIC_ROOT) -> None:
        if _ROOT.fullmatch(root) is None:
            raise ValueError(f"bad topic root {root!r}: topic levels separated by '/', "
                             "no wildcards, no empty levels (e.g. vnet/v1)")
        self.root = root
        self._levels = root.split("/")

    # -- building ---------------------------------------------------------------------------

    def desired(self, lab: str) -> str:
        return f"{self.root}/labs/{_checked_lab(lab)}/desired"

    def status(self, host: str) -> str:
        return f"{self.root}/hosts/{_checked_host(host)}/status"

    def snapshot(self, host: str, lab: str, part: int) -> str:
        if not 0 <= part <= MAX_PART:
            raise ValueError(f"snapshot part {part} outside 0..{MAX_PART}")
        return f"{self.root}/hosts/{_checked_host(host)}/macs/{_checked_lab(lab)}/snapshot/{part}"

    def delta(self, host: str, lab: str) -> str:
        return f"{self.root}/hosts/{_checked_host(host)}/macs/{_checked_lab(lab)}/delta"

    def resync(self, host: str) -> str:
        return f"{self.root}/hosts/{_checked_host(host)}/resync"

    def build(self, topic: Topic) -> str:
        match topic:
            case DesiredTopic(lab):
                return self.desired(lab)
            case StatusTopic(host):
                return self.status(host)
            case SnapshotTopic(host, lab, part):
                return self.snapshot(host, lab, part)
            case DeltaTopic(host, lab):
                return self.delta(host, lab)
            case ResyncTopic(host):
                return self.resync(host)

    @property
    def subscription(self) -> str:
        """The one filter a host subscribes to: the whole tree."""
        return f"{self.root}/#"

    def own_subtree(self, host: str) -> str:
        """The filter a host may write under (the ACL's ``pattern write``)."""
        return f"{self.root}/hosts/{_checked_host(host)}/#"

    # -- parsing ----------------------------------------------------------------------------

    def parse(self, topic: str) -> Topic | BusError:
        """The address ``topic`` names, or a ``bad-topic`` error saying why (never raises)."""
        levels = topic.split("/")
        n = len(self._levels)
        if levels[:n] != self._levels:
            return _bad(topic, f"outside the tree {self.root}/")
        rest = levels[n:]
        match rest:
            case ["labs", lab, "desired"]:
                return _lab(topic, lab) or DesiredTopic(lab)
            case ["hosts", host, "status"]:
                return _host(topic, host) or StatusTopic(host)
            case ["hosts", host, "resync"]:
                return _host(topic, host) or ResyncTopic(host)
            case ["hosts", host, "macs", lab, "delta"]:
                return _host(topic, host) or _lab(topic, lab) or DeltaTopic(host, lab)
            case ["hosts", host, "macs", lab, "snapshot", part]:
                if _PART.fullmatch(part) is None:
                    return _bad(topic, f"snapshot part {part!r} is not a number 0..{MAX_PART}")
                return (_host(topic, host) or _lab(topic, lab)
                        or SnapshotTopic(host, lab, int(part)))
        return _bad(topic, "not a topic of the vnet bus (see docs/bus.md for the tree)")


def _bad(topic: str, why: str) -> BusError:
    return BusError("bad-topic", f"{topic[:200]!r}: {why}")


def _host(topic: str, host: str) -> BusError | None:
    return None if is_host_name(host) else _bad(topic, f"bad host name {host[:80]!r}")


def _lab(topic: str, lab: str) -> BusError | None:
    return None if is_lab_name(lab) else _bad(topic, f"bad lab name {lab[:80]!r}")


def _checked_host(host: str) -> str:
    if not is_host_name(host):
        raise ValueError(f"bad host name {host!r}: a letter or digit, then up to 62 letters, "
                         "digits, '_', '.' or '-'")
    return host


def _checked_lab(lab: str) -> str:
    if not is_lab_name(lab):
        raise ValueError(f"bad lab name {lab!r}: a lower-case letter, then up to 15 "
                         "lower-case letters, digits or '-'")
    return lab
