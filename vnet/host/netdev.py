"""The kernel's own count of the frames a netdev received, beside the switch's counters.

Some frames reach a netdev and never a packet socket, and the kernel counts them in no drop
counter: measured on Linux 6.18, a frame of 14-19 bytes whose EtherType is 0x8100 or 0x88a8
is freed when the kernel cannot take its tag off (``skb_vlan_untag`` needs the tag and the
EtherType after it), after the netdev counted it in ``rx_packets``, and ``rx_dropped`` stays
as it was.  So each netdev port reports the netdev's ``rx_packets`` since the port was
opened, and what the switch and the port counted can be checked against it
(docs/counters.md).

Read from ``/proc/net/dev``, opened once: the file keeps showing the namespace it was opened
in, which is the port's even if the opening thread was only visiting it.
"""

from __future__ import annotations

PROC_NET_DEV = "/proc/thread-self/net/dev"


def parse_packets(table: bytes, ifname: str) -> tuple[int, int] | None:
    """``ifname``'s ``(rx_packets, tx_packets)`` in a ``/proc/net/dev`` table, or None."""
    want = ifname.encode()
    for line in table.splitlines()[2:]:  # two header lines
        name, colon, columns = line.partition(b":")
        if colon and name.strip() == want:
            fields = columns.split()  # receive: bytes, packets, errs, drop, ...; then transmit
            return int(fields[1]), int(fields[9])
    return None


class RxFrames:
    """Frames the kernel counted as received on ``ifname`` since this was made."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self._table = open(PROC_NET_DEV, "rb", buffering=0)  # noqa: SIM115 - kept open
        self._start = self._read() or 0

    def _read(self) -> int | None:
        self._table.seek(0)
        packets = parse_packets(self._table.read(), self.ifname)
        return None if packets is None else packets[0]

    def count(self) -> int | None:
        """None once the netdev is gone."""
        now = self._read()
        return None if now is None else now - self._start

    def close(self) -> None:
        self._table.close()
