"""The datapath's control protocol without root: operations that need no packet socket."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from vnet.datapath.engine import Datapath
from vnet.datapath.protocol import VERSION
from vnet.host.ring import BLOCK_SIZE, _ring_request


def _call(dp: Datapath, **request: object) -> dict[str, object]:
    return dp.control.answer(json.dumps({"v": VERSION, **request}).encode())


def test_fdb_size_and_flush_on_an_empty_bridge(tmp_path: Path) -> None:
    dp = Datapath(str(tmp_path / "dp.sock"))
    try:
        assert _call(dp, op="add_bridge", bridge="lab", vlans=[{"vid": 10}])["ok"]
        assert _call(dp, op="fdb_size", bridge="lab") == {"ok": True, "result": 0}
        assert _call(dp, op="flush_fdb", bridge="lab") == {"ok": True, "result": None}
        reply = _call(dp, op="fdb_size", bridge="nope")
        assert not reply["ok"] and "no bridge 'nope'" in str(reply["error"])
        assert not _call(dp, op="frobnicate")["ok"]
    finally:
        dp.close()


def test_io_mode_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="io must be one of"):
        Datapath(str(tmp_path / "dp.sock"), io="dpdk")


def test_ring_request_fills_whole_blocks() -> None:
    req = _ring_request(2048, 1000)
    block_size, blocks, frame_size, frames = (int.from_bytes(req[i:i + 4], "little")
                                              for i in range(0, 16, 4))
    assert block_size == BLOCK_SIZE and frame_size == 2048
    assert frames == blocks * (BLOCK_SIZE // 2048) >= 1000


def test_vnetd_refuses_a_datapath_interpreter_that_is_not_there() -> None:
    import sys

    from vnet.daemon.main import datapath_python
    from vnet.errors import VnetError

    assert datapath_python(None) == sys.executable
    with pytest.raises(VnetError, match="no such interpreter; install it"):
        datapath_python("no-such-python-3000")


def test_a_dying_datapath_leaves_its_successors_control_socket(tmp_path: Path) -> None:
    """vnetd killed -9 and started again: the new vnetd's datapath binds the control socket
    while the old one (SIGTERMed by PR_SET_PDEATHSIG) is still shutting down.  The old one
    must not unlink the new one's socket on its way out."""
    path = str(tmp_path / "dp.sock")
    old = Datapath(path)
    new = Datapath(path)          # unlinks the old one's file and binds its own
    try:
        old.close()
        assert Path(path).is_socket(), "the old datapath removed its successor's socket"
    finally:
        new.close()
    assert not Path(path).exists()


@pytest.fixture
def running_datapath(tmp_path: Path) -> Iterator[str]:
    """A datapath with no ports, its loop running in a thread; its control socket's path."""
    path = str(tmp_path / "dp.sock")
    dp = Datapath(path)
    loop = threading.Thread(target=dp.run, daemon=True)
    loop.start()
    try:
        yield path
    finally:
        dp.running = False
        loop.join(10)


def _line(request: dict[str, object]) -> bytes:
    return json.dumps({"v": VERSION, **request}).encode() + b"\n"


def test_many_concurrent_connections_are_all_answered(running_datapath: str) -> None:
    """300 clients connect at once: each gets its reply (with a backlog of 16 and one accept
    per wake-up, connects failed and vnetd's status calls with them)."""

    async def one() -> bool:
        reader, writer = await asyncio.open_unix_connection(running_datapath)
        writer.write(_line({"op": "ping"}))
        line = await reader.readline()
        writer.close()
        return bool(json.loads(line)["ok"])

    async def all_of_them() -> list[bool | BaseException]:
        return await asyncio.gather(*(one() for _ in range(300)), return_exceptions=True)

    results = asyncio.run(asyncio.wait_for(all_of_them(), 60))
    assert results == [True] * 300, [r for r in results if r is not True][:3]


def test_a_client_that_does_not_read_stalls_only_itself(running_datapath: str) -> None:
    """A client sends many requests with big replies and reads none of them: the loop goes
    on (it used to block in sendall, and with it every port's forwarding)."""
    names = [f"bridge-{i:04d}-" + "x" * 40 for i in range(400)]
    with socket.socket(socket.AF_UNIX) as setup:
        setup.connect(running_datapath)
        reader = setup.makefile("rb")
        for name in names:
            setup.sendall(_line({"op": "add_bridge", "bridge": name, "vlans": []}))
            assert json.loads(reader.readline())["ok"]
    with socket.socket(socket.AF_UNIX) as greedy, socket.socket(socket.AF_UNIX) as other:
        greedy.connect(running_datapath)
        greedy.sendall(_line({"op": "ping"}) * 200)   # ~4 MB of replies, never read
        other.connect(running_datapath)
        other.settimeout(10)
        other.sendall(_line({"op": "ping"}))
        reply = json.loads(other.makefile("rb").readline())
        assert reply["ok"] and len(reply["result"]["bridges"]) == 400
        # and the greedy one gets every reply, in order, once it reads
        greedy.settimeout(10)
        replies = greedy.makefile("rb")
        assert all(json.loads(replies.readline())["ok"] for _ in range(200))
