"""vnetd asking a VM runner's control socket for status: an answer, a runner that says
nothing, a socket that is not there (real Unix sockets, no root)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from vnet import jsonlines
from vnet.daemon.vms import ask_runner, runner_unreachable


async def serve(path: Path, reply: bytes | None) -> asyncio.AbstractServer:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        if reply is None:
            await asyncio.sleep(3600)  # a wedged runner
        writer.write(reply or b"")
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(client, str(path))


def test_a_runner_that_answers(tmp_path: Path) -> None:
    async def scenario() -> dict[str, object]:
        path = tmp_path / "c.sock"
        async with await serve(path, json.dumps({"ok": True, "result": {"state": "running"}})
                               .encode() + b"\n"):
            return await ask_runner(path, {"op": "status"})

    assert asyncio.run(scenario()) == {"state": "running"}


def test_a_runner_that_says_nothing_is_given_up_on(tmp_path: Path) -> None:
    async def scenario() -> str:
        path = tmp_path / "c.sock"
        async with await serve(path, None):
            with pytest.raises(TimeoutError) as caught:
                await ask_runner(path, {"op": "status"}, timeout=0.2)
        return runner_unreachable(caught.value, 0.2)

    assert asyncio.run(scenario()) == "no answer within 0.2 s"


def test_a_refusal_or_no_socket_says_why(tmp_path: Path) -> None:
    async def refused() -> str:
        path = tmp_path / "c.sock"
        async with await serve(path, b'{"ok": false, "error": "between boots"}\n'):
            with pytest.raises(jsonlines.ProtocolError) as caught:
                await ask_runner(path, {"op": "status"})
        return runner_unreachable(caught.value)

    assert asyncio.run(refused()) == "bad answer: between boots"

    async def missing() -> str:
        with pytest.raises(FileNotFoundError) as caught:
            await ask_runner(tmp_path / "none.sock", {"op": "status"})
        return runner_unreachable(caught.value)

    assert asyncio.run(missing()) == "its control socket is not there (yet)"
