"""vnetd's API edge without root: requests are checked before any handler runs, and every
reply is meant for the user (a handler's bug is logged, not shown)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from vnet import jsonlines
from vnet.daemon.api import INTERNAL_ERROR, ApiServer
from vnet.daemon.defaults import API_VERSION
from vnet.daemon.requests import (
    REQUESTS,
    ConsoleRequest,
    ExecRequest,
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
    assert parse_request({"op": "exec", "node": "c1", "command": ["sh", "-c", "a b"],
                          "env": ["A=1\n2", "B="]}) == ExecRequest(
        "c1", ["sh", "-c", "a b"], ["A=1\n2", "B="])
    assert parse_request({"op": "console", "node": "vm1"}) == ConsoleRequest("vm1", "log")


@pytest.mark.parametrize(("message", "expected"), [
    ({"op": "teleport"}, "unknown operation 'teleport'; this vnetd knows: capture, console, "
                         "down, exec, fdb, node, ping, shutdown, status, trace, up, vm"),
    ({"op": "exec", "node": "n0", "command": "ls"}, "exec: argument 'command' must be a list, "
     "each item a command-line argument (Unicode, no NUL byte), not the string 'ls'"),
    ({"op": "exec", "node": "n0", "command": ["ls", 3]}, "argument 'command' must be a list,"),
    ({"op": "exec", "node": "n0", "command": ["ls"], "env": ["NOEQUALS"]},
     "argument 'env' must be a list, each item an environment entry (NAME=VALUE, Unicode, no "
     "NUL byte) or null, not a list"),
    ({"op": "console", "node": "vm1", "action": "detach"},
     "console: argument 'action' must be one of 'log', 'attach', not the string 'detach'"),
    ({"lab": "x"}, 'a request needs an "op"; this vnetd knows: capture, console, down,'),
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
                              "(1024 bytes); a topology file is normally a few KiB",
        "api": API_VERSION}]
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
    assert replies == [{"ok": True, "result": {"op": "ping"}, "api": API_VERSION},
                       {"ok": True, "result": {"lab": None}, "api": API_VERSION}]
    assert mode == 0o660   # the owner (root) and access.group


def test_a_server_without_a_handler_for_every_operation_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="handlers for"):
        ApiServer(tmp_path / "api.sock", {"ping": Handlers().table()["ping"]})


# ---- the API under hostile input and idle clients ------------------------------------------

NASTY_VALUES: list[Any] = [
    None, True, False, 0, -1, 2**64, -(10**99), 1.5, -0.0, 1e308, float("inf"), "", " ",
    "a", "c1", "vm1", "lab", "start", "pair", "a\0b", "\0", "../../etc/passwd", "/", "/x\0",
    "x" * 5000, "Pair", "lab.json", "ü", "\ud800", "\udcff", "a b", "-a", [], {}, ["a"],
    {"lab": "x"}, [[[[[]]]]], {"a": {"b": {"c": None}}}, "1" * 99,
]
NASTY_OPS: list[Any] = ["", "UP", "teleport", "up\0", 7, None, [], {}, True, "x" * 10_000]
GOOD_VALUES = {"lab": "pair", "node": "c1", "action": "start", "source": "/labs/x.yaml",
               "text": "name: x", "frame": "ff" * 14, "nic": "eth0", "all": False, "force": False,
               "direction": "both", "progress": False, "command": ["true"], "env": ["A=b"],
               "cwd": "/"}
TEXTS = ["", "name: x", "- 1", "{a: b}", "name: x\nnetworks: 5\nnodes: []\n",
         "name: x\nnetworks: {n: {vlan: a}}\nnodes: {c1: {kind: vm, kernel: ../k}}\n",
         "name: x\nnetworks: []\nnodes: {c1: [1]}\n", "\t", "name: [x]", "name: Pair\n"]


def nasty_lines(count: int, seed: int) -> list[bytes]:
    """Malformed requests: each operation's arguments missing, mistyped, misshapen or
    unknown; unknown operations; non-object JSON, broken JSON, deep nesting, huge numbers,
    bytes that are not UTF-8."""
    rnd = random.Random(seed)
    lines = [b"", b"\n", b"null", b"[]", b"7", b'"up"', b"{", b"}", b"\xff\xfe", b"\x00",
             b"[" * 100_000, b'{"op": "status", "lab": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
             b'{"op": "down", "lab": ' + b"9" * 5000 + b"}", b'{"op": NaN}',
             b'{"op": "down", "lab": Infinity}', b'{"op": "down", "op": 5}',
             b'{"op": "up", "text": "\\ud800", "source": "/x"}', b'{"op":"ping"}' * 3]
    while len(lines) < count:
        if rnd.random() < 0.2:
            message: dict[str, Any] = {} if rnd.random() < 0.2 else {"op": rnd.choice(NASTY_OPS)}
        else:
            cls = rnd.choice(list(REQUESTS.values()))
            message = {"op": cls.op, **{f.name: GOOD_VALUES[f.name] for f in fields(cls)}}
            for _ in range(rnd.randint(1, 3)):
                own = [f.name for f in fields(cls)]
                name = rnd.choice(own if own and rnd.random() < 0.8 else ["x", "", "lab\0", "op"])
                choice = rnd.random()
                if choice < 0.1:
                    message.pop(name, None)
                elif name == "text" and choice < 0.5:
                    message[name] = rnd.choice(TEXTS)
                else:
                    message[name] = rnd.choice(NASTY_VALUES)
        line = json.dumps(message).encode()
        if rnd.random() < 0.1:      # break the JSON itself
            cut = rnd.randrange(len(line) + 1)
            line = line[:cut] + rnd.choice([b"", b"\xff", b"[", b"\x00", b'"', b"}}"])
        lines.append(line)
    return lines


def real_server(tmp_path: Path) -> ApiServer:
    """vnetd's own handlers, on an empty state directory: nothing a request names exists.
    Only what needs root or a datapath is stood in for: building a lab (which a fuzzed
    request never reaches: its topology is refused first), stopping, the datapath."""
    from vnet.daemon.service import Vnetd

    daemon = Vnetd(tmp_path / "vnetd.sock", tmp_path / "state")

    async def realise_part(topology: Any) -> dict[str, Any]:
        raise AssertionError(f"a fuzzed request reached realisation: {topology}")

    async def stop(everything: bool | None = None) -> None:
        pass

    async def datapath(request: Any) -> Any:
        return [] if type(request).__name__ == "GetFdb" else {}

    daemon.realise_part = realise_part      # type: ignore[method-assign]
    daemon.stop = stop                      # type: ignore[method-assign]
    daemon.datapath.call = datapath         # type: ignore[method-assign]
    return daemon.api


def test_no_malformed_request_is_an_internal_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every bad input is a request error that says what is wrong (briefly: an answer never
    quotes megabytes); an internal error would mean a bug.  Before the requests' values
    were checked, a NUL byte in a lab name was ``ValueError('embedded null byte')``, a
    long one ``OSError(36)``, deep nesting a ``RecursionError`` that dropped the client
    and a 5000-digit number a ``ValueError`` that did too."""
    server = real_server(tmp_path)

    async def answers() -> list[tuple[bytes, dict[str, Any]]]:
        return [(line, await server.handle(line)) for line in nasty_lines(3000, seed=16)]

    with caplog.at_level(logging.ERROR, logger="vnet"):
        replies = asyncio.run(answers())
    assert not caplog.records, caplog.text
    for line, reply in replies:
        assert isinstance(reply.get("ok"), bool), (line[:200], reply)
        if not reply["ok"]:
            error = reply["error"]
            assert isinstance(error, str) and error != INTERNAL_ERROR, (line[:200], reply)
            assert len(error) < 2000 and "Traceback" not in error, (line[:200], reply)
    refused = sum(not reply["ok"] for _, reply in replies)
    assert refused > 2900, f"only {refused} refused: the fuzzing lost its teeth"


def test_a_lab_name_that_is_no_lab_name_is_a_request_error() -> None:
    for lab in ("a\0b", "x" * 300, "../../etc", "Pair", "\ud800"):
        with pytest.raises(RequestError, match="argument 'lab' must be a lab name"):
            parse_request({"op": "down", "lab": lab})
    with pytest.raises(RequestError, match="with a NUL byte at character 2"):
        parse_request({"op": "up", "text": "n\0ame: x", "source": "/x.yaml"})
    with pytest.raises(RequestError, match=r"'xxxx.*\.\.\. \(100000 characters\)"):
        parse_request({"op": "up", "text": "x", "source": "x" * 100_000})
    with pytest.raises(RequestError, match="and 3 more problems"):
        parse_request({"op": "ping", **{f"a{i}": i for i in range(13)}})


async def client_scenario(server: ApiServer, scenario: Any) -> Any:
    await server.start()
    try:
        return await asyncio.wait_for(scenario(), 30)
    finally:
        await server.stop()


def test_idle_and_half_sent_requests_are_hung_up_on_with_a_reason(tmp_path: Path) -> None:
    server = ApiServer(tmp_path / "api.sock", Handlers().table(), idle_timeout=0.2)

    async def scenario() -> list[list[bytes]]:
        idle = await asyncio.open_unix_connection(str(server.path))
        half = await asyncio.open_unix_connection(str(server.path))
        half[1].write(b'{"op": "ping"')
        await half[1].drain()
        return [[line async for line in reader] for reader, _ in (idle, half)]

    idle, half = asyncio.run(client_scenario(server, scenario))
    expected = {"ok": False, "error": "bad request: no whole request line came within 0.2 s; "
                                      "vnetd hangs up on idle connections",
                "api": API_VERSION}
    assert [json.loads(line) for line in idle] == [expected]
    assert [json.loads(line) for line in half] == [expected]


def test_clients_over_the_limit_are_told_vnetd_is_busy(tmp_path: Path) -> None:
    server = ApiServer(tmp_path / "api.sock", Handlers().table(), max_clients=2)

    async def scenario() -> tuple[list[bytes], dict[str, Any]]:
        held = [await asyncio.open_unix_connection(str(server.path)) for _ in range(2)]
        reader, _ = await asyncio.open_unix_connection(str(server.path))
        refused = [line async for line in reader]
        held[0][1].close()
        await held[0][1].wait_closed()
        while server.clients > 1:          # the server has let go of the closed one
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_unix_connection(str(server.path))
        writer.write(b'{"op": "ping"}\n')
        return refused, json.loads(await reader.readline())

    refused, later = asyncio.run(client_scenario(server, scenario))
    assert [json.loads(line) for line in refused] == [{
        "ok": False, "error": "vnetd is busy: 2 clients are connected; try again",
        "api": API_VERSION}]
    assert later == {"ok": True, "result": {"op": "ping"}, "api": API_VERSION}


def test_a_client_that_does_not_read_its_replies_is_cut_off(tmp_path: Path) -> None:
    big = {"x": "y" * (1 << 20)}

    async def status(request: StatusRequest) -> Any:
        return big

    handlers = {**Handlers().table(), "status": status}
    server = ApiServer(tmp_path / "api.sock", handlers, idle_timeout=0.2)

    async def scenario() -> int:
        _, writer = await asyncio.open_unix_connection(str(server.path))
        writer.write(b'{"op": "status"}\n' * 64)   # 64 MiB of replies it never reads
        await writer.drain()
        while server.clients:                   # until the server has cut it off
            await asyncio.sleep(0.01)
        return server.clients

    assert asyncio.run(client_scenario(server, scenario)) == 0


def test_a_long_line_is_decoded_off_the_event_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A few MiB take a while to decode and check: done in a thread, the loop answers the
    other clients meanwhile."""
    import threading

    loop_thread = threading.get_ident()
    decoded_in: list[bool] = []
    real_decode = jsonlines.decode

    def decode(line: bytes) -> dict[str, Any]:
        decoded_in.append(threading.get_ident() == loop_thread)
        return real_decode(line)

    monkeypatch.setattr(jsonlines, "decode", decode)
    server = serve(tmp_path)
    big = jsonlines.encode({"op": "up", "text": "x" * (2 << 20), "source": "/big.yaml"})
    assert answer(server, b'{"op": "ping"}\n')["ok"]
    assert answer(server, big)["ok"]
    assert decoded_in == [True, False]


def test_a_request_that_asks_hears_its_progress_before_the_reply(tmp_path: Path) -> None:
    """``"progress": true``: the handler's reports (``vnet.daemon.progress``) come as
    ``{"progress": ...}`` lines, then the reply; a request that does not ask hears none."""
    from vnet.daemon import progress

    async def up(request: Any) -> Any:
        for done in (1, 2):
            progress.report(progress.Progress("making", "netns-node", done, 2))
        return {"lab": "x"}

    server = ApiServer(tmp_path / "api.sock", {**Handlers().table(), "up": up})

    async def scenario() -> list[list[dict[str, Any]]]:
        heard = []
        for asks in (True, False):
            reader, writer = await asyncio.open_unix_connection(str(server.path))
            writer.write(jsonlines.encode({"op": "up", "text": "name: x", "source": "x.yaml",
                                           "progress": asks}))
            await writer.drain()
            lines = [jsonlines.decode(await reader.readline())]
            while "ok" not in lines[-1]:
                lines.append(jsonlines.decode(await reader.readline()))
            heard.append(lines)
            writer.close()
        return heard

    asked, silent = asyncio.run(client_scenario(server, scenario))
    event = {"verb": "making", "kind": "netns-node", "total": 2}
    assert asked[:2] == [{"progress": {**event, "done": 1}, "api": API_VERSION},
                         {"progress": {**event, "done": 2}, "api": API_VERSION}]
    assert asked[2]["ok"] and asked[2]["result"] == {"lab": "x"} and len(asked) == 3
    assert len(silent) == 1 and silent[0]["ok"]
