"""vnetd's API edge without root: requests are checked before any handler runs, and every
reply is meant for the user (a handler's bug is logged, not shown)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from vnet import jsonlines
from vnet.daemon.api import INTERNAL_ERROR, ApiServer
from vnet.daemon.requests import (
    REQUESTS,
    NodeRequest,
    RequestError,
    StatusRequest,
    UpRequest,
    VmRequest,
    parse_request,
)
from vnet.errors import DaemonError


def test_a_well_formed_request_becomes_its_dataclass() -> None:
    assert parse_request({"op": "up", "text": "name: x", "source": "/x.yaml"}) == UpRequest(
        "name: x", "/x.yaml")
    assert parse_request({"op": "status", "lab": None}) == StatusRequest(None)
    assert parse_request({"op": "status"}) == StatusRequest()
    assert parse_request({"op": "vm", "action": "stop", "node": "vm1"}) == VmRequest(
        "stop", "vm1")
    assert parse_request({"op": "node", "node": "c1", "lab": "l"}) == NodeRequest("c1", "l")


@pytest.mark.parametrize(("message", "expected"), [
    ({"op": "teleport"}, "unknown operation 'teleport'; this vnetd knows: down, fdb, node, "
                         "ping, shutdown, status, up, vm"),
    ({"lab": "x"}, 'a request needs an "op"; this vnetd knows: down,'),
    ({"op": 7}, "unknown operation 7"),
    ({"op": "up", "text": "name: x"},
     "up: missing argument 'source': a path (at most 4096 characters, no NUL byte)"),
    ({"op": "down", "lab": "x", "force": True},
     "down: unknown argument 'force'; down takes lab"),
    ({"op": "ping", "verbose": 1}, "ping: unknown argument 'verbose'; ping takes none"),
    ({"op": "down", "lab": 5}, "down: argument 'lab' must be a lab name (a lower-case letter, "
     "then up to 15 lower-case letters, digits or '-': the lab name is part of kernel object "
     "names), not the number 5"),
    ({"op": "status", "lab": ["a"]}, "status: argument 'lab' must be a lab name (a lower-case "
     "letter, then up to 15 lower-case letters, digits or '-': the lab name is part of kernel "
     "object names) or null, not a list"),
    ({"op": "vm", "action": "pause", "node": "vm1"},
     "vm: argument 'action' must be one of 'start', 'stop', 'restart', not the string 'pause'"),
])
def test_a_bad_request_says_what_is_wrong(message: dict[str, Any], expected: str) -> None:
    with pytest.raises(RequestError) as err:
        parse_request(message)
    assert expected in str(err.value)


def test_every_problem_of_a_request_is_said_at_once() -> None:
    with pytest.raises(RequestError) as err:
        parse_request({"op": "vm", "action": True, "lab": 3, "colour": "red"})
    text = str(err.value)
    assert text.startswith("vm: ")
    for part in ("unknown argument 'colour'", "argument 'action' must be one of",
                 "not true", "missing argument 'node'", "argument 'lab' must be a lab name (",
                 ") or null, not the number 3"):
        assert part in text, text


class Handlers:
    """One handler per operation: ``status`` says where it was asked about, ``fdb`` refuses
    as vnetd refuses, ``node`` has a bug."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def table(self) -> dict[str, Any]:
        async def record(request: Any) -> Any:
            self.seen.append(request)
            return {"op": request.op}

        async def status(request: StatusRequest) -> Any:
            return {"lab": request.lab}

        async def refuse(request: Any) -> Any:
            raise DaemonError("lab 'x' is not up on this host")

        async def buggy(request: NodeRequest) -> Any:
            return len(request)  # type: ignore[arg-type]  # TypeError: the bug under test

        return {**{op: record for op in REQUESTS}, "status": status, "fdb": refuse,
                "node": buggy}


def serve(tmp_path: Path, max_line: int = jsonlines.MAX_LINE) -> ApiServer:
    return ApiServer(tmp_path / "api.sock", Handlers().table(), max_line=max_line)


def answer(server: ApiServer, line: bytes) -> dict[str, Any]:
    return asyncio.run(server.handle(line))


def test_replies_to_good_and_refused_requests(tmp_path: Path) -> None:
    server = serve(tmp_path)
    assert answer(server, b'{"op": "status", "lab": "a"}\n') == {"ok": True,
                                                                  "result": {"lab": "a"}}
    assert answer(server, b'{"op": "fdb", "lab": "x"}\n') == {
        "ok": False, "error": "lab 'x' is not up on this host"}


@pytest.mark.parametrize(("line", "expected"), [
    (b"{not json\n", "bad request: not a JSON line"),
    (b"[1, 2]\n", "bad request: a message must be a JSON object"),
    (b"\xff\xfe\n", "bad request: not a JSON line"),
    (b'{"op": "status", "lab": 1}\n', "bad request: status: argument 'lab' must be a lab name"),
    (b'{"op": "nope"}\n', "bad request: unknown operation 'nope'"),
])
def test_malformed_lines_get_a_clear_refusal(tmp_path: Path, line: bytes, expected: str) -> None:
    reply = answer(serve(tmp_path), line)
    assert reply["ok"] is False and reply["error"].startswith(expected), reply


def test_a_bug_in_a_handler_is_logged_and_answered_without_its_repr(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A TypeError inside a handler is vnetd's bug, not "bad arguments" from the user (as
    it was answered before requests were checked at the edge)."""
    with caplog.at_level(logging.ERROR, logger="vnet.api"):
        reply = answer(serve(tmp_path), b'{"op": "node", "node": "c1"}\n')
    assert reply == {"ok": False, "error": INTERNAL_ERROR}
    assert "TypeError" in caplog.text and "Traceback" in caplog.text


def test_a_line_over_the_limit_is_refused_and_the_client_dropped(tmp_path: Path) -> None:
    async def scenario() -> list[bytes]:
        server = serve(tmp_path, max_line=1024)
        await server.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(server.path))
            request = {"op": "up", "text": "x" * 4096, "source": "/big.yaml"}
            writer.write(jsonlines.encode(request) + jsonlines.encode({"op": "ping"}))
            await writer.drain()
            lines = [line async for line in reader]  # until vnetd hangs up
            writer.close()
            return lines
        finally:
            await server.stop()

    lines = asyncio.run(scenario())
    assert [json.loads(line) for line in lines] == [{
        "ok": False, "error": "bad request: the request is longer than vnetd's limit of 1 KiB "
                              "(1024 bytes); a topology file is normally a few KiB"}]
    assert not (tmp_path / "api.sock").exists()


def test_the_socket_answers_line_after_line_and_is_private(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], int]:
        server = serve(tmp_path)
        await server.start()
        try:
            mode = server.path.stat().st_mode & 0o777
            reader, writer = await asyncio.open_unix_connection(str(server.path))
            writer.write(b'{"op": "ping"}\n{"op": "status"}\n')
            await writer.drain()
            replies = [jsonlines.decode(await reader.readline()) for _ in range(2)]
            writer.close()
            return replies, mode
        finally:
            await server.stop()

    replies, mode = asyncio.run(scenario())
    assert replies == [{"ok": True, "result": {"op": "ping"}},
                       {"ok": True, "result": {"lab": None}}]
    assert mode == 0o600


def test_a_server_without_a_handler_for_every_operation_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="handlers for"):
        ApiServer(tmp_path / "api.sock", {"ping": Handlers().table()["ping"]})
