"""``vnet capture``: a live mirror of a node's port, as a pcap file or lines of text.

Registered by ``vnet.cli.build_parser`` (``add_command``).  vnetd relays the datapath's
mirror records (``vnet.daemon.capture``, ``vnet.datapath.mirror``); here they become pcap
(``vnet.observe.pcap``) or, on a terminal, a line per frame.  Ctrl-C (or SIGTERM) and
COUNT stop the same way: the CLI half-closes its connection, the datapath removes the
mirror and sends its last record with the number of frames it dropped for this capture,
and what was written is a whole pcap file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import signal
import socket
import sys
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from vnet.errors import DaemonError

if TYPE_CHECKING:
    from vnet.cli import Client
    from vnet.observe.pcap import Writer

# vnet.datapath.mirror's DIRECTIONS (a unit test keeps them alike): every CLI command builds
# this parser, and importing the mirror's module (dataclasses, vnet.packet) for it cost each
# `vnet up` ~10-20 ms; the capture imports it when it runs.
DIRECTIONS = ("in", "out", "both")

END_PATIENCE = 5.0   # seconds to wait, once stopped, for the datapath's last record


class _Capture:
    """The records of one capture, written to ``out`` until stopped."""

    def __init__(self, sock: socket.socket, reader: BinaryIO, count: int | None,
                 pcap: Writer | None, text: IO[str] | None) -> None:
        self.sock, self.reader, self.count = sock, reader, count
        self.pcap, self.text = pcap, text
        self.frames = 0
        self.dropped = 0
        self.stopping = False
        self.end_reason: str | None = None

    def stop(self) -> None:
        """Ask for the end: the datapath's last record comes, then the connection closes."""
        if self.stopping:
            return
        self.stopping = True
        with contextlib.suppress(OSError):
            self.sock.settimeout(END_PATIENCE)
            self.sock.shutdown(socket.SHUT_WR)

    def run(self) -> None:
        from vnet.datapath.mirror import END, Records, StreamError

        records = Records()
        while self.end_reason is None:
            try:
                data = self.reader.read1(1 << 16)  # type: ignore[attr-defined]
            except TimeoutError:
                return   # stopped, and the last record did not come: the count so far
            except OSError as err:
                raise DaemonError(f"the capture's connection to vnetd broke: {err}") from None
            if not data:
                return
            try:
                batch = records.feed(data)
            except StreamError as err:
                raise DaemonError(f"vnetd sent something that is no capture: {err}") from None
            for record in batch:
                self.dropped = record.dropped
                if record.kind == END:
                    self.end_reason = record.data.decode(errors="replace")
                elif not self.stopping:
                    self._write(record.time_ns, record.direction, record.data)
                    if self.count is not None and self.frames >= self.count:
                        self.stop()
            if self.pcap is not None and batch:   # what came at once, then a flush: a
                try:                              # reader of the file sees it at once
                    self.pcap.out.flush()
                except BrokenPipeError:
                    self.pcap = None
                    self.stop()

    def _write(self, time_ns: int, direction: int, frame: bytes) -> None:
        try:
            if self.pcap is not None:
                self.pcap.write(time_ns, frame)
            elif self.text is not None:
                from vnet.datapath.mirror import DIRECTION_NAMES

                print(summary(time_ns, DIRECTION_NAMES[direction], frame), file=self.text,
                      flush=True)
        except BrokenPipeError:   # the reader (tcpdump, head) is gone: stop, quietly
            self.pcap = self.text = None
            self.stop()
            return
        self.frames += 1


def summary(time_ns: int, direction: str, frame: bytes) -> str:
    """One line per frame: time, direction, MACs, every tag, EtherType, length."""
    stamp = datetime.datetime.fromtimestamp(time_ns / 1e9).strftime("%H:%M:%S.%f")
    if len(frame) < 14:
        return f"{stamp} {direction:<3} runt frame of {len(frame)} bytes"
    dst, src = _mac(frame[0:6]), _mac(frame[6:12])
    tags, offset = [], 12
    while len(frame) >= offset + 4 and frame[offset:offset + 2] in (b"\x81\x00", b"\x88\xa8"):
        tpid = "vlan" if frame[offset + 1] == 0 else "s-vlan"
        tags.append(f"{tpid} {int.from_bytes(frame[offset + 2:offset + 4], 'big') & 0xFFF}")
        offset += 4
    ethertype = frame[offset:offset + 2].hex() if len(frame) >= offset + 2 else "?"
    tagged = "".join(f", {t}" for t in tags)
    return f"{stamp} {direction:<3} {src} > {dst}{tagged}, type 0x{ethertype}, " \
           f"{len(frame)} bytes"


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def cmd_capture(client: Client, args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        raise DaemonError(f"-c COUNT must be 1 or more, not {args.count}")
    node, _, nic = args.target.partition(":")
    request: dict[str, Any] = {"node": node, "direction": args.direction}
    if nic:
        request["nic"] = nic
    if args.lab:
        request["lab"] = args.lab
    out = _output(args.write)
    result, sock, reader = client.open_stream("capture", **request)
    try:
        text = sys.stdout if out is None else None
        from vnet.observe.pcap import Writer

        pcap = Writer(out) if out is not None else None
        capture = _Capture(sock, reader, args.count, pcap, text)
        print(f"vnet: capturing {result['lab']} {result['node']}:{result['nic']} (port "
              f"{result['port']}), {result['direction']}; Ctrl-C stops", file=sys.stderr,
              flush=True)

        def stop(_signum: int, _frame: FrameType | None) -> None:
            capture.stop()

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            capture.run()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            if pcap is not None:
                with contextlib.suppress(BrokenPipeError):
                    pcap.close()
    finally:
        sock.close()
        if out is not None and args.write not in (None, "-"):
            out.close()
    print(f"vnet: {capture.frames} frame{'s' if capture.frames != 1 else ''} captured; "
          f"{capture.dropped} frame{'s' if capture.dropped != 1 else ''} dropped by the "
          f"capture", file=sys.stderr)
    if capture.end_reason is None and not capture.stopping:
        raise DaemonError("the capture ended early: vnetd or the datapath closed the "
                          "connection (see 'vnet status' and vnetd's log)")
    if capture.end_reason not in (None, "the capture ended"):
        raise DaemonError(f"the capture ended: {capture.end_reason}")
    return 0


def _output(write: str | None) -> BinaryIO | None:
    """Where the pcap goes: a file, stdout (``-``, or by default when stdout is no
    terminal); None: lines of text on the terminal."""
    if write is None:
        return None if sys.stdout.isatty() else sys.stdout.buffer
    if write == "-":
        return sys.stdout.buffer
    try:
        return open(write, "wb")
    except OSError as err:
        raise DaemonError(f"cannot write the capture to {write}: "
                          f"{err.strerror or err}") from None


def add_command(sub: Any) -> None:
    """Add ``capture`` to the CLI's subcommands."""
    p = sub.add_parser("capture", help="a live mirror of a node's port (pcap, or a line per "
                       "frame on a terminal)",
                       description="Frames as on the wire of the port: tagged on a trunk, "
                       "untagged on an access port.  Without -w, pcap goes to stdout unless "
                       "it is a terminal (vnet capture a1 | tcpdump -r - -e -nn).")
    p.add_argument("target", metavar="NODE[:NIC]")
    p.add_argument("--lab", help="the node's lab, when several labs have that node")
    p.add_argument("-w", dest="write", metavar="FILE", help="write pcap to FILE ('-': stdout)")
    p.add_argument("-c", dest="count", type=int, metavar="COUNT",
                   help="stop after COUNT frames")
    p.add_argument("--direction", choices=DIRECTIONS, default="both",
                   help="what the port receives (in), sends (out) or both (default)")
    p.set_defaults(func=cmd_capture)
