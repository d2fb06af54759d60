"""The CLI's conversation with vnetd, against a stand-in vnetd on a real Unix socket: every
way it fails is said in words with what to do (no traceback, no errno), a refused or
queue-full connect is retried briefly, a request too big to send is refused before any
daemon starts."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vnet import cli, jsonlines
from vnet.daemon.defaults import API_VERSION
from vnet.errors import DaemonError

PAIR = Path(__file__).parents[1] / "integration" / "topologies" / "pair.yaml"
Answer = Callable[[dict[str, Any]], "dict[str, Any] | None"]


class StandIn:
    """A vnetd stand-in: answers each request line with ``answer(request)``, or hangs up
    without a reply when that is None (as a vnetd killed while it had the request)."""

    def __init__(self, path: str, answer: Answer, backlog: int = 16) -> None:
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()
        self.sock.bind(path)
        self.sock.listen(backlog)
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> StandIn:
        self.thread.start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                line = conn.makefile("rb").readline()
                if not line:
                    continue
                request = json.loads(line)
                self.requests.append(request)
                reply = self.answer(request)
                if reply is not None:
                    conn.sendall(jsonlines.encode({"api": API_VERSION, **reply}))

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(10)


def pings_only(request: dict[str, Any]) -> dict[str, Any] | None:
    return {"ok": True, "result": {"pid": 1}} if request["op"] == "ping" else None


def status_answer(request: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "result": {"daemon": {"pid": 1}, "labs": []}}


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "vnetd.sock")


@pytest.fixture
def stand_in(sock_path: str) -> Iterator[Callable[..., StandIn]]:
    started: list[StandIn] = []

    def start(answer: Answer, backlog: int = 16) -> StandIn:
        started.append(StandIn(sock_path, answer, backlog).start())
        return started[-1]

    yield start
    for server in started:
        server.close()


def run_cli(sock_path: str, tmp_path: Path, *args: str) -> int:
    return cli.main(["--socket", sock_path, "--state-dir", str(tmp_path / "state"), *args])


def no_daemon_start(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the CLI started a vnetd")


def clean(stderr: str) -> str:
    assert "Traceback" not in stderr and "[Errno" not in stderr, stderr
    return stderr


@pytest.mark.parametrize(("args", "what_to_do"), [
    (["up", str(PAIR)], "run the same 'vnet up FILE' again: vnetd records every step, so "
                        "the next up finishes the job"),
    (["down", "--lab", "pair"], "run the same 'vnet down' again: vnetd records every step, "
                                "so the next down finishes the job"),
    (["status"], "try again"),
])
def test_vnetd_stopping_before_its_reply_is_said_with_what_to_do(
        sock_path: str, tmp_path: Path, stand_in: Callable[..., StandIn],
        capsys: pytest.CaptureFixture[str], args: list[str], what_to_do: str) -> None:
    """As when vnetd is killed (kill -9) in the middle of an up or a down."""
    stand_in(pings_only)
    assert run_cli(sock_path, tmp_path, *args) == 1
    err = clean(capsys.readouterr().err)
    op = args[0]
    assert err.startswith(f"vnet: vnetd stopped before it answered this {op} (killed or "
                          f"crashed: see its log, 'journalctl -u vnetd', or vnetd.log in "
                          f"its state directory); {what_to_do}"), err


def test_a_refused_connect_is_retried_while_vnetd_restarts(
        sock_path: str, tmp_path: Path, stand_in: Callable[..., StandIn],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A socket file nobody listens on (a vnetd killed, its restart under way) refuses
    connects; vnetd listening again within the patience is found."""
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 2:               # vnetd is back
            stand_in(status_answer)

    monkeypatch.setattr(time, "sleep", pause)
    assert run_cli(sock_path, tmp_path, "status") == 0
    assert "no labs are up" in capsys.readouterr().out
    assert pauses == [0.02, 0.04]


def test_a_refused_connect_that_stays_refused_says_vnetd_is_not_running(
        sock_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()
    pauses: list[float] = []
    monkeypatch.setattr(time, "sleep", pauses.append)
    assert run_cli(sock_path, tmp_path, "status") == 1
    assert clean(capsys.readouterr().err) == (
        f"vnet: vnetd is not running (no answer on {sock_path}); start it with 'systemctl "
        f"start vnetd' or 'vnet up FILE'\n")
    assert pauses == list(jsonlines.backoff(cli.CONNECT_PATIENCE))


def full_backlog(path: str) -> tuple[socket.socket, list[socket.socket]]:
    """A listener that accepts nothing, its backlog full: the next connect gets EAGAIN."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    queued: list[socket.socket] = []
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except BlockingIOError:
            sock.close()
            return listener, queued
        queued.append(sock)


def test_a_full_backlog_is_waited_out(
        sock_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    listener, queued = full_backlog(sock_path)
    pauses: list[float] = []

    def serve() -> None:                   # vnetd catches up with its connections
        while True:
            conn, _ = listener.accept()
            with conn:
                if conn.makefile("rb").readline():
                    conn.sendall(jsonlines.encode({**status_answer({}), "api": API_VERSION}))
                    return

    server = threading.Thread(target=serve)

    real_sleep = time.sleep

    def pause(seconds: float) -> None:   # the first pauses see a full backlog, then room
        pauses.append(seconds)
        if len(pauses) == 3:
            for sock in queued:
                sock.close()
            server.start()
        if len(pauses) >= 3:
            real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", pause)
    try:
        assert run_cli(sock_path, tmp_path, "status") == 0, capsys.readouterr().err
        assert "no labs are up" in capsys.readouterr().out
        assert pauses[:3] == [0.02, 0.04, 0.08]
    finally:
        server.join(30)
        listener.close()


def test_a_backlog_that_stays_full_is_said_and_no_second_vnetd_is_started(
        sock_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A busy vnetd is not a missing one: `vnet up` must not start another on its socket."""
    listener, queued = full_backlog(sock_path)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    monkeypatch.setattr(subprocess, "Popen", no_daemon_start)
    try:
        assert run_cli(sock_path, tmp_path, "up", str(PAIR)) == 1
        assert clean(capsys.readouterr().err) == (
            f"vnet: vnetd is not taking connections on {sock_path}: its queue of waiting "
            f"connections stayed full for 3 s; it is overloaded or stuck (see its log); try "
            f"again\n")
    finally:
        for sock in queued:
            sock.close()
        listener.close()


def test_an_up_too_big_to_send_is_refused_before_any_daemon_starts(
        sock_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "MAX_REQUEST", 100)
    monkeypatch.setattr(cli.Client, "ensure_daemon", no_daemon_start)
    assert run_cli(sock_path, tmp_path, "up", str(PAIR)) == 1
    err = clean(capsys.readouterr().err)
    size = len(jsonlines.encode({"op": "up", "text": PAIR.read_text(),
                                 "source": str(PAIR.resolve())}))
    assert err == (f"vnet: {PAIR.resolve()}: too big to send to vnetd: the request would be "
                   f"{size} bytes, over vnetd's limit of 100 bytes; a topology file is "
                   f"normally a few KiB\n")


def test_the_limit_is_said_in_mib() -> None:
    with pytest.raises(DaemonError) as err:
        cli.check_size({"op": "up", "text": "#" * (5 << 20), "source": "/big.yaml"})
    assert str(err.value) == ("/big.yaml: too big to send to vnetd: the request would be "
                              "5 MiB, over vnetd's limit of 4 MiB; a topology file is "
                              "normally a few KiB")


def test_a_down_of_a_recorded_lab_starts_vnetd_when_none_runs(
        sock_path: str, tmp_path: Path, stand_in: Callable[..., StandIn],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A vnetd that `vnet up` started and that was killed in the middle of a down: the next
    down must finish the job, so it brings a vnetd up for the lab's record."""
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    started: list[StandIn] = []

    def ensure_daemon(client: cli.Client) -> None:
        started.append(stand_in(lambda request: {"ok": True, "result": {
            "lab": "pair", "removed": 3}}))

    monkeypatch.setattr(cli.Client, "ensure_daemon", ensure_daemon)
    assert run_cli(sock_path, tmp_path, "down", "--lab", "pair") == 1   # no record: no start
    assert "vnetd is not running" in clean(capsys.readouterr().err) and not started
    (tmp_path / "state" / "labs").mkdir(parents=True)
    (tmp_path / "state" / "labs" / "pair.json").write_text("{}")
    assert run_cli(sock_path, tmp_path, "down", "--lab", "pair") == 0
    assert capsys.readouterr().out == "lab pair: down (removed 3)\n"
    assert started[0].requests == [{"op": "down", "lab": "pair"}]


def test_ctrl_c_is_no_traceback(sock_path: str, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.Client, "call", interrupted)
    assert run_cli(sock_path, tmp_path, "status") == 130
    assert capsys.readouterr().err == ("vnet: interrupted (vnetd finishes what it was asked: "
                                       "see 'vnet status')\n")


@pytest.mark.parametrize(("api", "expected"), [
    (None, "vnet: vnetd is older than this vnet: it speaks no API version, this vnet speaks "
           f"version {API_VERSION}; restart vnetd from this vnet's installation ('systemctl "
           "restart vnetd')\n"),
    (API_VERSION + 1, f"vnet: vnetd is newer than this vnet: it speaks API version "
                      f"{API_VERSION + 1}, this vnet speaks version {API_VERSION}; upgrade vnet "
                      "to vnetd's version\n"),
])
def test_a_vnetd_of_another_api_version_is_named_older_or_newer(
        sock_path: str, tmp_path: Path, stand_in: Callable[..., StandIn], api: int | None,
        expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    stand_in(lambda request: {**status_answer(request), "api": api})
    assert run_cli(sock_path, tmp_path, "status") == 1
    assert clean(capsys.readouterr().err) == expected
