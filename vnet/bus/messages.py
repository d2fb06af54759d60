"""Every payload of the bus as a frozen dataclass, with ``to_json`` and a strict ``from_json``.

Receipt is strict because the bus is shared: a payload is at most its topic's size limit,
strict JSON (no NaN, no duplicate keys), carries ``"v": 1``, has exactly its schema's keys
with the right types and ranges, and names the same host/lab/part as the topic it came on
(the broker's ACL says who may write a topic; the payload must agree with it).  Anything else
raises ``BusError`` with a ``kind``; ``decode`` turns a (topic, payload) pair into a message
or that error, and never raises.  The schemas are documented in docs/bus.md.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

from vnet.bus.errors import BusError
from vnet.bus.topics import (
    MAX_PART,
    DeltaTopic,
    DesiredTopic,
    ResyncTopic,
    SnapshotTopic,
    StatusTopic,
    Topic,
    TopicTree,
    is_host_name,
    is_lab_name,
)
from vnet.errors import TopologyError
from vnet.topology.export import topology_to_dict
from vnet.topology.fields import NAME
from vnet.topology.loader import parse_topology
from vnet.topology.model import Topology

VERSION = 1
MAX_EPOCH = 2**63 - 1
MAX_SEQ = 2**63 - 1
MAX_MOBILITY_SEQ = 2**32 - 1     # EVPN's MAC-mobility sequence number is 32 bits
MAX_ENTRIES = 1024               # MAC entries per snapshot part or delta
MAX_LABS = 256                   # labs in one status
MAX_ERROR_TEXT = 200             # characters of a lab's error in a status
MIN_LEASE, MAX_LEASE = 1.0, 3600.0

LIMITS = {  # bytes, per payload type; a part of MAX_ENTRIES worst-case entries fits its limit
    "desired": 1024 * 1024,
    "status": 512 * 1024,
    "snapshot": 128 * 1024,
    "delta": 128 * 1024,
    "resync": 4 * 1024,
}

State = Literal["online", "offline", "lost"]
STATES: tuple[State, ...] = ("online", "offline", "lost")

_NETWORK = re.compile(NAME)
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class MacEntry:
    """One MAC a host has in one network, with its MAC-mobility sequence number."""

    network: str
    mac: str
    seq: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.network, self.mac)


@dataclass(frozen=True)
class LabRealised:
    """What a host reports about one lab: the generation it realised, or why it could not."""

    generation: int
    error: str | None = None


@dataclass(frozen=True)
class DesiredLab:
    """ROOT/labs/LAB/desired: the lab's topology at a generation (retained; the operator's)."""

    lab: str
    generation: int
    topology: Topology

    def to_json(self) -> bytes:
        return _encode("desired", {"v": VERSION, "lab": self.lab, "generation": self.generation,
                                   "topology": topology_to_dict(self.topology)})

    @classmethod
    def from_json(cls, data: bytes, topic: Topic) -> DesiredLab | LabDeleted:
        """The desired state, or the tombstone (``"deleted": true``) that replaced it."""
        if not isinstance(topic, DesiredTopic):
            raise _wrong_topic(cls, topic)
        r = _Reader.load("desired", data)
        lab = r.lab("lab")
        generation = r.integer("generation", 1, MAX_SEQ)
        deleted = "deleted" in r.document
        if deleted and r.take("deleted") is not True:
            r.fail("deleted must be true (or absent)")
        document = None if deleted else r.object("topology")
        r.done()
        if lab != topic.lab:
            raise BusError("wrong-address", f"desired state of lab {lab!r} on the topic of "
                                            f"lab {topic.lab!r}")
        if document is None:
            return LabDeleted(lab, generation)
        try:
            topology = parse_topology(json.dumps(document), source=f"<desired {lab}>")
        except TopologyError as err:
            raise BusError("invalid-topology", f"lab {lab!r} generation {generation}: "
                                               + "; ".join(err.problems[:5])) from None
        if topology.name != lab:
            raise BusError("wrong-address", f"the topology is named {topology.name!r}, "
                                            f"published as lab {lab!r}")
        return cls(lab, generation, topology)


@dataclass(frozen=True)
class LabDeleted:
    """ROOT/labs/LAB/desired as ``{"v": 1, "lab": LAB, "generation": N, "deleted": true}``:
    the lab is taken down on every host (``vnet down``).  Retained, a tombstone: a host that
    was away when it came still takes its part down when it returns, and the next ``vnet up``
    of the lab continues at ``N + 1``, so a generation never means two things."""

    lab: str
    generation: int

    def to_json(self) -> bytes:
        return _encode("desired", {"v": VERSION, "lab": self.lab, "generation": self.generation,
                                   "deleted": True})


@dataclass(frozen=True)
class Status:
    """ROOT/hosts/HOST/status: the host's liveness (retained; its Will says ``lost``).

    ``epoch`` grows with every connection of the host (docs/bus.md: epochs), ``lease`` is how
    long peers may wait for the next refresh before they consider the host lost, ``address``
    the host's overlay (VXLAN) address if the topology does not declare it.
    """

    host: str
    state: State
    epoch: int
    lease: float = 30.0
    address: str | None = None
    labs: Mapping[str, LabRealised] = field(default_factory=dict)

    def to_json(self) -> bytes:
        labs = {name: ({"generation": lab.generation} if lab.error is None
                       else {"generation": lab.generation,
                             "error": lab.error[:MAX_ERROR_TEXT]})
                for name, lab in sorted(self.labs.items())}
        return _encode("status", {"v": VERSION, "host": self.host, "state": self.state,
                                  "epoch": self.epoch, "lease": self.lease,
                                  "address": self.address, "labs": labs})

    @classmethod
    def from_json(cls, data: bytes, topic: Topic) -> Status:
        if not isinstance(topic, StatusTopic):
            raise _wrong_topic(cls, topic)
        r = _Reader.load("status", data)
        host = r.host("host")
        state = r.choice("state", STATES)
        epoch = r.integer("epoch", 1, MAX_EPOCH)
        lease = r.number("lease", MIN_LEASE, MAX_LEASE)
        address = r.address("address")
        labs_doc = r.object("labs")
        r.done()
        if len(labs_doc) > MAX_LABS:
            r.fail(f"labs: {len(labs_doc)} labs, at most {MAX_LABS}")
        labs: dict[str, LabRealised] = {}
        for name, value in labs_doc.items():
            if not is_lab_name(name):
                r.fail(f"labs: bad lab name {name[:80]!r}")
            lab = _Reader(value, f"labs.{name}")
            generation = lab.integer("generation", 0, MAX_SEQ)
            error = lab.optional_text("error", MAX_ERROR_TEXT)
            lab.done()
            labs[name] = LabRealised(generation, error)
        if host != topic.host:
            raise BusError("wrong-address", f"status of host {host!r} on the topic of host "
                                            f"{topic.host!r}")
        return cls(host, state, epoch, lease, address, labs)

    def __hash__(self) -> int:
        return hash((self.host, self.state, self.epoch, self.lease, self.address,
                     tuple(sorted(self.labs.items()))))


@dataclass(frozen=True)
class SnapshotPart:
    """ROOT/hosts/HOST/macs/LAB/snapshot/PART: part ``part`` of ``parts`` of the MACs a host
    has in a lab, as of delta ``seq`` of ``epoch`` (retained; batched, see docs/bus.md)."""

    host: str
    lab: str
    epoch: int
    seq: int
    part: int
    parts: int
    macs: tuple[MacEntry, ...]

    def to_json(self) -> bytes:
        return _encode("snapshot", {
            "v": VERSION, "host": self.host, "lab": self.lab, "epoch": self.epoch,
            "seq": self.seq, "part": self.part, "parts": self.parts,
            "macs": [[m.network, m.mac, m.seq] for m in self.macs]})

    @classmethod
    def from_json(cls, data: bytes, topic: Topic) -> SnapshotPart:
        if not isinstance(topic, SnapshotTopic):
            raise _wrong_topic(cls, topic)
        r = _Reader.load("snapshot", data)
        host, lab = r.host("host"), r.lab("lab")
        epoch = r.integer("epoch", 1, MAX_EPOCH)
        seq = r.integer("seq", 0, MAX_SEQ)
        part = r.integer("part", 0, MAX_PART)
        parts = r.integer("parts", 1, MAX_PART + 1)
        macs = tuple(_entries(r, "macs", with_seq=True))
        r.done()
        if part >= parts:
            r.fail(f"part {part} of only {parts} parts")
        if (host, lab, part) != (topic.host, topic.lab, topic.part):
            raise BusError("wrong-address", f"snapshot part {part} of {host}/{lab} on the "
                                            f"topic of part {topic.part} of "
                                            f"{topic.host}/{topic.lab}")
        return cls(host, lab, epoch, seq, part, parts, macs)


@dataclass(frozen=True)
class Delta:
    """ROOT/hosts/HOST/macs/LAB/delta: MACs the host gained (``set``, with their mobility
    sequence) and lost (``withdraw``) since delta ``seq - 1`` of ``epoch`` (not retained)."""

    host: str
    lab: str
    epoch: int
    seq: int
    set: tuple[MacEntry, ...] = ()
    withdraw: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> bytes:
        return _encode("delta", {
            "v": VERSION, "host": self.host, "lab": self.lab, "epoch": self.epoch,
            "seq": self.seq, "set": [[m.network, m.mac, m.seq] for m in self.set],
            "withdraw": [list(k) for k in self.withdraw]})

    @classmethod
    def from_json(cls, data: bytes, topic: Topic) -> Delta:
        if not isinstance(topic, DeltaTopic):
            raise _wrong_topic(cls, topic)
        r = _Reader.load("delta", data)
        host, lab = r.host("host"), r.lab("lab")
        epoch = r.integer("epoch", 1, MAX_EPOCH)
        seq = r.integer("seq", 1, MAX_SEQ)
        sets = tuple(_entries(r, "set", with_seq=True))
        withdraw = tuple(e.key for e in _entries(r, "withdraw", with_seq=False))
        r.done()
        if len(sets) + len(withdraw) > MAX_ENTRIES:
            r.fail(f"{len(sets) + len(withdraw)} changes in one delta, at most {MAX_ENTRIES}")
        both = {e.key for e in sets} & set(withdraw)
        if both:
            network, mac = sorted(both)[0]
            r.fail(f"{mac} in {network} is both set and withdrawn")
        if (host, lab) != (topic.host, topic.lab):
            raise BusError("wrong-address", f"delta of {host}/{lab} on the topic of "
                                            f"{topic.host}/{topic.lab}")
        return cls(host, lab, epoch, seq, sets, withdraw)


@dataclass(frozen=True)
class Resync:
    """ROOT/hosts/HOST/resync: host ``host`` missed deltas of ``peer`` in ``lab`` and asks it
    to re-publish its snapshot (not retained)."""

    host: str
    peer: str
    lab: str

    def to_json(self) -> bytes:
        return _encode("resync", {"v": VERSION, "host": self.host, "peer": self.peer,
                                  "lab": self.lab})

    @classmethod
    def from_json(cls, data: bytes, topic: Topic) -> Resync:
        if not isinstance(topic, ResyncTopic):
            raise _wrong_topic(cls, topic)
        r = _Reader.load("resync", data)
        host, peer, lab = r.host("host"), r.host("peer"), r.lab("lab")
        r.done()
        if host != topic.host:
            raise BusError("wrong-address", f"resync request of host {host!r} on the topic "
                                            f"of host {topic.host!r}")
        if peer == host:
            r.fail(f"host {host!r} asks itself for a resync")
        return cls(host, peer, lab)


@dataclass(frozen=True)
class Cleared:
    """An empty retained payload: the publisher removed the retained message of ``topic``
    (a lab taken out of desired state, a snapshot part no longer used)."""

    topic: DesiredTopic | StatusTopic | SnapshotTopic


Message = DesiredLab | LabDeleted | Status | SnapshotPart | Delta | Resync | Cleared

_PARSERS: dict[type, Any] = {DesiredTopic: DesiredLab, StatusTopic: Status,
                             SnapshotTopic: SnapshotPart, DeltaTopic: Delta,
                             ResyncTopic: Resync}


def decode(tree: TopicTree, topic: str, payload: bytes) -> Message | BusError:
    """The message ``payload`` on ``topic`` carries, or the ``BusError`` that refuses it."""
    address = tree.parse(topic)
    if isinstance(address, BusError):
        return address
    if not payload and isinstance(address, DesiredTopic | StatusTopic | SnapshotTopic):
        return Cleared(address)
    try:
        message: Message = _PARSERS[type(address)].from_json(payload, address)
    except BusError as err:
        return err
    return message


def topic_of(tree: TopicTree, message: Message) -> str:
    """The topic ``message`` is published on."""
    match message:
        case DesiredLab(lab=lab) | LabDeleted(lab=lab):
            return tree.desired(lab)
        case Status(host=host):
            return tree.status(host)
        case SnapshotPart(host=host, lab=lab, part=part):
            return tree.snapshot(host, lab, part)
        case Delta(host=host, lab=lab):
            return tree.delta(host, lab)
        case Resync(host=host):
            return tree.resync(host)
        case Cleared(topic=topic):
            return tree.build(topic)


def is_retained(message: Message) -> bool:
    return not isinstance(message, Delta | Resync)


def is_desired_state(message: Message) -> bool:
    """A lab's desired state (or its tombstone, or its clearing): written for the operator,
    not a host's own state, so a host never re-publishes it on its own."""
    return isinstance(message, DesiredLab | LabDeleted) or (
        isinstance(message, Cleared) and isinstance(message.topic, DesiredTopic))


# -- strict reading ---------------------------------------------------------------------------

def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:80]!r}")
        out[key] = value
    return out


def _encode(kind: str, document: dict[str, Any]) -> bytes:
    data = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
    if len(data) > LIMITS[kind]:
        raise ValueError(f"{kind} payload of {len(data)} bytes exceeds the {LIMITS[kind]}-byte "
                         "limit receivers enforce; split it")
    return data


def _wrong_topic(cls: type, topic: Topic) -> BusError:
    return BusError("wrong-address", f"a {cls.__name__} cannot arrive on a {type(topic).__name__}")


class _Reader:
    """Takes the keys of one JSON object one by one and type-checks them; ``done`` refuses
    keys that were not taken."""

    def __init__(self, document: Any, where: str = "") -> None:
        if not isinstance(document, dict):
            raise BusError("malformed", f"{where or 'payload'}: not a JSON object")
        self.document: dict[str, Any] = document
        self.where = where
        self.taken: set[str] = set()

    @classmethod
    def load(cls, kind: str, data: bytes) -> _Reader:
        if not isinstance(data, bytes | bytearray):
            raise BusError("malformed", f"payload is {type(data).__name__}, not bytes")
        if len(data) > LIMITS[kind]:
            raise BusError("oversized", f"{kind} payload of {len(data)} bytes, at most "
                                        f"{LIMITS[kind]}")
        try:
            document = json.loads(bytes(data).decode("utf-8"), parse_constant=_reject_constant,
                                  object_pairs_hook=_no_duplicates)
        except UnicodeDecodeError:
            raise BusError("malformed", f"{kind} payload is not UTF-8") from None
        except (ValueError, RecursionError) as err:
            raise BusError("malformed", f"{kind} payload is not JSON: "
                                        f"{str(err)[:120]}") from None
        reader = cls(document)
        version = document.get("v")
        if type(version) is not int:
            reader.fail("no schema version (\"v\": 1)")
        if version != VERSION:
            raise BusError("unknown-version", f"{kind} payload of schema version {version}; "
                                              f"this vnet reads version {VERSION}")
        reader.taken.add("v")
        return reader

    def fail(self, why: str) -> NoReturn:
        raise BusError("malformed", f"{self.where + ': ' if self.where else ''}{why}")

    def take(self, key: str) -> Any:
        if key not in self.document:
            self.fail(f"missing key {key!r}")
        self.taken.add(key)
        return self.document[key]

    def done(self) -> None:
        extra = sorted(set(self.document) - self.taken)
        if extra:
            self.fail(f"unknown key {extra[0][:80]!r}")

    def integer(self, key: str, low: int, high: int) -> int:
        value = self.take(key)
        if type(value) is not int or not low <= value <= high:
            self.fail(f"{key} must be an integer in {low}..{high}")
        return value

    def number(self, key: str, low: float, high: float) -> float:
        value = self.take(key)
        if type(value) not in (int, float) or not low <= value <= high:
            self.fail(f"{key} must be a number in {low}..{high}")
        return float(value)

    def text(self, key: str) -> str:
        value = self.take(key)
        if not isinstance(value, str):
            self.fail(f"{key} must be a string")
        return value

    def optional_text(self, key: str, limit: int) -> str | None:
        if key not in self.document:
            return None
        value = self.text(key)
        if len(value) > limit:
            self.fail(f"{key} longer than {limit} characters")
        return value

    def host(self, key: str) -> str:
        value = self.text(key)
        if not is_host_name(value):
            self.fail(f"{key}: bad host name {value[:80]!r}")
        return value

    def lab(self, key: str) -> str:
        value = self.text(key)
        if not is_lab_name(value):
            self.fail(f"{key}: bad lab name {value[:80]!r}")
        return value

    def choice(self, key: str, options: tuple[State, ...]) -> State:
        value = self.take(key)
        for option in options:
            if value == option:
                return option
        self.fail(f"{key} must be one of {', '.join(options)}")

    def address(self, key: str) -> str | None:
        value = self.take(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(f"{key} must be an IP address or null")
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            self.fail(f"{key}: {value[:80]!r} is not an IP address")

    def object(self, key: str) -> dict[str, Any]:
        value = self.take(key)
        if not isinstance(value, dict):
            self.fail(f"{key} must be an object")
        return value

    def array(self, key: str) -> list[Any]:
        value = self.take(key)
        if not isinstance(value, list):
            self.fail(f"{key} must be a list")
        return value


def _entries(r: _Reader, key: str, with_seq: bool) -> Iterable[MacEntry]:
    """``[[network, mac, seq], ...]`` (or ``[[network, mac], ...]``), checked, no repeats."""
    items = r.array(key)
    if len(items) > MAX_ENTRIES:
        r.fail(f"{key}: {len(items)} entries, at most {MAX_ENTRIES}")
    seen: set[tuple[str, str]] = set()
    width = 3 if with_seq else 2
    for i, item in enumerate(items):
        if not isinstance(item, list) or len(item) != width:
            r.fail(f"{key}[{i}] must be [network, mac{', seq' if with_seq else ''}]")
        network, mac = item[0], item[1]
        if not isinstance(network, str) or _NETWORK.fullmatch(network) is None:
            r.fail(f"{key}[{i}]: bad network name {str(network)[:80]!r}")
        if not isinstance(mac, str) or _MAC.fullmatch(mac) is None:
            r.fail(f"{key}[{i}]: bad MAC {str(mac)[:80]!r} (lower-case aa:bb:cc:dd:ee:ff)")
        if int(mac[:2], 16) & 1:
            r.fail(f"{key}[{i}]: {mac} is a group address; only unicast MACs live on a host")
        seq = item[2] if with_seq else 0
        if type(seq) is not int or not 0 <= seq <= MAX_MOBILITY_SEQ:
            r.fail(f"{key}[{i}]: mobility sequence must be an integer in 0..{MAX_MOBILITY_SEQ}")
        if (network, mac) in seen:
            r.fail(f"{key}[{i}]: {mac} in {network} listed twice")
        seen.add((network, mac))
        yield MacEntry(network, mac, seq)
