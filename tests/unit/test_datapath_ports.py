"""The loop and its port interface without root: a port type registered by a test (frames
over a Unix socketpair) is switched by the real loop and the real switch, through the one
forwarding path every port type shares."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from vnet import jsonlines
from vnet.datapath import protocol
from vnet.datapath.engine import IO_MODES, Datapath
from vnet.datapath.ports import PORT_TYPES, Port, RingPort, Schedule, SocketPort, port_type
from vnet.packet import insert_tag
from vnet.switch import PortConfig
from vnet.testing import wait_until

if TYPE_CHECKING:
    from vnet.datapath.ports import Deliver

PEERS: dict[str, socket.socket] = {}  # the test's end of each memory port, by "ifname"
HDR = bytes(10)


class MemoryPort(Port):
    """A port whose netdev is a datagram socketpair: one frame per datagram, no vnet_hdr."""

    def __init__(self, number: int, config: PortConfig, ifname: str, schedule: Schedule,
                 deliver: Deliver) -> None:
        super().__init__(number, config, ifname, schedule, deliver)
        self.sock, PEERS[ifname] = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.queued: list[bytes] = []
        self.flushes = 0

    def drain(self, now: float, budget: int) -> None:
        for _ in range(budget):
            try:
                frame = self.sock.recv(65536)
            except BlockingIOError:
                return
            self.deliver(HDR, frame, None, now)

    def emit(self, hdr: bytes, frame: bytes) -> None:
        assert hdr == HDR
        self.queued.append(frame)
        if len(self.queued) == 1:
            self.schedule.dirty.append(self)

    def flush(self) -> None:
        self.flushes += 1
        for frame in self.queued:
            self.sock.send(frame)
        self.queued.clear()


@pytest.fixture
def datapath(tmp_path: Path) -> Iterator[str]:
    port_type("memory")(MemoryPort)
    path = str(tmp_path / "dp.sock")
    dp = Datapath(path, io="memory")
    loop = threading.Thread(target=dp.run, daemon=True)
    loop.start()
    try:
        yield path
    finally:
        jsonlines.call(path, protocol.to_wire(protocol.Shutdown()), timeout=10)
        loop.join(10)
        del PORT_TYPES["memory"]
        for peer in PEERS.values():
            peer.close()
        PEERS.clear()


def _call(path: str, request: protocol.Request) -> Any:
    return protocol.result(jsonlines.call(path, protocol.to_wire(request), timeout=10),
                           request.op)


def _receive(ifname: str, timeout: float = 10.0) -> bytes:
    peer = PEERS[ifname]
    ready, _, _ = select.select([peer], [], [], timeout)
    assert ready, f"nothing arrived on {ifname} within {timeout} s"
    return peer.recv(65536)


def _nothing_on(ifname: str) -> bool:
    ready, _, _ = select.select([PEERS[ifname]], [], [], 0)
    return not ready


def frame(src: str, dst: str, payload: bytes = b"vnet test") -> bytes:
    mac = bytes.fromhex
    return mac(dst.replace(":", "")) + mac(src.replace(":", "")) + b"\x88\xb5" + payload


def test_the_port_types_register_and_name_the_io_modes() -> None:
    assert IO_MODES == ("ring", "socket")
    assert PORT_TYPES["ring"] is RingPort and PORT_TYPES["socket"] is SocketPort
    assert RingPort.kind == "ring" and SocketPort.kind == "socket"


def test_a_registered_port_type_is_switched_by_the_loop(datapath: str) -> None:
    _call(datapath, protocol.AddBridge("lab", ()))
    numbers = [_call(datapath, protocol.AddPort("lab", name, name, "access", vlan=10))
               for name in ("a", "b")]
    _call(datapath, protocol.AddPort("lab", "t", "t", "trunk", allowed=(10, 20)))
    assert numbers == [{"number": 1}, {"number": 2}]

    broadcast = frame("02:00:00:00:00:0a", "ff:ff:ff:ff:ff:ff")
    PEERS["a"].send(broadcast)
    assert _receive("b") == broadcast                          # untagged out of an access port
    assert _receive("t") == insert_tag(broadcast, 10)          # tagged out of the trunk

    # in from the trunk with the tag still in the bytes: the shared path takes it off
    reply = frame("02:00:00:00:00:0b", "02:00:00:00:00:0a", b"reply")
    PEERS["t"].send(insert_tag(reply, 10))
    assert _receive("a") == reply                              # learned: to a alone
    def counted() -> dict[str, Any]:
        stats: dict[str, Any] = _call(datapath, protocol.GetStats("lab"))
        return stats if stats["lab"]["t"]["rx_frames"] == 1 else {}

    stats = wait_until(counted, 10, "the datapath to count t's frame")
    assert stats["lab"]["a"]["tx_frames"] == 1 and stats["lab"]["b"]["tx_frames"] == 1
    assert stats["lab"]["t"]["tx_frames"] == 1 and stats["lab"]["t"]["tx_bytes"] == len(
        broadcast) + 4
    assert stats["lab"]["a"]["ifname"] == "a" and stats["lab"]["a"]["tx_errors"] == {}
    assert _nothing_on("b") and _nothing_on("t")


def test_a_port_deleted_with_sends_queued_is_forgotten_by_the_schedule() -> None:
    schedule = Schedule()
    config = PortConfig(1, "a", "access", vlan=10)
    port = MemoryPort(1, config, "x", schedule, _deliver_nowhere)
    try:
        port.emit(HDR, b"frame")
        schedule.backlog.add(port)
        schedule.holes.add(port)
        assert schedule.dirty == [port]
        port.close()
        assert (schedule.dirty, schedule.backlog, schedule.holes) == ([], set(), set())
    finally:
        PEERS.pop("x").close()


def _deliver_nowhere(hdr: bytes, frame: bytes, tci: int | None, now: float) -> None:
    raise AssertionError("nothing was sent to this port")


class AheadPort(MemoryPort):
    """A memory port whose slow part is "opened ahead": it records in which thread, and a
    name it cannot open ahead (``bad*``) is opened by the port itself."""

    made: ClassVar[dict[str, str]] = {}   # ifname -> the thread that opened it

    @classmethod
    def open_ahead(cls, ifname: str) -> Any:
        if ifname.startswith("bad"):
            raise OSError(19, "No such device")
        cls.made[ifname] = threading.current_thread().name
        return socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)   # something with close()

    def __init__(self, number: int, config: PortConfig, ifname: str, schedule: Schedule,
                 deliver: Deliver, opened: Any = None) -> None:
        super().__init__(number, config, ifname, schedule, deliver)
        self.opened = opened
        if opened is not None:
            opened.close()


def test_a_batch_of_new_ports_is_opened_ahead_in_threads(tmp_path: Path) -> None:
    """vnetd sends a lab's ports at once: the datapath opens the new ones side by side in
    threads before answering them in order; one it cannot open ahead opens as before."""
    port_type("ahead")(AheadPort)
    path = str(tmp_path / "dp.sock")
    dp = Datapath(path, io="ahead")
    loop = threading.Thread(target=dp.run, daemon=True)
    loop.start()
    try:
        _call(path, protocol.AddBridge("lab", ()))
        names = ["p0", "p1", "bad2", "p3"]
        batch = b"".join(protocol.encode(protocol.AddPort("lab", n, n, "access", vlan=10))
                         for n in names)
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(path)
            conn.sendall(batch)   # one write: the datapath finds them together
            replies = conn.makefile("rb")
            numbers = [protocol.result(jsonlines.decode(replies.readline()), "add_port")
                       for _ in names]
        assert numbers == [{"number": i} for i in range(1, 5)], "answered in order"
        ports = {p.ifname: p for p in dp.ports.values() if isinstance(p, AheadPort)}
        assert len(ports) == len(names)
        assert all(ports[n].opened is not None for n in ("p0", "p1", "p3"))
        assert ports["bad2"].opened is None, "opened by the port itself"
        assert all(AheadPort.made[n].startswith("port-open") for n in ("p0", "p1", "p3"))
        assert dp.opened_ahead == {}, "nothing left over"
    finally:
        jsonlines.call(path, protocol.to_wire(protocol.Shutdown()), timeout=10)
        loop.join(10)
        del PORT_TYPES["ahead"]
        for peer in PEERS.values():
            peer.close()
        PEERS.clear()


def test_what_a_turn_switched_is_flushed_before_the_next_ports_turn(tmp_path: Path) -> None:
    """A reply switched in one port's turn goes out at once, not after the next port's turn
    (a bulk port's, up to a slice long): the flush follows each turn, not each wake-up."""
    port_type("memory")(MemoryPort)
    dp = Datapath(str(tmp_path / "dp.sock"), io="memory")
    try:
        dp.handle(protocol.AddBridge("lab", ()))
        for name in ("a", "b"):
            dp.handle(protocol.AddPort("lab", name, name, "access", vlan=10))
        a, b = dp.bridges["lab"].ports["a"], dp.bridges["lab"].ports["b"]
        PEERS["a"].send(frame("02:00:00:00:00:0a", "ff:ff:ff:ff:ff:ff"))
        dp._drain(a, dp.budgets)
        assert isinstance(b, MemoryPort) and b.flushes == 1 and not dp.schedule.dirty
        assert not _nothing_on("b")
        dp._drain(b, dp.budgets)   # nothing came in on b: nothing to flush
        assert b.flushes == 1
    finally:
        dp.close()
        del PORT_TYPES["memory"]
        for peer in PEERS.values():
            peer.close()
        PEERS.clear()
