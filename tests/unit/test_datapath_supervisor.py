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

from vnet.daemon.datapathprocess import AdoptedDatapath
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


def lifeline_holder(pid: int) -> str | None:
    """What the datapath holds at its highest fd number (where its lifeline is)."""
    limits = Path(f"/proc/{pid}/limits").read_text()
    soft = next(line.split()[3] for line in limits.splitlines()
                if line.startswith("Max open files"))
    high = (65536 if soft == "unlimited" else min(int(soft), 65536)) - 1
    try:
        return os.readlink(f"/proc/{pid}/fd/{high}")
    except FileNotFoundError:
        return None


def adopting(tmp_path: Path, scenario: Callable[[DatapathSupervisor, int], Awaitable[None]]
             ) -> None:
    """A first vnetd's supervisor leaves its datapath running; a second adopts it."""
    first, second = supervisor(tmp_path, []), supervisor(tmp_path, [])

    async def both() -> None:
        await first.start()
        pid = first.pid
        assert pid is not None
        assert (lifeline_holder(pid) or "").startswith("pipe:"), "no lifeline from the spawn"
        await first.stop(keep_running=True)
        await second.start()
        try:
            assert second.adopted and second.pid == pid
            await scenario(second, pid)
        finally:
            await second.stop()

    run(both)


def test_an_adopted_datapath_gets_a_new_lifeline_and_its_death_is_heard(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "vnet.supervisor")

    async def scenario(sup: DatapathSupervisor, pid: int) -> None:
        assert isinstance(sup.child, AdoptedDatapath) and sup.child.has_lifeline
        # the old pipe's place, at the highest fd number, now holds the new connection
        assert (lifeline_holder(pid) or "").startswith("socket:"), lifeline_holder(pid)
        os.kill(pid, signal.SIGKILL)
        await until(lambda: sup.pid not in (None, pid) and sup.health()["state"] == "running",
                    "a new datapath after the kill")
        assert (await sup.call(protocol.Ping()))["pid"] == sup.pid

    adopting(tmp_path, scenario)
    assert "with a lifeline to it" in caplog.text
    assert "the datapath (pid " in caplog.text


def test_the_lifeline_tells_of_a_death_before_the_pidfd_does(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Its end is heard on its own, while the process has not exited (what a dying
    datapath's end looks like before its sockets' teardown): here another lifeline takes its
    place, and the supervisor takes the datapath for dead, kills it and starts another."""
    caplog.set_level(logging.INFO, "vnet.supervisor")

    async def scenario(sup: DatapathSupervisor, pid: int) -> None:
        reader, writer = await asyncio.open_unix_connection(str(sup.control_path))
        writer.write(protocol.encode(protocol.Lifeline()))
        # the reply, or nothing: the supervisor may kill it between the dup2 and the send
        reply = await reader.readline()
        assert reply == b"" or reply.startswith(b'{"ok":true'), reply
        await until(lambda: sup.pid not in (None, pid), "a new datapath")
        await until(lambda: not process_alive(pid), "the old one killed")
        writer.close()

    adopting(tmp_path, scenario)
    # How it died is read from /proc while it is a zombie; here its parent is this test's
    # process, whose child watcher may reap it first: then vnetd cannot see the status.
    assert ("was killed by SIGKILL" in caplog.text
            or "its exit status is not vnetd's to see" in caplog.text), caplog.text


def test_a_datapath_without_the_lifeline_request_is_watched_by_its_pidfd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """An older datapath (no ``lifeline`` request): adopted all the same, its death heard
    through its pidfd, and the log says why it is heard later."""
    caplog.set_level(logging.INFO, "vnet.supervisor")

    async def no_lifeline(self: AdoptedDatapath, path: Path, timeout: float) -> str:
        return "datapath lifeline: unknown datapath operation 'lifeline'"

    monkeypatch.setattr(AdoptedDatapath, "attach_lifeline", no_lifeline)

    async def scenario(sup: DatapathSupervisor, pid: int) -> None:
        assert isinstance(sup.child, AdoptedDatapath) and not sup.child.has_lifeline
        os.kill(pid, signal.SIGKILL)
        await until(lambda: sup.pid not in (None, pid), "a new datapath after the kill")

    adopting(tmp_path, scenario)
    assert "gave no lifeline (datapath lifeline: unknown datapath operation" in caplog.text
