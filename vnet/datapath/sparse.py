"""Small frames of other flows go ahead of a port's GSO super-frames: a pure policy.

Why: under a bulk TCP stream a port's receive ring holds a run of 64 KiB super-frames, each
~50 µs of the datapath's time (its ``send`` runs the receiving namespace's TCP inline), and a
ping that came in behind them waited for all of them (measured: p50 ~400 µs, p99 ms).  As
fq_codel's new-flows list does, a frame of a flow that has nothing waiting ahead of it is
served first; unlike fq_codel nothing is dropped and nothing is reordered within a flow.

The reader (``vnet.datapath.ports.RingPort``) looks ahead from a super-frame at the head of
its ring, slot by slot, in ring order, and asks ``examine(key, small)``: True means deliver
the frame now.  A frame goes ahead only if it fits a ring slot (``small``) and no frame of its
flow (``key``) was passed over; everything passed over is remembered until the reader takes
it in order (``consume``), which says whether the slot's frame already went ahead.

``flow_key`` is deliberately coarse (MAC addresses, EtherType, IP protocol and addresses, no
ports): two frames of one flow always get the same key, so a coarse key can only hold a frame
back, never reorder a flow.
"""

from __future__ import annotations

from collections import deque

ETH_P_IP = b"\x08\x00"
ETH_P_IPV6 = b"\x86\xdd"
HEAD = 54   # bytes of a frame ``flow_key`` reads at most (Ethernet + IPv6 addresses)


def flow_key(head: bytes) -> bytes:
    """The flow ``head`` (a frame's first ``HEAD`` bytes or more) belongs to, coarsely: MACs
    and EtherType, plus the protocol and addresses for IPv4/IPv6 (ports are left out: a
    fragment has none)."""
    ethertype = head[12:14]
    if ethertype == ETH_P_IP and len(head) >= 34:
        return head[:14] + head[23:24] + head[26:34]
    if ethertype == ETH_P_IPV6 and len(head) >= 54:
        return head[:14] + head[20:21] + head[22:54]
    return head[:14]


class Lookahead:
    """The slots between a port's reader and its look-ahead: for each, in ring order, the key
    of the frame passed over, or None for one already delivered ahead of its turn."""

    __slots__ = ("behind", "slots")

    def __init__(self) -> None:
        self.slots: deque[bytes | None] = deque()
        self.behind: dict[bytes, int] = {}   # key -> frames of it passed over, still waiting

    def __len__(self) -> int:
        """How many slots from the reader's on have been examined."""
        return len(self.slots)

    def examine(self, key: bytes, small: bool) -> bool:
        """The next slot's frame, of flow ``key``: True if it goes now, ahead of the frames
        passed over (it is small and none of its flow waits), False if it keeps its place."""
        behind = self.behind
        if small and key not in behind:
            self.slots.append(None)
            return True
        behind[key] = behind.get(key, 0) + 1
        self.slots.append(key)
        return False

    def consume(self) -> bool:
        """The reader takes its next slot in ring order: True if its frame was delivered
        ahead already (the reader only gives the slot back), False if it is the reader's to
        deliver now.  Only while ``len(self)`` > 0."""
        key = self.slots.popleft()
        if key is None:
            return True
        behind = self.behind
        left = behind[key] - 1
        if left:
            behind[key] = left
        else:
            del behind[key]
        return False

    def clear(self) -> None:
        self.slots.clear()
        self.behind.clear()
