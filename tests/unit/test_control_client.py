"""vnetd's one pipelined connection to the datapath (no root: a real datapath process with no
ports, and a scripted server for the failure cases)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vnet.daemon.controlclient import ControlClient
from vnet.datapath import protocol
from vnet.errors import DatapathError
from vnet.testing import wait_until


@pytest.fixture
def datapath(tmp_path: Path) -> Iterator[Path]:
    """A datapath process without ports; its control socket."""
    path = tmp_path / "dp.sock"
    process = subprocess.Popen([sys.executable, "-m", "vnet.datapath.main", "--control",
                                str(path)], stderr=subprocess.DEVNULL)
    try:
        wait_until(path.exists, 30, "the datapath's control socket")
        yield path
    finally:
        process.terminate()
        process.wait(10)


def test_concurrent_callers_share_one_connection_and_get_their_own_replies(
        datapath: Path) -> None:
    client = ControlClient(datapath)

    async def scenario() -> list[object]:
        await client.call(protocol.AddBridge("one", ()))
        # 500 at once, of different kinds: each gets the reply to its own request
        calls = [client.call(protocol.GetFdbSize("one")) if i % 2 else
                 client.call(protocol.GetStats("one")) for i in range(500)]
        results = await asyncio.gather(*calls)
        wrong = await asyncio.gather(client.call(protocol.GetFdbSize("nope")),
                                     client.call(protocol.Ping()), return_exceptions=True)
        client.close()
        return [*results, *wrong]

    results = asyncio.run(scenario())
    assert results[:500] == [0 if i % 2 else {"one": {}} for i in range(500)]
    assert isinstance(results[500], DatapathError) and "no bridge 'nope'" in str(results[500])
    assert isinstance(results[501], dict) and results[501]["bridges"] == ["one"]


async def _scripted_server(path: Path, replies: list[bytes | None]) -> asyncio.Server:
    """Answers each request line with the next of ``replies``: bytes are written, None
    closes the connection (the datapath died)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readline():
            reply = replies.pop(0)
            if reply is None:
                writer.close()
                return
            writer.write(reply)

    return await asyncio.start_unix_server(serve, str(path))


def _ok(result: object) -> bytes:
    return json.dumps({"ok": True, "result": result}).encode() + b"\n"


def test_a_caller_that_times_out_leaves_the_replies_matched(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"

    async def scenario() -> tuple[object, object]:
        hold = asyncio.Event()
        replies: list[bytes | None] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            await hold.wait()            # the first request is answered late ...
            writer.write(_ok("first"))
            await reader.readline()
            writer.write(_ok("second"))
            replies.append(None)

        server = await asyncio.start_unix_server(serve, str(path))
        client = ControlClient(path, timeout=0.2)
        with pytest.raises(DatapathError, match="did not answer 'ping' within"):
            await client.call(protocol.Ping())
        hold.set()
        second = await client.call(protocol.Ping())   # ... and that reply is not this one's
        client.close()
        server.close()
        return second, replies

    second, _ = asyncio.run(scenario())
    assert second == "second"


def test_a_broken_connection_fails_who_waits_and_the_next_call_reconnects(
        tmp_path: Path) -> None:
    path = tmp_path / "s.sock"

    async def scenario() -> tuple[list[object], object]:
        server = await _scripted_server(path, [None, _ok("again")])
        client = ControlClient(path)
        waiting: list[object] = list(await asyncio.gather(
            client.call(protocol.Ping()), client.call(protocol.GetStats()),
            return_exceptions=True))
        again = await client.call(protocol.Ping())
        client.close()
        server.close()
        return waiting, again

    waiting, again = asyncio.run(scenario())
    assert [str(e) for e in waiting] == [
        "the datapath closed the connection during 'ping'",
        "the datapath closed the connection during 'stats'"]
    assert again == "again"


def test_no_datapath_is_a_clear_error(tmp_path: Path) -> None:
    client = ControlClient(tmp_path / "none.sock")
    with pytest.raises(DatapathError, match=r"not reachable: its control socket .* is missing"):
        asyncio.run(client.call(protocol.Ping()))
