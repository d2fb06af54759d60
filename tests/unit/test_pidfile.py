"""Watching a process vnetd did not start: what /proc says, what a failed pidfd_open
means, and ``Watched`` against real short-lived children (with a pidfd, and without one)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from vnet.daemon import pidfile
from vnet.daemon.pidfile import PidfdError, PidRecord, Stat, Watched

DEADLINE = 30.0
MARKER = "vnet-test-marker-7f3a"


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


# ---- pure ----------------------------------------------------------------------------------

STAT = ("4242 (we) ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 "
        "987654 1000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 "
        "0 0 0 0 0 0 0 9")


def test_stat_fields_are_counted_after_the_last_parenthesis() -> None:
    assert pidfile.parse_stat(STAT) == Stat("S", 987654, 9)
    assert pidfile.parse_stat("1 (short) R 0 1") is None
    assert pidfile.parse_stat("no parenthesis at all") is None
    assert pidfile.parse_stat(STAT.replace("987654", "x")) is None
    old_kernel = " ".join(STAT.split()[:-5])   # before field 52 existed
    assert pidfile.parse_stat(old_kernel) == Stat("S", 987654, 0)


def test_exited_means_gone_reused_or_a_zombie() -> None:
    assert not pidfile.exited(Stat("S", 100, 0), 100)
    assert not pidfile.exited(Stat("R", 100, 0), 100)
    assert pidfile.exited(None, 100)
    assert pidfile.exited(Stat("S", 101, 0), 100)   # the pid is another process's now
    assert pidfile.exited(Stat("Z", 100, 9), 100)


def test_wait_status_as_returncode() -> None:
    assert pidfile.wait_status(9) == -9               # killed by SIGKILL
    assert pidfile.wait_status(3 << 8) == 3           # exit(3)
    assert pidfile.wait_status(0) == 0


@pytest.mark.parametrize(("code", "kind"), [
    (errno.ESRCH, PidfdError.GONE), (errno.EINVAL, PidfdError.GONE),
    (errno.ENOSYS, PidfdError.UNSUPPORTED), (errno.EPERM, PidfdError.UNSUPPORTED),
    (errno.EMFILE, PidfdError.OTHER)])
def test_what_a_failed_pidfd_open_means(code: int, kind: PidfdError) -> None:
    assert pidfile.pidfd_error(OSError(code, os.strerror(code))) is kind


# ---- real processes ------------------------------------------------------------------------


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A process that runs until it is signalled, ``MARKER`` on its command line (not
    reaped until the test's end, so a pidfd and /proc both see it exit as a zombie)."""
    process = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()",
                                MARKER])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def record_of(process: subprocess.Popen[bytes], tmp_path: Path) -> PidRecord:
    record = pidfile.write(tmp_path / "x.pid", process.pid)
    assert record is not None
    assert pidfile.read(tmp_path / "x.pid") == record
    return record


@pytest.fixture
def no_pidfds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel without pidfd_open (before 5.3)."""
    def enosys(_pid: int) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", enosys)
    monkeypatch.setattr(pidfile, "_said_no_pidfd", False)


@pytest.mark.parametrize("pidfds", [True, False], ids=["pidfd", "no pidfds"])
def test_an_adopted_process_is_watched_and_its_death_heard_with_its_status(
        child: subprocess.Popen[bytes], tmp_path: Path, pidfds: bool,
        request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> None:
    if not pidfds:
        request.getfixturevalue("no_pidfds")
    caplog.set_level(logging.WARNING, "vnet.pidfile")
    record = record_of(child, tmp_path)

    async def scenario() -> None:
        watched = Watched.adopt(record, MARKER)
        assert watched is not None and watched.alive
        assert watched.by_pidfd is pidfds
        assert watched.exit_status() is None          # it runs
        assert not await watched.wait(0.05)
        watched.signal(signal.SIGKILL)
        assert await watched.wait(DEADLINE), "its death was not heard"
        assert not watched.alive
        assert watched.exit_status() == -signal.SIGKILL   # a zombie still: /proc tells
        watched.close()

    run(scenario)
    said = [r.getMessage() for r in caplog.records if "no pidfds" in r.getMessage()]
    assert len(said) == (0 if pidfds else 1), said


def test_no_pidfds_is_said_once(child: subprocess.Popen[bytes], tmp_path: Path,
                                no_pidfds: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "vnet.pidfile")
    record = record_of(child, tmp_path)

    async def scenario() -> None:
        for _ in range(3):
            watched = Watched.adopt(record, MARKER)
            assert watched is not None
            watched.close()

    run(scenario)
    assert sum("no pidfds" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("pidfds", [True, False], ids=["pidfd", "no pidfds"])
def test_a_process_that_is_not_the_recorded_one_is_not_adopted(
        child: subprocess.Popen[bytes], tmp_path: Path, pidfds: bool,
        request: pytest.FixtureRequest) -> None:
    if not pidfds:
        request.getfixturevalue("no_pidfds")
    record = record_of(child, tmp_path)
    reused = PidRecord(record.pid, record.start - 1)   # the pid, but another process's start

    async def scenario() -> None:
        assert Watched.adopt(reused, MARKER) is None
        assert Watched.adopt(record, "another-marker") is None
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        assert Watched.adopt(PidRecord(gone.pid, record.start), MARKER) is None
        watched = Watched.adopt(record, MARKER)
        assert watched is not None
        watched.close()

    run(scenario)
    assert child.poll() is None, "a refused adoption signalled the process"


def test_a_pidfd_is_opened_before_the_check(child: subprocess.Popen[bytes], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The check must be of the process the pidfd holds: opened after it, the pid could be
    another's by then."""
    record = record_of(child, tmp_path)
    order: list[str] = []
    real_open, real_running = os.pidfd_open, pidfile.running

    def opening(pid: int) -> int:
        order.append("open")
        return real_open(pid)

    def checking(rec: PidRecord, marker: str) -> bool:
        order.append("check")
        return real_running(rec, marker)

    monkeypatch.setattr(os, "pidfd_open", opening)
    monkeypatch.setattr(pidfile, "running", checking)

    async def scenario() -> None:
        watched = Watched.adopt(record, MARKER)
        assert watched is not None
        watched.close()

    run(scenario)
    assert order == ["open", "check"]


def test_close_stops_watching_and_leaves_the_process(child: subprocess.Popen[bytes],
                                                     tmp_path: Path) -> None:
    record = record_of(child, tmp_path)

    async def scenario() -> None:
        watched = Watched.adopt(record, MARKER)
        assert watched is not None
        watched.close()
        watched.signal(signal.SIGKILL)    # closed: reaches nothing

    run(scenario)
    assert child.poll() is None
