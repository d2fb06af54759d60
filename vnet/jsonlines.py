"""The wire format of vnet's local control channels: one JSON object per line.

Used between the CLI and vnetd and between vnetd and the datapath.  A request is
``{"op": NAME, ...arguments}``; a reply is ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": MESSAGE}`` where MESSAGE is meant for the user.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from vnet.errors import ProtocolError

__all__ = ["MAX_LINE", "ProtocolError", "call", "decode", "encode", "failed", "ok"]

MAX_LINE = 16 << 20  # a topology file plus slack; longer lines are refused, not buffered forever


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"not a JSON line: {err}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    return message


def ok(result: Any = None) -> dict[str, Any]:
    return {"ok": True, "result": result}


def failed(error: str) -> dict[str, Any]:
    return {"ok": False, "error": error}


def call(path: str, request: dict[str, Any], timeout: float | None = 60.0) -> dict[str, Any]:
    """Send one request over a fresh connection to the Unix socket ``path``; return the reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(encode(request))
        reader = sock.makefile("rb")
        line = reader.readline(MAX_LINE)
    if not line:
        raise ProtocolError(f"{path} closed the connection without a reply")
    return decode(line)
