"""The supervisor against real datapath processes (no root: a datapath without ports needs
none): killed over and over, it restarts them as the policy says, gives up, starts again when
asked, and a failure of its own is loud."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from vnet.daemon.restartpolicy import Limits
from vnet.daemon.supervisor import DatapathSupervisor
from vnet.datapath import protocol
from vnet.errors import DatapathError
from vnet.testing import process_alive

FAST = Limits(burst=3, window=30.0, stable=5.0, first_delay=0.01, max_delay=0.05)
DEADLINE = 30.0


async def until(condition: Callable[[], object], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


def supervisor(tmp_path: Path, replayed: list[int]) -> DatapathSupervisor:
    async def replay() -> None:   # what vnetd's program_datapath does, in small
        await sup.call(protocol.AddBridge("lab", ()))
        replayed.append(sup.run)

    sup = DatapathSupervisor(tmp_path / "dp.sock", tmp_path / "dp.log", replay, limits=FAST)
    return sup


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 120))


def test_killed_again_and_again_then_given_up_then_started_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "vnet.supervisor")
    replayed: list[int] = []
    sup = supervisor(tmp_path, replayed)
    seen: list[int] = []

    async def scenario() -> None:
        await sup.start()
        await until(lambda: sup.standby is not None, "a warm spare")
        first = sup.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        # each new one killed as soon as it appears (starting, or being replayed into)
        while sup.health()["state"] != "failed":
            pid = sup.pid
            if pid is not None and pid != first and pid not in seen:
                seen.append(pid)
                os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.0005)
        health = sup.health()
        assert health["message"].startswith("failed: gave up after 4 failures in "), health
        assert sup.pid is None
        # while none runs: a request says why; a deletion is done already
        with pytest.raises(Exception, match="the datapath is not running: failed: gave up"):
            await sup.call(protocol.Ping())
        assert await sup.call(protocol.DelBridge("lab")) is None
        await sup.revive()     # vnet up
        assert sup.health()["state"] == "running" and sup.pid not in (None, first, *seen)
        assert (await sup.call(protocol.Ping()))["bridges"] == ["lab"]
        await sup.stop()

    run(scenario)
    assert len(seen) == 3
    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and
                "killed by SIGKILL" in r.getMessage() and "gave up" not in r.getMessage()]
    assert len(failures) == 4, failures              # a line for each
    assert "Unknown child process" not in caplog.text  # nobody reaped them behind asyncio
    assert replayed[-1] == sup.run                    # the last start was replayed into


def test_a_failure_of_the_supervisor_itself_is_logged_and_shown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    sup = supervisor(tmp_path, [])

    def broken(now: float, why: str) -> float | None:
        raise RuntimeError("a bug in the policy")

    async def scenario() -> None:
        await sup.start()
        monkeypatch.setattr(sup.policy, "failed", broken)
        pid = sup.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await until(lambda: sup.health()["state"] == "failed", "the failure to show")
        assert "supervision of the datapath stopped (RuntimeError('a bug in the policy')" in \
            sup.health()["message"]
        monkeypatch.undo()
        await sup.revive()     # a vnet up starts supervision and a datapath again
        assert sup.health()["state"] == "running"
        await sup.stop()

    run(scenario)
    assert any(r.levelno == logging.CRITICAL and "datapath supervisor failed" in r.getMessage()
               for r in caplog.records), caplog.text


def test_stop_leaves_no_datapath_process(tmp_path: Path) -> None:
    sup = supervisor(tmp_path, [])
    pids: list[int] = []

    async def scenario() -> None:
        await sup.start()
        await until(lambda: sup.standby is not None, "a warm spare")
        assert sup.pid is not None and sup.standby is not None
        pids.extend([sup.pid, sup.standby.pid])
        await sup.stop()

    run(scenario)
    assert not [pid for pid in pids if process_alive(pid)]


def test_a_replay_that_fails_is_logged_and_shown_and_the_datapath_stays(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def replay() -> None:
        raise DatapathError("datapath add_port: cannot open port 'c1.eth0' on 'vn1': "
                            "No such device")

    sup = DatapathSupervisor(tmp_path / "dp.sock", tmp_path / "dp.log", replay, limits=FAST,
                             spare=False)

    async def scenario() -> None:
        await sup.start()
        first = sup.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await until(lambda: sup.pid not in (None, first) and sup.replay_error,
                    "the restart and its failed replay")
        health = sup.health()
        assert health["state"] == "running", health
        assert health["message"].endswith("; replaying the lab records into it failed: "
                                          "datapath add_port: cannot open port 'c1.eth0' on "
                                          "'vn1': No such device"), health
        assert (await sup.call(protocol.Ping()))["pid"] == sup.pid   # it still serves
        await sup.stop()

    run(scenario)
    assert "replaying the lab records into the new datapath failed" in caplog.text
