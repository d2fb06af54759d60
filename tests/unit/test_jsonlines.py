"""The JSON-lines wire format: any bytes decode to an object or a ``ProtocolError`` (never a
``RecursionError`` or ``ValueError``); a call survives a full backlog and says when the
other end hung up before its reply."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vnet import jsonlines
from vnet.jsonlines import MAX_DEPTH, MAX_DIGITS, NoReply, ProtocolError


@pytest.mark.parametrize(("line", "expected"), [
    (b"[" * 100_000 + b"]" * 100_000, f"nested more than {MAX_DEPTH} deep"),
    (b'{"a":' + b"[" * 100_000, f"nested more than {MAX_DEPTH} deep"),     # never closed
    (b'{"a":' + b'{"b":' * 5000 + b"1" + b"}" * 5001, f"nested more than {MAX_DEPTH} deep"),
    (b'{"a":' + b"9" * 5000 + b"}", f"a number of 5000 digits (at most {MAX_DIGITS})"),
    (b'{"a":-' + b"9" * 4301 + b"}", "a number of 4302 digits"),
    (b"\xff{}", "byte 0 is not UTF-8"),
    (b'{"a": "\xc3"}', "byte 7 is not UTF-8"),
    (b"[1, 2]", "a message must be a JSON object"),
    (b'"op"', "a message must be a JSON object"),
    (b"null", "a message must be a JSON object"),
    (b"{", "not a JSON line"),
    (b"", "not a JSON line"),
])
def test_what_is_no_message_is_a_protocol_error(line: bytes, expected: str) -> None:
    with pytest.raises(ProtocolError) as err:
        jsonlines.decode(line)
    assert expected in str(err.value)


def test_brackets_in_strings_do_not_count_and_depth_up_to_the_limit_decodes() -> None:
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    inner: object = []
    for _ in range(MAX_DEPTH - 2):
        inner = [inner]
    assert jsonlines.decode(f'{{"a": {nested[1:-1]}}}'.encode()) == {"a": inner}
    text = '"[[[[\\"[[[{{{' + "[" * 1000 + '\\\\"'
    assert jsonlines.decode(f'{{"t": {text}, "n": {"9" * MAX_DIGITS}}}'.encode()) == {
        "t": '[[[["[[[{{{' + "[" * 1000 + "\\", "n": int("9" * MAX_DIGITS)}


def test_nesting_is_counted_without_recursion() -> None:
    assert jsonlines.nested_deeper_than("[" * 1_000_000, 64)
    assert not jsonlines.nested_deeper_than('[[["]]]]]]]]]]]]"]]]', 3)
    assert jsonlines.nested_deeper_than('[[["\\""]]]', 2)


def test_backoff_doubles_up_to_its_cap_within_the_patience() -> None:
    assert list(jsonlines.backoff(1.0, first=0.1, cap=0.3)) == [0.1, 0.2, 0.3, 0.3]
    assert sum(jsonlines.backoff(3.0)) <= 3.0
    assert list(jsonlines.backoff(0.0)) == []


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[socket.socket]:
    """A listening socket with a backlog of one that accepts only when told to."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(tmp_path / "s.sock"))
        sock.listen(1)
        yield sock


def fill_backlog(listener: socket.socket) -> list[socket.socket]:
    """Connect until the listener's backlog is full (the next connect gets EAGAIN)."""
    queued: list[socket.socket] = []
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(listener.getsockname())
        except BlockingIOError:
            sock.close()
            return queued
        queued.append(sock)


def test_a_connect_to_a_full_backlog_is_retried_until_there_is_room(
        listener: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    queued = fill_backlog(listener)
    pauses: list[float] = []

    def pause(seconds: float) -> None:   # each pause: the listener takes one more
        pauses.append(seconds)
        if len(pauses) == 3:
            listener.accept()[0].close()

    monkeypatch.setattr(time, "sleep", pause)
    with jsonlines.connect(listener.getsockname(), patience=5.0):
        pass
    assert pauses == [0.02, 0.04, 0.08]
    with pytest.raises(BlockingIOError):   # full again, and no patience
        jsonlines.connect(listener.getsockname(), patience=0.0)
    for sock in queued:
        sock.close()


def test_patience_runs_out_on_a_backlog_that_stays_full(
        listener: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    queued = fill_backlog(listener)
    pauses: list[float] = []
    monkeypatch.setattr(time, "sleep", pauses.append)
    with pytest.raises(BlockingIOError):
        jsonlines.connect(listener.getsockname(), patience=1.0)
    assert pauses == list(jsonlines.backoff(1.0))
    for sock in queued:
        sock.close()


def serve_once(listener: socket.socket, behave: Callable[[socket.socket], None]
               ) -> threading.Thread:
    def run() -> None:
        conn, _ = listener.accept()
        with conn:
            behave(conn)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def read_line(conn: socket.socket) -> bytes:
    return conn.makefile("rb").readline()


@pytest.mark.parametrize("behave", [
    lambda conn: read_line(conn),                                    # hangs up
    lambda conn: (read_line(conn), conn.sendall(b'{"ok": true, "res')),  # dies mid-reply
    lambda conn: (read_line(conn), conn.setsockopt(  # resets
        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")),
], ids=["hangs-up", "half-a-reply", "reset"])
def test_a_peer_that_stops_before_its_reply_is_no_reply(
        listener: socket.socket, behave: Callable[[socket.socket], None]) -> None:
    server = serve_once(listener, behave)
    with pytest.raises(NoReply, match="closed the connection without a reply"):
        jsonlines.call(listener.getsockname(), {"op": "ping"}, timeout=30)
    server.join()


def test_an_answer_given_before_hanging_up_on_a_big_request_is_read(
        listener: socket.socket) -> None:
    """A server refusing a request too big to read answers and hangs up while the client
    still sends: the client's send fails (EPIPE), the answer is there to read."""
    refused = {"ok": False, "error": "too long"}

    def refuse(conn: socket.socket) -> None:
        conn.recv(1024)
        conn.sendall(jsonlines.encode(refused))
        conn.shutdown(socket.SHUT_RDWR)

    server = serve_once(listener, refuse)
    assert jsonlines.call(listener.getsockname(), {"op": "up", "text": "x" * (64 << 20)},
                          timeout=30) == refused
    server.join()
