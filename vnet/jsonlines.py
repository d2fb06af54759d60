"""The wire format of vnet's local control channels: one JSON object per line.

Used between the CLI and vnetd and between vnetd and the datapath.  A request is
``{"op": NAME, ...arguments}``; a reply is ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": MESSAGE}`` where MESSAGE is meant for the user.

``decode`` takes any bytes a peer may send and either returns an object or raises
``ProtocolError`` saying what is wrong: nesting (``json`` would recurse until
``RecursionError``) and numbers too long for ``int`` (a ``ValueError`` past 4,300 digits)
are bounded before or while decoding.  (``NaN`` and ``Infinity`` decode as Python does;
each protocol refuses them where it takes a number.)
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from vnet.errors import ProtocolError

__all__ = ["MAX_DEPTH", "MAX_DIGITS", "MAX_LINE", "NoReply", "ProtocolError", "backoff",
           "call", "connect", "decode", "encode", "exchange", "failed", "ok"]

MAX_LINE = 16 << 20  # a reply (a status) plus slack; longer lines are refused, not buffered
MAX_DEPTH = 64       # nesting of arrays and objects; vnet's messages nest fewer than 10 deep
MAX_DIGITS = 100     # of an integer; vnet's largest are 64-bit counters (20 digits)

# A JSON string (skipped whole, escapes and all) or a bracket: what nesting is counted on.
# The string is the unrolled loop "normal* (escape normal*)*": linear, never backtracking,
# and without possessive quantifiers, which the datapath's PyPy (Python 3.9) does not have.
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_OPENING = frozenset("[{")


class NoReply(ProtocolError):
    """The other end hung up (or reset the connection) before its whole reply came: it
    stopped, crashed or was killed while it had the request."""


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """The JSON object on ``line`` (UTF-8), or ``ProtocolError`` saying what is wrong."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ProtocolError(f"not a JSON line: byte {err.start} is not UTF-8") from None
    if nested_deeper_than(text, MAX_DEPTH):
        raise ProtocolError(f"not a JSON line vnet takes: arrays and objects nested more "
                            f"than {MAX_DEPTH} deep")
    try:
        message = json.loads(text, parse_int=_bounded_int)
    except json.JSONDecodeError as err:
        raise ProtocolError(f"not a JSON line: {err}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    return message


def nested_deeper_than(text: str, limit: int) -> bool:
    """Do arrays and objects in ``text`` nest more than ``limit`` deep?  Counted without
    recursion and without decoding, so any input is safe to ask about."""
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        char = text[match.start()]
        if char == '"':
            continue
        depth += 1 if char in _OPENING else -1
        if depth > limit:
            return True
    return False


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_DIGITS:
        raise ProtocolError(f"not a JSON line vnet takes: a number of {len(digits)} digits "
                            f"(at most {MAX_DIGITS})")
    return int(digits)


def ok(result: Any = None) -> dict[str, Any]:
    return {"ok": True, "result": result}


def failed(error: str) -> dict[str, Any]:
    return {"ok": False, "error": error}


def backoff(patience: float, first: float = 0.02, cap: float = 0.5) -> Iterator[float]:
    """The pauses between tries of something that may soon succeed: doubling from ``first``
    up to ``cap`` each, ending before they add up to more than ``patience`` seconds."""
    pause, waited = first, 0.0
    while waited + pause <= patience:
        yield pause
        waited += pause
        pause = min(pause * 2, cap)


def connect(path: str, timeout: float | None = 60.0, patience: float = 0.0,
            retry: tuple[type[OSError], ...] = (BlockingIOError,)) -> socket.socket:
    """A connection to the Unix socket ``path``.  A connect failing with one of ``retry``
    (by default ``BlockingIOError``: the listener's backlog is full) is tried again, with
    back-off, for up to ``patience`` seconds; the last failure is raised."""
    pauses = backoff(patience)
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            return sock
        except retry:
            sock.close()
            pause = next(pauses, None)
            if pause is None:
                raise
            time.sleep(pause)
        except BaseException:
            sock.close()
            raise


def exchange(sock: socket.socket, request: dict[str, Any],
             on_progress: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Send one request on ``sock`` and return its reply; ``NoReply`` if the other end
    hangs up first (it may have answered before hanging up on a request it refused, so its
    answer is read even when sending failed).  Lines ``{"progress": ...}`` before the reply
    (a request that asked for them) go to ``on_progress``, or are skipped."""
    peer = sock.getpeername() or "the other end"
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(encode(request))
    reader = sock.makefile("rb")
    while True:
        try:
            line = reader.readline(MAX_LINE)
        except ConnectionResetError:
            line = b""
        if not line.endswith(b"\n"):
            raise NoReply(f"{peer} closed the connection without a reply")
        reply = decode(line)
        if "progress" not in reply or "ok" in reply:
            return reply
        if on_progress is not None:
            on_progress(reply["progress"])


def call(path: str, request: dict[str, Any], timeout: float | None = 60.0,
         patience: float = 0.0) -> dict[str, Any]:
    """Send one request over a fresh connection to the Unix socket ``path``; return the reply.
    (``patience``: how long a connect refused for a full backlog is retried.)"""
    with connect(path, timeout, patience) as sock:
        return exchange(sock, request)
