"""The requests vnetd's API takes: one frozen dataclass per operation, checked at the edge.

``parse_request`` turns a decoded JSON line into one of them or raises ``RequestError``
with every problem at once (an unknown operation, a missing, unknown or mistyped
argument, a name that is no lab or node name, a path with a NUL byte), so a handler
receives only well-formed requests and an exception inside one is a bug, never a user's
mistake.  A string argument with a shape to fit says so in its annotation:
``Annotated[str, LAB]``.

A request line is at most ``MAX_REQUEST`` bytes: a topology file is a few KiB, and a line
that size is read and decoded in well under a second.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import MISSING, dataclass, fields
from typing import Annotated, Any, ClassVar, Literal

from vnet.daemon.defaults import MAX_REQUEST
from vnet.errors import VnetError
from vnet.topology.fields import IFNAME, IFNAME_WHY, LAB_NAME, LAB_NAME_WHY, NAME, NAME_WHY

MAX_PATH = 4096         # characters of a path (Linux's PATH_MAX)
MAX_PROBLEMS = 10       # said of one request; the rest are counted


class RequestError(VnetError):
    """A request that does not fit its operation; the text says what to change."""


@dataclass(frozen=True)
class Shape:
    """What a string argument must look like, beyond being a string."""

    noun: str                  # "a lab name"
    why: str                   # the rule, in words
    pattern: str | None = None
    max_length: int = MAX_PATH

    def fits(self, value: str) -> bool:
        return (len(value) <= self.max_length and "\0" not in value and _is_unicode(value)
                and (self.pattern is None or re.fullmatch(self.pattern, value) is not None))


def _is_unicode(value: str) -> bool:
    """Is ``value`` text that UTF-8 can carry?  JSON's ``\\ud800`` escapes decode to lone
    surrogates, which no file name, netlink message or YAML reader takes."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


LAB = Shape("a lab name", LAB_NAME_WHY, LAB_NAME)
NODE = Shape("a node name", NAME_WHY, NAME)
PATH = Shape("a path", f"at most {MAX_PATH} characters, no NUL byte")
TEXT = Shape("a string", "Unicode, no NUL byte", max_length=MAX_REQUEST)
NIC = Shape("a NIC name", IFNAME_WHY, IFNAME)
FRAME = Shape("a frame in hex", "its bytes as hex digits, at most 64 KiB",
              r"(?:[0-9a-fA-F]{2})+", max_length=2 * 65535)
ARG = Shape("a command-line argument", "Unicode, no NUL byte", max_length=MAX_REQUEST)
ENV = Shape("an environment entry", "NAME=VALUE, Unicode, no NUL byte",
            r"[^=]+=(?s:.*)", max_length=MAX_REQUEST)
LabName = Annotated[str, LAB]
NodeName = Annotated[str, NODE]

REQUESTS: dict[str, type[Request]] = {}


@dataclass(frozen=True)
class Request:
    """Base of the requests; a subclass names its operation: ``class X(Request, op="x")``."""

    op: ClassVar[str]

    def __init_subclass__(cls, *, op: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.op = op
        REQUESTS[op] = cls


@dataclass(frozen=True)
class PingRequest(Request, op="ping"):
    pass


@dataclass(frozen=True)
class UpRequest(Request, op="up"):
    text: Annotated[str, TEXT]      # the topology file's text
    source: Annotated[str, PATH]    # its path, for messages and relative paths
    progress: bool = False          # send {"progress": ...} lines before the reply


@dataclass(frozen=True)
class DownRequest(Request, op="down"):
    lab: LabName
    progress: bool = False          # send {"progress": ...} lines before the reply


@dataclass(frozen=True)
class StatusRequest(Request, op="status"):
    lab: LabName | None = None   # None: every lab


@dataclass(frozen=True)
class FdbRequest(Request, op="fdb"):
    lab: LabName


@dataclass(frozen=True)
class NodeRequest(Request, op="node"):
    node: NodeName
    lab: LabName | None = None   # None: the one lab that has such a node


@dataclass(frozen=True)
class VmRequest(Request, op="vm"):
    action: Literal["start", "stop", "restart"]
    node: NodeName
    lab: LabName | None = None
    force: bool = False   # stop (or restart) at once, without asking the guest to power off


@dataclass(frozen=True)
class TraceRequest(Request, op="trace"):
    """``vnet trace``: explain (or, ``inject``, really switch) ``frame`` as received on the
    port of the node's NIC (None: its only NIC)."""

    node: NodeName
    frame: Annotated[str, FRAME]
    nic: Annotated[str, NIC] | None = None
    lab: LabName | None = None
    action: Literal["explain", "inject"] = "explain"


@dataclass(frozen=True)
class CaptureRequest(Request, op="capture"):
    """``vnet capture``: mirror the port of the node's NIC (None: its only NIC); the reply
    is followed by the mirror's records (``vnet.datapath.mirror``) until the client closes
    its side (``docs/api.md``)."""

    node: NodeName
    nic: Annotated[str, NIC] | None = None
    lab: LabName | None = None
    direction: Literal["in", "out", "both"] = "both"


@dataclass(frozen=True)
class ConsoleRequest(Request, op="console"):
    """``vnet console``: a VM's console log so far (``log``, viewer), or a connection to
    its live console handed over on the API socket (``attach``, operator: ``docs/api.md``)."""

    node: NodeName
    action: Literal["log", "attach"] = "log"
    lab: LabName | None = None


@dataclass(frozen=True)
class ExecRequest(Request, op="exec"):
    """``vnet exec``: run ``command`` in a namespace node as the caller, on the caller's
    stdin, stdout and stderr (passed over the socket after vnetd's first reply)."""

    node: NodeName
    command: list[Annotated[str, ARG]]
    env: list[Annotated[str, ENV]] | None = None   # None: vnetd's minimal environment
    cwd: Annotated[str, PATH] | None = None          # None: /
    lab: LabName | None = None


@dataclass(frozen=True)
class ShutdownRequest(Request, op="shutdown"):
    all: bool = False   # also stop the datapath and every VM runner (else they stay running)


def parse_request(message: dict[str, Any]) -> Request:
    """The request that ``message`` (``{"op": NAME, ...arguments}``) asks for."""
    args = dict(message)
    op = args.pop("op", None)
    cls = REQUESTS.get(op) if isinstance(op, str) else None
    if cls is None:
        what = "a request needs an \"op\"" if op is None else f"unknown operation {quote(op)}"
        raise RequestError(f"{what}; this vnetd knows: {', '.join(sorted(REQUESTS))}")
    return from_json(cls, args)


def from_json(cls: type[Request], args: dict[str, Any]) -> Request:
    hints = typing.get_type_hints(cls, include_extras=True)
    params = fields(cls)
    names = [f.name for f in params]
    problems = [f"unknown argument {quote(name)}; {cls.op} takes "
                + (", ".join(names) if names else "none") for name in args if name not in names]
    for field in params:
        expected = hints[field.name]
        if field.name not in args:
            if field.default is MISSING:
                problems.append(f"missing argument {field.name!r}: {describe_type(expected)}")
        elif not fits(args[field.name], expected):
            problems.append(f"argument {field.name!r} must be {describe_type(expected)}, not "
                            f"{describe_value(args[field.name])}")
    if len(problems) > MAX_PROBLEMS:
        problems[MAX_PROBLEMS:] = [f"and {len(problems) - MAX_PROBLEMS} more problems"]
    if problems:
        raise RequestError(f"{cls.op}: " + "; ".join(problems))
    return cls(**args)


def fits(value: Any, hint: Any) -> bool:
    """Is ``value`` (from JSON) of type ``hint`` (str, int, bool, None, a union, a Literal,
    a string of a ``Shape``)?"""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *shapes = typing.get_args(hint)
        return fits(value, base) and all(shape.fits(value) for shape in shapes)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(fits(v, item) for v in value)
    if origin is Literal:
        return any(value == choice and type(value) is type(choice)
                   for choice in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def describe_type(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Annotated:
        shapes = typing.get_args(hint)[1:]
        return " and ".join(f"{shape.noun} ({shape.why})" for shape in shapes)
    if origin is list:
        return f"a list, each item {describe_type(typing.get_args(hint)[0])}"
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(option) for option in typing.get_args(hint))
    return {str: "a string", int: "a whole number", bool: "true or false",
            type(None): "null"}.get(hint, getattr(hint, "__name__", str(hint)))


def describe_value(value: Any) -> str:
    """What a JSON value is, in words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        nul = value.find("\0")
        return f"the string {quote(value)}" + (
            f" with a NUL byte at character {nul + 1}" if nul >= 0 else
            "" if _is_unicode(value) else " with a lone surrogate (not Unicode)")
    return "a list" if isinstance(value, list) else "an object"


def quote(value: Any, limit: int = 40) -> str:
    """``value``'s repr, or the start of it and its length when it is long: an answer quotes
    what was sent, never megabytes of it."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
