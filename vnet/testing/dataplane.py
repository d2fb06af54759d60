"""Send frames out of nodes' NICs and assert what arrives where: PTF's vocabulary on scapy.

Every NIC of the lab is captured from the moment the ``Dataplane`` opens, before anything is
sent, so no frame can slip past between a send and its check.  Frames that a check did not
consume stay queued per port, which is what ``verify_no_other_packets`` looks at.  Every
frame seen is kept, and ``save_pcaps`` writes them out when a test fails.
"""

from __future__ import annotations

import collections
import select
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.utils import wrpcap

from vnet.host import afpacket
from vnet.packet import insert_tag
from vnet.testing.mask import Mask

# A frame that must arrive may take long on a slow, loaded machine, and waiting for it costs
# nothing once it is there: a generous deadline.  A frame that must not arrive is looked for
# during a short window: a switch that forwards it wrongly does so at once.
DEFAULT_TIMEOUT = 10.0
DEFAULT_NEGATIVE_TIMEOUT = 0.3
CAPTURE_OPTIONS = afpacket.PacketOptions(vnet_hdr=False, promiscuous=True, rcvbuf=8 << 20)
MAX_KEPT = 20000

Expected = Packet | bytes | Mask


@dataclass
class CapturedPort:
    name: str            # "node:nic"
    netns: str
    ifname: str
    sock: socket.socket
    queue: collections.deque[bytes] = field(default_factory=collections.deque)
    seen: list[tuple[float, bytes]] = field(default_factory=list)


class Dataplane:
    """Capture on, and send from, ports named ``"node:nic"`` (``nics`` maps them to places)."""

    def __init__(self, nics: dict[str, tuple[str, str]]) -> None:
        self.ports: dict[str, CapturedPort] = {}
        try:
            for name, (netns_name, ifname) in nics.items():
                sock = afpacket.open_packet_socket(ifname, CAPTURE_OPTIONS, netns_name)
                self.ports[name] = CapturedPort(name, netns_name, ifname, sock)
        except BaseException:
            self.close()
            raise
        self.senders: dict[str, socket.socket] = {}

    # ---- sending ------------------------------------------------------------------------------

    def send(self, port: str, packet: Packet | bytes, count: int = 1) -> None:
        """Send ``packet`` out of ``port`` (``"node:nic"``) as the node itself would."""
        sock = self.senders.get(port)
        if sock is None:
            target = self._port(port)
            sock = afpacket.open_packet_socket(
                target.ifname, afpacket.PacketOptions(vnet_hdr=False, promiscuous=False),
                target.netns)
            sock.setblocking(True)
            self.senders[port] = sock
        data = bytes(packet)
        for _ in range(count):
            sock.send(data)

    # ---- receiving ----------------------------------------------------------------------------

    def poll(self, timeout: float = 0.0) -> None:
        """Move every frame waiting in the kernel into the per-port queues."""
        by_fd = {p.sock.fileno(): p for p in self.ports.values()}
        ready, _, _ = select.select(list(by_fd), [], [], timeout)
        for fd in ready:
            port = by_fd[fd]
            while True:
                try:
                    _hdr, frame, tci = afpacket.recv_frame(port.sock, vnet_hdr=False)
                except BlockingIOError:
                    break
                if tci is not None:  # the kernel took the tag off; put it back as on the wire
                    frame = insert_tag(frame, tci)
                port.queue.append(frame)
                if len(port.seen) < MAX_KEPT:
                    port.seen.append((time.time(), frame))

    def _take(self, port: CapturedPort, expected: Mask, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while True:
            for frame in port.queue:
                if expected.matches(frame):
                    port.queue.remove(frame)
                    return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.poll(min(remaining, 0.05))

    # ---- verifications ------------------------------------------------------------------------

    def verify_packet(self, expected: Expected, port: str,
                      timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """Assert that ``expected`` arrives at ``port``; returns the frame that matched."""
        frame = self._take(self._port(port), _mask(expected), timeout)
        if frame is None:
            raise AssertionError(f"expected packet not received on {port} within {timeout} s: "
                                 f"{_describe(expected)}; there arrived: "
                                 f"{self._describe_queue(port)}")
        return frame

    def receive(self, port: str, where: Callable[[Packet], object] = lambda _p: True,
                timeout: float = DEFAULT_TIMEOUT) -> Packet:
        """Take the first frame at ``port`` for which ``where(Ether(frame))`` holds."""
        target = self._port(port)
        deadline = time.monotonic() + timeout
        while True:
            for frame in target.queue:
                packet = Ether(frame)
                if where(packet):
                    target.queue.remove(frame)
                    return packet
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no frame as wanted arrived on {port} within {timeout} s; "
                                     f"there arrived: {self._describe_queue(port)}")
            self.poll(min(remaining, 0.05))

    def verify_no_packet(self, expected: Expected, port: str,
                         timeout: float = DEFAULT_NEGATIVE_TIMEOUT) -> None:
        """Assert that ``expected`` does not arrive at ``port`` within ``timeout``."""
        frame = self._take(self._port(port), _mask(expected), timeout)
        if frame is not None:
            raise AssertionError(f"packet that must not arrive was received on {port}: "
                                 f"{_describe(frame)}")

    def verify_no_frame(self, port: str, where: Callable[[Packet], object],
                        timeout: float = DEFAULT_NEGATIVE_TIMEOUT) -> None:
        """Assert that no frame for which ``where(Ether(frame))`` holds arrives at ``port``
        within ``timeout`` (the negative of ``receive``; it returns early on a match)."""
        try:
            packet = self.receive(port, where, timeout)
        except AssertionError:
            return
        raise AssertionError(f"a frame that must not arrive was received on {port}: "
                             f"{packet.summary()}")

    def verify_packets(self, expected: Expected, ports: Iterable[str],
                       timeout: float = DEFAULT_TIMEOUT) -> None:
        """Assert ``expected`` arrives on each of ``ports`` and on no other port."""
        wanted = list(ports)
        for port in wanted:
            self.verify_packet(expected, port, timeout)
        for port in self.ports:
            if port not in wanted:
                self.verify_no_packet(expected, port, timeout=0)
        self.verify_no_other_packets()

    def verify_no_other_packets(self, timeout: float = DEFAULT_NEGATIVE_TIMEOUT) -> None:
        """Assert that no frame arrived anywhere that a check has not consumed."""
        self.poll(timeout)
        leftovers = {name: list(p.queue) for name, p in self.ports.items() if p.queue}
        if leftovers:
            described = "; ".join(f"{name}: {len(frames)} frame(s), first "
                                  f"{_describe(frames[0])}" for name, frames in leftovers.items())
            raise AssertionError(f"unexpected packets received: {described}")

    def flush(self) -> None:
        """Forget queued frames (they stay in the pcap record)."""
        self.poll(0)
        for port in self.ports.values():
            port.queue.clear()

    def count(self, port: str, expected: Expected, timeout: float = DEFAULT_NEGATIVE_TIMEOUT
              ) -> int:
        """Consume and count the frames at ``port`` that match ``expected`` among those there
        now (waiting up to ``timeout`` for a first one): a look, not a wait for a number.
        For a count that must be reached, ``wait_until`` it."""
        self.poll(timeout)
        mask = _mask(expected)
        target = self._port(port)
        matched = [f for f in target.queue if mask.matches(f)]
        target.queue = collections.deque(f for f in target.queue if not mask.matches(f))
        return len(matched)

    # ---- evidence -----------------------------------------------------------------------------

    def save_pcaps(self, directory: Path) -> list[Path]:
        self.poll(0)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for port in self.ports.values():
            if not port.seen:
                continue
            path = directory / f"{port.name.replace(':', '_')}.pcap"
            packets = []
            for stamp, frame in port.seen:
                packet = Ether(frame)
                packet.time = stamp
                packets.append(packet)
            wrpcap(str(path), packets)
            written.append(path)
        return written

    def close(self) -> None:
        for port in self.ports.values():
            port.sock.close()
        for sock in getattr(self, "senders", {}).values():
            sock.close()

    def __enter__(self) -> Dataplane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _port(self, name: str) -> CapturedPort:
        try:
            return self.ports[name]
        except KeyError:
            raise KeyError(f"no port {name!r}; the lab's ports are: "
                           f"{', '.join(sorted(self.ports))}") from None

    def _describe_queue(self, port: str) -> str:
        queue = self._port(port).queue
        if not queue:
            return "nothing"
        return f"{len(queue)} other frame(s), first {_describe(queue[0])}"


def _mask(expected: Expected) -> Mask:
    return expected if isinstance(expected, Mask) else Mask(expected)


def _describe(frame: Expected) -> str:
    if isinstance(frame, Mask):
        return repr(frame)
    packet = frame if isinstance(frame, Packet) else Ether(frame)
    return str(packet.summary())
