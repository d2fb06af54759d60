"""The datapath's control protocol: one frozen dataclass per request, and their codec.

vnetd (``vnet.daemon``), the benchmark (``vnet.bench``) and the datapath all build and read
these types; nothing else knows the wire format.  On the wire a request is one JSON line
(``vnet.jsonlines``), ``{"v": VERSION, "op": OP, ...fields}``, and its reply is
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": MESSAGE}``.

A request's fields are its dataclass fields, and each annotation names its wire type (one of
``_CODECS``), so decoding checks every field: a line that is not JSON, an unknown ``op``, a
missing, unknown or mistyped field, or another ``VERSION`` raises ``ProtocolError`` with a
message that says which and what was expected.  A VLAN travels as the switch's own
``VlanOptions``, which checks its values itself.

Adding a request: a frozen dataclass here, registered with ``@request("op_name")``; a
handler for it in ``vnet.datapath.engine.Datapath`` (a unit test checks that every request
has one); its result documented on the class.  A new field type needs an entry in
``_CODECS``.  Changing what an existing request means bumps ``VERSION``.

(This module runs in the datapath, which may be PyPy 3.9: annotations stay strings.)
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from vnet import jsonlines
from vnet.errors import DatapathError, ProtocolError
from vnet.switch import PortConfig, PortMode, VlanOptions
from vnet.switch.ports import VID_MAX, VID_MIN

VERSION = 1
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


@dataclasses.dataclass(frozen=True)
class Request:
    """Base of every control request; ``op`` is its name on the wire."""

    op: ClassVar[str]


REQUESTS: dict[str, type[Request]] = {}
R = TypeVar("R", bound=type[Request])


def request(op: str) -> Callable[[R], R]:
    """Register a request class under ``op`` (its fields' types must have a codec)."""

    def register(cls: R) -> R:
        cls.op = op
        REQUESTS[op] = cls
        return cls

    return register


# ---- the requests ----------------------------------------------------------------------------
# Every one is idempotent, so vnetd can replay them all to a restarted datapath.


@request("ping")
@dataclasses.dataclass(frozen=True)
class Ping(Request):
    """Is the datapath up?  Result: ``{"pid": int, "bridges": [name, ...], "kernel_flows":
    {"enabled": bool, "reason": str | null (why not), "flows": int}}``."""


@request("add_bridge")
@dataclasses.dataclass(frozen=True)
class AddBridge(Request):
    """Create a bridge (a lab's switch), or update its VLANs' options.  Result: null."""

    bridge: str
    vlans: tuple[VlanOptions, ...]


@request("del_bridge")
@dataclasses.dataclass(frozen=True)
class DelBridge(Request):
    """Remove a bridge and its ports (nothing if it does not exist).  Result: null."""

    bridge: str


@request("add_port")
@dataclasses.dataclass(frozen=True)
class AddPort(Request):
    """Open the netdev ``ifname`` as port ``name`` of ``bridge`` (an access port in ``vlan``,
    or a trunk of ``allowed`` with ``native`` untagged); the same request again changes
    nothing.  ``kernel_flows``: the netdev is vnet's own, so the datapath may put a tc
    qdisc and kernel flows on it (never on a host's uplink).  Result: ``{"number": int}``,
    the port's number in the datapath."""

    bridge: str
    name: str
    ifname: str
    mode: PortMode
    vlan: int | None = None
    allowed: tuple[int, ...] = ()
    native: int | None = None
    kernel_flows: bool = False

    def __post_init__(self) -> None:
        try:
            self.config(0)  # the switch's own checks, at whichever end builds the request
        except ValueError as err:
            raise ProtocolError(f"{self.op}: {err}") from None

    def config(self, number: int) -> PortConfig:
        """The switch's configuration of this port, numbered ``number``."""
        return PortConfig(number=number, name=self.name, mode=self.mode, vlan=self.vlan,
                          allowed=frozenset(self.allowed), native=self.native)


@request("del_port")
@dataclasses.dataclass(frozen=True)
class DelPort(Request):
    """Close port ``name`` of ``bridge`` (nothing if it does not exist).  Result: null."""

    bridge: str
    name: str


@request("add_static")
@dataclasses.dataclass(frozen=True)
class AddStatic(Request):
    """A static MAC entry: ``mac`` in VLAN ``vid`` is behind port ``port``.  Result: null."""

    bridge: str
    vid: int
    mac: str
    port: str

    def __post_init__(self) -> None:
        if not VID_MIN <= self.vid <= VID_MAX:
            raise ProtocolError(f"{self.op}: vid must be a VLAN ID in {VID_MIN}..{VID_MAX}, "
                                f"not {self.vid}")
        if not _MAC.match(self.mac):
            raise ProtocolError(f"{self.op}: mac must be six hex octets (02:00:00:aa:bb:cc), "
                                f"not {self.mac!r}")


@request("fdb")
@dataclasses.dataclass(frozen=True)
class GetFdb(Request):
    """The bridge's MAC table.  Result: ``[{"vlan", "mac", "port", "age", "static"}, ...]``."""

    bridge: str


@request("fdb_size")
@dataclasses.dataclass(frozen=True)
class GetFdbSize(Request):
    """How many entries the bridge's MAC table holds (cheap, unlike ``GetFdb``).  Result: int."""

    bridge: str


@request("flush_fdb")
@dataclasses.dataclass(frozen=True)
class FlushFdb(Request):
    """Forget every learned and static MAC of the bridge.  Result: null."""

    bridge: str


@request("stats")
@dataclasses.dataclass(frozen=True)
class GetStats(Request):
    """Every port's counters, of one bridge or all.  Result: ``{bridge: {port: {...}}}``."""

    bridge: str | None = None


MAX_FRAME = 65535  # bytes of a traced or injected frame


def _check_frame(op: str, frame: str) -> None:
    try:
        data = bytes.fromhex(frame)
    except ValueError:
        raise ProtocolError(f"{op}: frame must be the frame's bytes in hex, not "
                            f"{json_repr(frame)}") from None
    if not 1 <= len(data) <= MAX_FRAME:
        raise ProtocolError(f"{op}: a frame has 1 to {MAX_FRAME} bytes, not {len(data)}")


@request("trace")
@dataclasses.dataclass(frozen=True)
class Trace(Request):
    """What the switch of ``bridge`` would do with ``frame`` (hex; as on the wire of port
    ``port``, any outer 802.1Q tag in band) received on ``port``, step by step, on the live
    tables and changing nothing.  Result: ``vnet.switch.explain.Explanation.to_json()``."""

    bridge: str
    port: str
    frame: str

    def __post_init__(self) -> None:
        _check_frame(self.op, self.frame)


@request("inject")
@dataclasses.dataclass(frozen=True)
class Inject(Request):
    """Switch ``frame`` (as ``Trace``'s) as if port ``port`` had received it, and send it
    where the decision says (counted as received there).  Result: ``{"drop": reason or
    null, "vlan": int or null, "egress": [{"port", "tagging"}, ...]}``, where it went."""

    bridge: str
    port: str
    frame: str

    def __post_init__(self) -> None:
        _check_frame(self.op, self.frame)


class StreamRequest(Request):
    """A request whose connection, once it is answered ok, carries a stream from the
    datapath (``vnet.datapath.control.Stream``) until the peer closes it."""


@request("mirror")
@dataclasses.dataclass(frozen=True)
class Mirror(StreamRequest):
    """Mirror port ``port`` of ``bridge`` (``vnet capture``): after the reply this
    connection carries ``vnet.datapath.mirror`` records of the frames the port receives
    (``direction`` "in"), sends ("out") or both, as on its wire, until the peer closes its
    side; the last record says how many were dropped for want of room.  Result:
    ``{"number": int}``, the port's number."""

    bridge: str
    port: str
    direction: str = "both"

    def __post_init__(self) -> None:
        if self.direction not in ("in", "out", "both"):
            raise ProtocolError(f"{self.op}: direction must be in, out or both, not "
                                f"{json_repr(self.direction)}")


class HandoverRequest(Request):
    """A request whose connection, once it is answered ok, the datapath keeps at its
    highest fd number and never reads again (``vnet.datapath.control``)."""


@request("lifeline")
@dataclasses.dataclass(frozen=True)
class Lifeline(HandoverRequest):
    """This connection becomes the datapath's lifeline to the sender, in place of any
    earlier one (``--lifeline``): its end reaches the sender as soon as the datapath dies,
    before its ports' sockets are closed (a vnetd that adopted the datapath is not its
    parent, and has no other early word of its death).  Result: ``{"pid": int}``."""


@request("shutdown")
@dataclasses.dataclass(frozen=True)
class Shutdown(Request):
    """Stop the datapath after this reply.  Result: null."""


# ---- the codec -------------------------------------------------------------------------------


def encode(message: Request) -> bytes:
    """The request as one JSON line."""
    return jsonlines.encode(to_wire(message))


def to_wire(message: Request) -> dict[str, Any]:
    return {"v": VERSION, "op": message.op, **_record_to_wire(message)}


def decode(line: bytes) -> Request:
    """The request in ``line``; ``ProtocolError`` says what is wrong with it if anything is."""
    try:
        return from_wire(jsonlines.decode(line))
    except RecursionError:
        raise ProtocolError("not a JSON line: nested too deeply") from None


def from_wire(data: dict[str, Any]) -> Request:
    fields = dict(data)
    op = fields.pop("op", None)
    version = fields.pop("v", None)
    known = ", ".join(sorted(REQUESTS))
    if not isinstance(op, str):
        raise ProtocolError(f"a datapath request needs an 'op' naming the operation ({known})")
    cls = REQUESTS.get(op)
    if cls is None:
        raise ProtocolError(f"unknown datapath operation {op!r} (known: {known})")
    if version != VERSION:
        said = ("no protocol version" if version is None
                else f"protocol version {json_repr(version)}")
        raise ProtocolError(f"{op}: {said} ('v'), but this datapath speaks version {VERSION}: "
                            f"vnetd and the datapath come from different vnet versions "
                            f"(restart vnetd)")
    return _record_from_wire(cls, fields, op)


def result(reply: Any, op: str) -> Any:
    """The result of a decoded reply to ``op``; ``DatapathError`` with the datapath's
    message if it refused the request."""
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise DatapathError(f"datapath {op}: malformed reply {reply!r:.200}")
    if not reply["ok"]:
        raise DatapathError(f"datapath {op}: {reply.get('error')}")
    return reply.get("result")


T = TypeVar("T")


def _record_to_wire(record: Any) -> dict[str, Any]:
    return {f.name: _value_to_wire(getattr(record, f.name)) for f in dataclasses.fields(record)
            if f.init}


def _value_to_wire(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return _record_to_wire(value)
    if isinstance(value, (tuple, list, frozenset)):
        return [_value_to_wire(v) for v in value]
    return value


def _record_from_wire(cls: type[T], data: dict[str, Any], where: str) -> T:
    fields = {f.name: f for f in dataclasses.fields(cls)  # type: ignore[arg-type]
              if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        expected = ", ".join(fields) or "none"
        plural = "s" if len(unknown) > 1 else ""
        raise ProtocolError(f"{where}: unknown field{plural} {', '.join(map(repr, unknown))} "
                            f"(fields: {expected})")
    missing = [name for name, f in fields.items() if name not in data
               and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise ProtocolError(f"{where}: missing field{plural} {', '.join(map(repr, missing))}")
    values = {name: _CODECS[str(fields[name].type)](value, f"{where}: {name}")
              for name, value in data.items()}
    try:
        return cls(**values)
    except ProtocolError:
        raise
    except ValueError as err:  # the type's own checks (VlanOptions, say)
        raise ProtocolError(f"{where}: {err}") from None


def _wrong(where: str, expected: str, value: Any) -> ProtocolError:
    shown = json_repr(value)
    return ProtocolError(f"{where} must be {expected}, not {shown}")


def json_repr(value: Any) -> str:
    """A value as it looked on the wire (short)."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _wrong(where, "a string", value)
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _wrong(where, "true or false", value)
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong(where, "an integer", value)
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value):
        raise _wrong(where, "a finite number", value)
    return float(value)


def _optional(codec: Callable[[Any, str], T], what: str) -> Callable[[Any, str], T | None]:
    def decode_optional(value: Any, where: str) -> T | None:
        if value is None:
            return None
        try:
            return codec(value, where)
        except ProtocolError:
            raise _wrong(where, f"{what} or null", value) from None
    return decode_optional


def _tuple_of(codec: Callable[[Any, str], T], what: str) -> Callable[[Any, str], tuple[T, ...]]:
    def decode_tuple(value: Any, where: str) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise _wrong(where, f"a list of {what}", value)
        return tuple(codec(item, f"{where}[{i}]") for i, item in enumerate(value))
    return decode_tuple


def _vlan_options(value: Any, where: str) -> VlanOptions:
    if not isinstance(value, dict):
        raise _wrong(where, "an object (vid, mac_aging, mac_limit)", value)
    return _record_from_wire(VlanOptions, value, where)


_CODECS: dict[str, Callable[[Any, str], Any]] = {
    "str": _str,
    "int": _int,
    "bool": _bool,
    "float": _number,
    "str | None": _optional(_str, "a string"),
    "int | None": _optional(_int, "an integer"),
    "tuple[int, ...]": _tuple_of(_int, "integers"),
    "PortMode": _str,  # which strings: PortConfig says
    "tuple[VlanOptions, ...]": _tuple_of(_vlan_options, "VLANs"),
}


def _check_codecs() -> None:
    """Every request's fields have a wire type (at import: a new request that lacks one
    fails at once, everywhere)."""
    for cls in (*REQUESTS.values(), VlanOptions):
        for f in dataclasses.fields(cls):
            if f.init and str(f.type) not in _CODECS:
                raise TypeError(f"{cls.__name__}.{f.name}: no wire codec for {f.type!r}")


_check_codecs()
