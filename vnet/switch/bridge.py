"""The 802.1Q learning switch: a pure function of (frame, in-port, tag, now) and the tables.

Behaves as an IEEE 802.1Q bridge does (and Open vSwitch's NORMAL action, and the Linux bridge
with ``vlan_filtering``):

* ingress: an access port takes untagged and priority-tagged (VID 0) frames into its VLAN and
  drops every other tag, including a tag hidden behind a priority tag (no VLAN hopping); a
  trunk takes tagged frames of its VLANs and untagged ones into its native VLAN, if any;
* an 802.1ad S-tag (TPID 0x88a8), outermost or behind a priority tag, is dropped on every
  port (``s-tagged``): this is a C-VLAN bridge, its VLAN tags are 802.1Q C-tags only, and
  an S-tag of VID 10 is not VLAN 10 (Open vSwitch's NORMAL action takes it for VLAN 10, the
  Linux bridge for an untagged frame of the native VLAN; see docs/counters.md);
* frames from group or all-zero source MACs are dropped and never learned, and frames to the
  reserved group 01:80:C2:00:00:00-0F (STP, LACP, LLDP, 802.1X, ...) are not forwarded;
* the source is learned per VLAN, up to a per-port limit (beyond it the frame is still
  forwarded but its MAC is not learned, as the Linux bridge's ``fdb_max_learned`` does);
* broadcast, multicast and unknown unicast flood to the VLAN's other ports; known unicast
  goes to its port (never back out of the in-port);
* egress: untagged on access ports and on a trunk's native VLAN, tagged elsewhere, keeping
  the ingress priority.

The caller hands over the frame *without* its outer 802.1Q C-tag and that tag's TCI (the
kernel has already taken it off; see ``vnet.host.afpacket``), every other tag in band, and
applies the returned ``Forward``.

Decisions are cached per (in-port, the first 14 bytes, TCI), as Open vSwitch's exact-match
cache does: a frame like the last one of its flow skips the checks, the VLAN rules and both
table lookups, and only refreshes its source entry and counts.  An entry is used only while
the FDB has not changed since (``Fdb.generation``: anything but a refresh), the destination
entry it relied on has not aged, and the ports are as they were; drops, unlearnable sources
and floods for an aged destination are never cached.  So a hit returns exactly what the full
decision would.  Only one full decision in ``cache_admit_every`` is remembered: a steady flow
gets in after a few frames, while traffic where every frame is a new flow (a MAC flood, a
sweep over many addresses) does not pay for filling a cache it never hits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vnet.packet.ethernet import S_TAG, TAG_ETHERTYPES, ZERO_MAC
from vnet.switch.fdb import Fdb, LearnResult
from vnet.switch.ports import PortConfig, PortCounters, VlanOptions

if TYPE_CHECKING:
    from vnet.switch.explain import Explanation

RESERVED_PREFIX = b"\x01\x80\xc2\x00\x00"
CACHE_MAX = 4096  # flows remembered; a MAC flood just clears it now and then
CACHE_ADMIT_EVERY = 16  # one decision in this many is remembered (as OVS's emc-insert-inv-prob)


class Forward:
    """A decision: send ``untagged`` as is, ``tagged`` with tag ``tci``; or ``drop``.
    ``cached``: the switch remembers it (its flow is steady, and may go to the kernel:
    ``vnet.datapath.offload``)."""

    __slots__ = ("cached", "drop", "tagged", "tci", "untagged", "vid")

    def __init__(self, vid: int, untagged: tuple[int, ...], tagged: tuple[int, ...], tci: int,
                 drop: str | None) -> None:
        self.vid = vid
        self.untagged = untagged
        self.tagged = tagged
        self.tci = tci
        self.drop = drop
        self.cached = False

    def __repr__(self) -> str:
        if self.drop:
            return f"Forward(drop={self.drop!r})"
        return f"Forward(vid={self.vid}, untagged={self.untagged}, tagged={self.tagged})"


def _dropped(reason: str) -> Forward:
    return Forward(0, (), (), 0, reason)


def cacheable(src_known: bool, out: int | None, dst_known: bool) -> bool:
    """May a decision be remembered?  Its source must be in the table, and its destination
    known or not in the table at all (an aged one could be refreshed without an FDB
    change, and the remembered flood would then be wrong)."""
    return src_known and (out is not None or not dst_known)


class _Cached:
    """A remembered decision and what it depended on (see the module docstring)."""

    __slots__ = ("aging", "dst", "forward", "generation", "rx", "src", "tagged", "untagged")

    def __init__(self, forward: Forward, generation: int, src: int, dst: int | None,
                 aging: float, rx: PortCounters, untagged: tuple[PortCounters, ...],
                 tagged: tuple[PortCounters, ...]) -> None:
        self.forward = forward
        self.generation = generation
        self.src = src  # FDB slots, valid while the generation is
        self.dst = dst  # None: no destination entry to age (unknown, group) or a static one
        self.aging = aging
        self.rx = rx
        self.untagged = untagged
        self.tagged = tagged


class _Port:
    __slots__ = ("access_vid", "config", "counters", "members", "native")

    def __init__(self, config: PortConfig) -> None:
        self.config = config
        self.counters = PortCounters()
        self.access_vid = config.vlan if config.mode == "access" else None
        self.native = config.native
        self.members = config.members


class Switch:
    def __init__(self, cache_admit_every: int = CACHE_ADMIT_EVERY) -> None:
        self.fdb = Fdb()
        self.cache_admit_every = cache_admit_every
        self._misses = 0
        self._ports: dict[int, _Port] = {}
        self._vlan_options: dict[int, VlanOptions] = {}
        # (vid, in_port) -> (untagged ports, tagged ports): flood sets, built on first use
        self._flood: dict[tuple[int, int], tuple[tuple[int, ...], tuple[int, ...]]] = {}
        # (vid, out_port) -> does it leave tagged?  None: the port is not in the VLAN
        self._egress: dict[tuple[int, int], bool | None] = {}
        self._cache: dict[tuple[int, bytes, int | None], _Cached] = {}

    # ---- configuration ----------------------------------------------------------------------

    def add_vlan(self, options: VlanOptions) -> None:
        self._vlan_options[options.vid] = options
        self.fdb.configure_vlan(options.vid, options.mac_aging, options.mac_limit)

    def add_port(self, config: PortConfig) -> None:
        if config.number in self._ports:
            raise ValueError(f"port number {config.number} is already in use")
        self._ports[config.number] = _Port(config)
        for vid in config.members:
            if vid not in self._vlan_options:
                self.add_vlan(VlanOptions(vid))
        self._invalidate()

    def remove_port(self, number: int) -> None:
        if self._ports.pop(number, None) is not None:
            self.fdb.flush_port(number)
            self._invalidate()

    def _invalidate(self) -> None:
        self._flood.clear()
        self._egress.clear()
        self._cache.clear()

    def ports(self) -> list[PortConfig]:
        return [p.config for p in self._ports.values()]

    def counters(self, number: int) -> PortCounters:
        return self._ports[number].counters

    # ---- the decision -------------------------------------------------------------------------

    def receive(self, in_port: int, frame: bytes, tci: int | None, now: float) -> Forward:
        size = len(frame)
        if size >= 14:
            # the check of _cache_hit, inline: this is the path of every frame of a flow
            cached = self._cache.get((in_port, frame[:14], tci))
            fdb = self.fdb
            if cached is not None and cached.generation == fdb.generation and (
                    (dst := cached.dst) is None or now - fdb.seen[dst] <= cached.aging):
                fdb.seen[cached.src] = now
                rx = cached.rx
                rx.rx_frames += 1
                rx.rx_bytes += size if tci is None else size + 4
                for c in cached.untagged:
                    c.tx_frames += 1
                    c.tx_bytes += size
                for c in cached.tagged:
                    c.tx_frames += 1
                    c.tx_bytes += size + 4
                return cached.forward
        return self._decide(in_port, frame, tci, now)

    def explain(self, in_port: int, frame: bytes, tci: int | None, now: float) -> Explanation:
        """What ``receive`` would do with this frame, step by step, changing nothing (no
        learning, no counting, no caching): see ``vnet.switch.explain``."""
        from vnet.switch.explain import explain

        return explain(self, in_port, frame, tci, now)

    def _decide(self, in_port: int, frame: bytes, tci: int | None, now: float) -> Forward:
        port = self._ports.get(in_port)
        if port is None:
            return _dropped("unknown-port")
        counters = port.counters
        size = len(frame)
        counters.rx_frames += 1
        counters.rx_bytes += size if tci is None else size + 4
        vid = self._classify(port, frame, tci)
        if type(vid) is str:
            counters.drop(vid)
            return _dropped(vid)
        assert isinstance(vid, int)
        src, dst = frame[6:12], frame[0:6]
        learned = self.fdb.learn(vid, src, in_port, now)
        if learned != LearnResult.REFRESHED:
            if learned == LearnResult.LIMITED:
                counters.learn_limited += 1
            elif learned == LearnResult.MOVED:
                counters.mac_moves += 1

        out = None if dst[0] & 1 else self.fdb.lookup(vid, dst, now)
        outputs = self._outputs(vid, in_port, out)
        if outputs is None:
            counters.drop("hairpin")
            return _dropped("hairpin")
        untagged, tagged = outputs
        ports = self._ports
        for number in untagged:
            c = ports[number].counters
            c.tx_frames += 1
            c.tx_bytes += size
        for number in tagged:
            c = ports[number].counters
            c.tx_frames += 1
            c.tx_bytes += size + 4
        pcp = 0 if tci is None else tci >> 13
        forward = Forward(vid, untagged, tagged, pcp << 13 | vid, None)
        self._misses += 1
        if self._misses % self.cache_admit_every:
            return forward
        fdb = self.fdb
        src_slot = fdb.slot(vid, src)
        dst_slot = None if dst[0] & 1 else fdb.slot(vid, dst)
        if cacheable(src_slot is not None, out, dst_slot is not None):
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            assert src_slot is not None
            if dst_slot is not None and fdb.static[dst_slot]:
                dst_slot = None  # never ages (and made learned again only by a change)
            forward.cached = True
            self._cache[(in_port, frame[:14], tci)] = _Cached(
                forward, fdb.generation, src_slot, dst_slot,
                self.fdb.aging(vid), counters, tuple(ports[n].counters for n in untagged),
                tuple(ports[n].counters for n in tagged))
        return forward

    def unicast_egress(self, in_port: int, src: bytes, dst: bytes, now: float
                       ) -> tuple[int, int] | None:
        """``(vid, out_port)`` if an untagged frame from ``src`` to ``dst`` arriving on
        ``in_port`` would now leave by exactly one port, untagged, and only refresh its
        source's entry (already on ``in_port``); else None.  The full decision's rules,
        changing nothing: what the datapath may hand to the kernel as a flow
        (``vnet.datapath.offload``), and checks again whenever the tables change."""
        port = self._ports.get(in_port)
        if port is None or dst[0] & 1:
            return None
        vid = self._classify(port, dst + src + b"\x08\x00", None)
        if isinstance(vid, str):
            return None
        fdb = self.fdb
        src_slot = fdb.slot(vid, src)
        if src_slot is None or fdb.port[src_slot] != in_port:
            return None
        out = fdb.lookup(vid, dst, now)
        if out is None or self._outputs(vid, in_port, out) != ((out,), ()):
            return None
        return vid, out

    # The rules, each in one place, for the decision above and for ``explain``: pure, they
    # change no table and count nothing.

    def _classify(self, port: _Port, frame: bytes, tci: int | None) -> int | str:
        """Ingress: the frame's VLAN, or the reason it is dropped (a runt, a bad source
        MAC, a tag the port does not take, a reserved group destination)."""
        if len(frame) < 14:
            return "runt"
        src = frame[6:12]
        if src[0] & 1 or src == ZERO_MAC:
            return "bad-src-mac"
        vid = 0 if tci is None else tci & 0xFFF
        if port.access_vid is not None:
            if vid != 0 or frame[12:14] in TAG_ETHERTYPES:
                return "s-tagged" if vid == 0 and frame[12:14] == S_TAG else "tagged-on-access"
            vid = port.access_vid
        elif vid == 0:
            if frame[12:14] == S_TAG:
                return "s-tagged"
            if port.native is None:
                return "untagged-no-native"
            vid = port.native
        elif vid not in port.members:
            return "vlan-not-allowed"
        dst = frame[0:6]
        if dst[0] & 1 and dst[:5] == RESERVED_PREFIX and dst[5] <= 0x0F:
            return "reserved-group"
        return vid

    def _outputs(self, vid: int, in_port: int, out: int | None
                 ) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """Egress of a frame of ``vid`` whose destination is behind ``out`` (None: unknown
        or a group): ``(untagged ports, tagged ports)``, or None for a hairpin."""
        if out is None:
            return self._flood_set(vid, in_port)
        if out == in_port:
            return None
        tags = self._egress_tags(vid, out)
        if tags is None:  # learned before the port left the VLAN: flood instead
            return self._flood_set(vid, in_port)
        return ((), (out,)) if tags else ((out,), ())

    def _cache_hit(self, in_port: int, frame: bytes, tci: int | None, now: float
                   ) -> _Cached | None:
        """The remembered decision for this frame, if it may still be used (``receive``
        has the same check inline, for speed; a unit test holds the two together)."""
        cached = self._cache.get((in_port, frame[:14], tci))
        if cached is None or cached.generation != self.fdb.generation:
            return None
        dst = cached.dst
        if dst is None or now - self.fdb.seen[dst] <= cached.aging:
            return cached
        return None

    def _flood_set(self, vid: int, in_port: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        key = (vid, in_port)
        cached = self._flood.get(key)
        if cached is None:
            members = [p for n, p in sorted(self._ports.items())
                       if n != in_port and vid in p.members]
            cached = (tuple(p.config.number for p in members if not p.config.tags(vid)),
                      tuple(p.config.number for p in members if p.config.tags(vid)))
            self._flood[key] = cached
        return cached

    def _egress_tags(self, vid: int, out: int) -> bool | None:
        key = (vid, out)
        try:
            return self._egress[key]
        except KeyError:
            port = self._ports.get(out)
            tags = None if port is None or vid not in port.members else port.config.tags(vid)
            self._egress[key] = tags
            return tags
