"""``vnet capture`` without root: the pcap writer, the mirror records, the mirrors'
bookkeeping on a port, and mirrors in the real loop over memory ports (socketpairs)."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from scapy.utils import rdpcap

from tests.unit.test_datapath_ports import (
    HDR,
    PEERS,
    MemoryPort,
    _call,
    _receive,
    datapath,  # noqa: F401 - the fixture
    frame,
)
from vnet import jsonlines
from vnet.datapath import control, protocol
from vnet.datapath.mirror import (
    END,
    FRAME,
    HEADER,
    IN,
    OUT,
    Mirror,
    Record,
    Records,
    StreamError,
    install,
)
from vnet.datapath.ports import Schedule
from vnet.observe import pcap
from vnet.packet import insert_tag
from vnet.switch import PortConfig
from vnet.testing import wait_until

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
BCAST = "ff:ff:ff:ff:ff:ff"


# ---- the pcap writer -------------------------------------------------------------------------


def test_a_pcap_file_is_a_global_header_and_a_record_per_frame(tmp_path: Path) -> None:
    header = pcap.global_header()
    assert len(header) == 24 and header[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4")
    assert pcap.GLOBAL.unpack(header)[-1] == 1   # Ethernet
    one = frame(A, BCAST, b"one")
    rec = pcap.record(1_700_000_000_123_456_789, one)
    assert pcap.RECORD.unpack(rec[:16]) == (1_700_000_000, 123_456, len(one), len(one))
    assert rec[16:] == one
    cut = pcap.record(0, one, snaplen=10)
    assert pcap.RECORD.unpack(cut[:16])[2:] == (10, len(one)) and len(cut) == 26

    path = tmp_path / "c.pcap"
    with open(path, "wb") as out:
        writer = pcap.Writer(out)
        writer.write(1_700_000_000_000_000_000, one)
        writer.write(1_700_000_001_500_000_000, insert_tag(frame(B, A, b"two"), 10))
        writer.close()
    packets = rdpcap(str(path))
    assert [bytes(p) for p in packets] == [one, insert_tag(frame(B, A, b"two"), 10)]
    assert float(packets[1].time) == pytest.approx(1_700_000_001.5)
    if shutil.which("tcpdump"):
        shown = [line for line in subprocess.run(
            ["tcpdump", "-r", str(path), "-e", "-nn"], capture_output=True, text=True,
            check=True).stdout.splitlines() if not line.startswith("\t")]
        assert len(shown) == 2 and "vlan 10" in shown[1] and "vlan" not in shown[0]


def test_the_writer_flushes_each_record_when_streaming() -> None:
    class Counting(io.BytesIO):
        flushes = 0

        def flush(self) -> None:
            self.flushes += 1

    out = Counting()
    writer = pcap.Writer(out, flush_each=True)
    writer.write(0, b"x" * 60)
    writer.write(0, b"y" * 60)
    assert out.flushes == 3 and writer.frames == 2 and len(out.getvalue()) == 24 + 2 * 76


# ---- the records -----------------------------------------------------------------------------


class Sink:
    def __init__(self, room: int = 1 << 20) -> None:
        self.room = room
        self.data = bytearray()
        self.ended = False

    def write(self, data: bytes) -> bool:
        if len(self.data) + len(data) > self.room:
            return False
        self.data += data
        return True

    def end(self, data: bytes) -> None:
        self.data += data
        self.ended = True


def test_records_decode_as_they_come_byte_by_byte() -> None:
    sink = Sink()
    mirror = Mirror("both", sink)
    mirror.copy(IN, b"frame-in", 5)
    mirror.copy(OUT, b"frame-out", 6)
    mirror.end("the capture ended")
    records, got = Records(), []
    for i in range(len(sink.data)):
        got += records.feed(bytes(sink.data[i:i + 1]))
    assert [(r.kind, r.direction, r.data) for r in got] == [
        (FRAME, IN, b"frame-in"), (FRAME, OUT, b"frame-out"), (END, 0, b"the capture ended")]
    assert got[0] == Record(FRAME, IN, 0, 5, b"frame-in")
    with pytest.raises(StreamError, match="not a mirror record"):
        Records().feed(b"HTTP/1.1 200 OK\r\n\r\nhello")


def test_a_full_sink_drops_and_counts_and_every_record_says_how_many() -> None:
    sink = Sink(room=2 * (HEADER.size + 4))
    mirror = Mirror("in", sink)
    for _ in range(5):
        mirror.copy(IN, b"abcd", 0)
    assert (mirror.frames, mirror.dropped) == (2, 3)
    sink.room = 1 << 20
    mirror.copy(IN, b"abcd", 0)
    mirror.end("the capture ended")
    got = Records().feed(bytes(sink.data))
    assert [r.dropped for r in got] == [0, 0, 3, 3] and sink.ended


def test_a_direction_must_be_in_out_or_both() -> None:
    with pytest.raises(ValueError, match="in, out, both"):
        Mirror("sideways", Sink())
    with pytest.raises(Exception, match="direction must be in, out or both"):
        protocol.Mirror("lab", "a", "sideways")


# ---- the bookkeeping on a port ---------------------------------------------------------------


def _port(mode: str = "trunk") -> tuple[MemoryPort, list[tuple[bytes, int | None]]]:
    delivered: list[tuple[bytes, int | None]] = []

    def deliver(hdr: bytes, data: bytes, tci: int | None, now: float) -> None:
        delivered.append((data, tci))

    config = (PortConfig(1, "t", "trunk", allowed=frozenset({10})) if mode == "trunk"
              else PortConfig(1, "a", "access", vlan=10))
    return MemoryPort(1, config, "t", Schedule(), deliver), delivered


def test_a_port_nobody_captures_has_no_wrapper_at_all() -> None:
    port, _ = _port()
    own_deliver = port.deliver
    assert port.mirrors == () and "emit" not in vars(port)
    sink = Sink()
    mirror = Mirror("both", sink)
    install(port, (mirror,))
    assert port.deliver is not own_deliver and "emit" in vars(port)
    install(port, ())
    assert port.deliver is own_deliver and "emit" not in vars(port) and port.mirrors == ()
    PEERS.pop("t").close()
    port.sock.close()


def test_mirrors_copy_what_the_port_gets_and_sends_as_on_its_wire() -> None:
    port, delivered = _port()
    ins, outs, both = Sink(), Sink(), Sink()
    install(port, (Mirror("in", ins), Mirror("out", outs), Mirror("both", both)))
    untagged = frame(A, BCAST)
    port.deliver(HDR, untagged, 10, 0.0)          # the kernel took tag 10 off
    port.deliver(HDR, insert_tag(untagged, 20), None, 0.0)   # left in band
    port.emit(HDR, insert_tag(untagged, 10))
    assert delivered == [(untagged, 10), (insert_tag(untagged, 20), None)]  # unchanged
    assert port.queued == [insert_tag(untagged, 10)]
    got_in, got_out = Records().feed(bytes(ins.data)), Records().feed(bytes(outs.data))
    assert [r.data for r in got_in] == [insert_tag(untagged, 10), insert_tag(untagged, 20)]
    assert [r.data for r in got_out] == [insert_tag(untagged, 10)]
    assert [r.direction for r in Records().feed(bytes(both.data))] == [IN, IN, OUT]
    install(port, port.mirrors[1:])   # the "in" one goes: deliver is a wrapper still
    port.deliver(HDR, untagged, None, 0.0)
    assert len(Records().feed(bytes(ins.data))) == 2
    assert len(Records().feed(bytes(both.data))) == 4
    PEERS.pop("t").close()
    port.sock.close()


# ---- in the real loop ------------------------------------------------------------------------


def _mirror(path: str, port: str, direction: str = "both") -> tuple[socket.socket, Any]:
    sock = jsonlines.connect(path, 10)
    sock.sendall(protocol.encode(protocol.Mirror("lab", port, direction)))
    reader = sock.makefile("rb")
    reply = jsonlines.decode(reader.readline())
    return sock, (reader, reply)


def _records(reader: Any, until: int) -> list[Record]:
    records, got = Records(), list[Record]()
    while len(got) < until:
        data = reader.read1(65536)
        assert data, "the stream closed early"
        got += records.feed(data)
    return got


def _mirrors(path: str, port: str) -> int:
    stats: dict[str, Any] = _call(path, protocol.GetStats("lab"))
    return int(stats["lab"][port].get("mirrors", 0))


def test_a_mirror_in_the_loop_until_its_reader_closes(datapath: str) -> None:  # noqa: F811
    _call(datapath, protocol.AddBridge("lab", ()))
    _call(datapath, protocol.AddPort("lab", "a", "a", "access", vlan=10))
    _call(datapath, protocol.AddPort("lab", "t", "t", "trunk", allowed=(10, 20)))
    sock, (reader, reply) = _mirror(datapath, "t")
    trunk_sock, (trunk_reader, _) = _mirror(datapath, "a", "in")
    assert reply == {"ok": True, "result": {"number": 2}}
    assert _mirrors(datapath, "t") == 1 and _mirrors(datapath, "a") == 1
    broadcast = frame(A, BCAST)
    PEERS["a"].send(broadcast)                                 # out of t, tagged
    assert _receive("t") == insert_tag(broadcast, 10)
    back = frame(B, A, b"back")
    PEERS["t"].send(insert_tag(back, 10))                       # into t, tagged
    assert _receive("a") == back
    got = _records(reader, 2)
    assert [(r.direction, r.data) for r in got] == [(OUT, insert_tag(broadcast, 10)),
                                                    (IN, insert_tag(back, 10))]
    assert [r.data for r in _records(trunk_reader, 1)] == [broadcast]   # untagged on a
    sock.shutdown(socket.SHUT_WR)                                       # the reader ends
    [last] = _records(reader, 1)
    assert (last.kind, last.dropped, last.data) == (END, 0, b"the capture ended")
    assert reader.read() == b""                                          # closed after it
    wait_until(lambda: _mirrors(datapath, "t") == 0, 10, "t's mirror to go")
    trunk_reader.close()
    trunk_sock.close()                                                   # gone, no goodbye
    wait_until(lambda: _mirrors(datapath, "a") == 0, 10, "a's mirror to go")
    sock.close()
    PEERS["a"].send(broadcast)                                  # forwarding as before
    assert _receive("t") == insert_tag(broadcast, 10)


def test_a_reader_that_does_not_read_costs_its_frames_not_the_forwarding(
        datapath: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr(control, "STREAM_BUFFER", 4096)
    _call(datapath, protocol.AddBridge("lab", ()))
    for name in ("a", "b"):
        _call(datapath, protocol.AddPort("lab", name, name, "access", vlan=10))
    sock, (reader, _) = _mirror(datapath, "b", "out")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    big = frame(A, BCAST, bytes(1400))
    for _ in range(500):   # far more than the stream and the socket buffers hold
        PEERS["a"].send(big)
        assert _receive("b") == big
    sock.shutdown(socket.SHUT_WR)
    got = Records().feed(reader.read())   # to the end: the stream closes after its last
    frames = [r for r in got if r.kind == FRAME]
    assert got[-1].dropped > 0 and len(frames) + got[-1].dropped == 500
    sock.close()


def test_a_mirror_of_a_port_that_does_not_exist_says_which_do(datapath: str  # noqa: F811
                                                              ) -> None:
    _call(datapath, protocol.AddBridge("lab", ()))
    _call(datapath, protocol.AddPort("lab", "a", "a", "access", vlan=10))
    sock, (_reader, reply) = _mirror(datapath, "zz")
    assert not reply["ok"] and "has no port 'zz' (it has: a)" in reply["error"]
    sock.close()


def test_removing_a_mirrored_port_ends_its_captures(datapath: str) -> None:  # noqa: F811
    _call(datapath, protocol.AddBridge("lab", ()))
    _call(datapath, protocol.AddPort("lab", "a", "a", "access", vlan=10))
    sock, (reader, _) = _mirror(datapath, "a")
    _call(datapath, protocol.DelPort("lab", "a"))
    [last] = _records(reader, 1)
    assert (last.kind, last.data) == (END, b"port a was removed")
    assert reader.read() == b""
    sock.close()


# ---- the API's streaming reply and the CLI's lines -------------------------------------------


def test_a_streaming_reply_keeps_the_connection_until_the_client_ends(tmp_path: Path) -> None:
    from vnet.daemon.api import ApiServer, Streaming
    from vnet.daemon.requests import REQUESTS

    events: list[str] = []

    async def capture(_request: Any) -> Streaming:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"record-1")
            await writer.drain()
            assert await reader.read() == b""      # the client's half-close
            events.append("client ended")

        return Streaming({"port": "a1.eth0"}, run, lambda: events.append("cancelled"))

    async def other(_request: Any) -> None:
        return None

    handlers = {op: other for op in REQUESTS} | {"capture": capture}
    server = ApiServer(tmp_path / "api.sock", handlers)

    async def scenario() -> tuple[bytes, bytes]:
        await server.start()
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "api.sock"))
        writer.write(b'{"op": "capture", "node": "a1"}\n')
        reply = await reader.readline()
        record = await reader.readexactly(8)
        writer.write_eof()
        rest = await reader.read()                  # then vnetd closes
        writer.close()
        handled = await server.handle(b'{"op": "capture", "node": "a1"}')  # no connection
        await server.stop()
        return reply + record + rest, json.dumps(handled).encode()

    streamed, handled = asyncio.run(scenario())
    assert json.loads(streamed[:streamed.index(b"\n")])["result"] == {"port": "a1.eth0"}
    assert streamed.endswith(b"\nrecord-1")
    assert events == ["client ended", "cancelled", "cancelled"]
    assert json.loads(handled)["ok"]


def test_a_line_per_frame_on_a_terminal() -> None:
    from vnet.cli_capture import summary

    tagged = insert_tag(frame(A, BCAST), 10)
    line = summary(1_700_000_000_000_000_000, "in", tagged)
    assert line.endswith(f" in  {A} > {BCAST}, vlan 10, type 0x88b5, {len(tagged)} bytes")
    assert summary(0, "out", b"short").endswith("out runt frame of 5 bytes")


def test_the_clis_capture_directions_are_the_mirrors() -> None:
    from vnet import cli_capture
    from vnet.datapath import mirror

    assert cli_capture.DIRECTIONS == mirror.DIRECTIONS


def test_the_cli_starts_without_the_mirrors_module() -> None:
    import subprocess
    import sys

    code = ("import sys, vnet.cli; vnet.cli.build_parser(); "
            "print('vnet.datapath.mirror' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
