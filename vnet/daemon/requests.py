"""The requests vnetd's API takes: one frozen dataclass per operation, checked at the edge.

``parse_request`` turns a decoded JSON line into one of them or raises ``RequestError``
with every problem at once (an unknown operation, a missing, unknown or mistyped
argument), so a handler receives only well-formed requests and a ``TypeError`` inside one
is a bug, never a user's mistake.
"""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, Literal

from vnet.errors import VnetError


class RequestError(VnetError):
    """A request that does not fit its operation; the text says what to change."""


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
    text: str      # the topology file's text
    source: str    # its path, for messages and relative paths


@dataclass(frozen=True)
class DownRequest(Request, op="down"):
    lab: str


@dataclass(frozen=True)
class StatusRequest(Request, op="status"):
    lab: str | None = None   # None: every lab


@dataclass(frozen=True)
class FdbRequest(Request, op="fdb"):
    lab: str


@dataclass(frozen=True)
class NodeRequest(Request, op="node"):
    node: str
    lab: str | None = None   # None: the one lab that has such a node


@dataclass(frozen=True)
class VmRequest(Request, op="vm"):
    action: Literal["start", "stop", "restart"]
    node: str
    lab: str | None = None


@dataclass(frozen=True)
class ShutdownRequest(Request, op="shutdown"):
    pass


def parse_request(message: dict[str, Any]) -> Request:
    """The request that ``message`` (``{"op": NAME, ...arguments}``) asks for."""
    args = dict(message)
    op = args.pop("op", None)
    cls = REQUESTS.get(op) if isinstance(op, str) else None
    if cls is None:
        what = "a request needs an \"op\"" if op is None else f"unknown operation {op!r}"
        raise RequestError(f"{what}; this vnetd knows: {', '.join(sorted(REQUESTS))}")
    return from_json(cls, args)


def from_json(cls: type[Request], args: dict[str, Any]) -> Request:
    hints = typing.get_type_hints(cls)
    params = fields(cls)
    names = [f.name for f in params]
    problems = [f"unknown argument {name!r}; {cls.op} takes "
                + (", ".join(names) if names else "none") for name in args if name not in names]
    for field in params:
        expected = hints[field.name]
        if field.name not in args:
            if field.default is MISSING:
                problems.append(f"missing argument {field.name!r} ({describe_type(expected)})")
        elif not fits(args[field.name], expected):
            problems.append(f"argument {field.name!r} must be {describe_type(expected)}, not "
                            f"{describe_value(args[field.name])}")
    if problems:
        raise RequestError(f"{cls.op}: " + "; ".join(problems))
    return cls(**args)


def fits(value: Any, hint: Any) -> bool:
    """Is ``value`` (from JSON) of type ``hint`` (str, int, bool, None, a union, a Literal)?"""
    origin = typing.get_origin(hint)
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
        return f"the string {value!r}" if len(value) <= 40 else "a long string"
    return "a list" if isinstance(value, list) else "an object"
