"""Which tags the switch takes for VLAN tags: 802.1Q C-tags only, however the kernel hands
a frame over; an 802.1ad S-tag is dropped (``s-tagged``), other TPIDs are only EtherTypes.

The kernel moves an outer tag of TPID 0x8100 or 0x88a8 out of the frame and reports its TPID
beside its TCI (checked on this kernel by tests/integration/test_vlan_tags.py); a switch
that read the TCI alone switched S-tag VID 10 as VLAN 10.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vnet.datapath.engine import Bridge, Datapath
from vnet.datapath.ports import Port
from vnet.packet import c_tag_beside, insert_tag, make_tci
from vnet.packet.ethernet import C_TAG, S_TAG
from vnet.packet.vnethdr import VnetHdr, parse_vnet_hdr
from vnet.switch import PortConfig, Switch

BCAST = b"\xff" * 6
A = bytes.fromhex("020000000001")
IPV4 = b"\x08\x00"
PAYLOAD = b"\x45" + bytes(45)
PLAIN_HDR = bytes(10)

CONFIGS = [PortConfig(1, "a1", "access", vlan=10),
           PortConfig(2, "a2", "access", vlan=10),
           PortConfig(3, "b1", "access", vlan=20),
           PortConfig(4, "t1", "trunk", allowed=frozenset({10, 20})),
           PortConfig(5, "t2", "trunk", allowed=frozenset({20}), native=10)]


def tag(tpid: int, vid: int, pcp: int = 0) -> bytes:
    return struct.pack("!HH", tpid, make_tci(vid, pcp))


def wire(*tags: bytes, ethertype: bytes = IPV4) -> bytes:
    """A broadcast frame from A as it is on the wire: the tags, then ``ethertype``."""
    return BCAST + A + b"".join(tags) + ethertype + PAYLOAD


def switch() -> Switch:
    sw = Switch()
    for config in CONFIGS:
        sw.add_port(config)
    return sw


# ---- the receive paths' normalisation ---------------------------------------------------------

def test_a_c_tag_stays_beside_the_frame() -> None:
    frame = wire()
    assert c_tag_beside(PLAIN_HDR, frame, 0x8100, make_tci(10, 3)) == (
        PLAIN_HDR, frame, make_tci(10, 3))
    # A kernel that does not report the TPID moved C-tags only then.
    assert c_tag_beside(PLAIN_HDR, frame, 0, make_tci(10)) == (PLAIN_HDR, frame, make_tci(10))


@pytest.mark.parametrize("tpid", [0x88A8, 0x9100])
def test_any_other_tag_goes_back_in_band_with_the_header_offsets(tpid: int) -> None:
    moved_out = wire(tag(0x8100, 20))            # what the kernel left of an S-tagged QinQ frame
    gso = VnetHdr(1, 1, 66, 1448, 34, 16).pack()  # offsets from the frame's start
    hdr, frame, tci = c_tag_beside(gso, moved_out, tpid, make_tci(10, 5))
    assert tci is None
    assert frame == wire(tag(tpid, 10, 5), tag(0x8100, 20))  # the frame as it was on the wire
    assert parse_vnet_hdr(hdr) == VnetHdr(1, 1, 70, 1448, 38, 16)


# ---- the switch's rules -------------------------------------------------------------------

@pytest.mark.parametrize("port", [c.number for c in CONFIGS])
@pytest.mark.parametrize("frame, tci", [
    (wire(tag(0x88A8, 10)), None),                          # an S-tag, in band
    (wire(tag(0x88A8, 10), tag(0x8100, 10)), None),         # QinQ
    (wire(tag(0x88A8, 20), tag(0x8100, 10)), None),
    (wire(tag(0x88A8, 10)), make_tci(0, 4)),               # behind a priority C-tag
    (wire(tag(0x88A8, 0)), None),                           # even a priority S-tag
], ids=["s10", "s10-c10", "s20-c10", "prio-s10", "s0"])
def test_an_s_tag_is_dropped_on_every_port(port: int, frame: bytes, tci: int | None) -> None:
    sw = switch()
    d = sw.receive(port, frame, tci, 0.0)
    assert d.drop == "s-tagged" and d.untagged == d.tagged == ()
    assert sw.counters(port).drops == {"s-tagged": 1}
    assert sw.fdb.entries(0.0) == []                        # and its source is not learned


def test_an_s_tag_inside_a_c_tag_is_payload_of_that_vlan() -> None:
    """C-tag VID 10 outermost: VLAN 10, whatever follows (as for every 802.1Q bridge)."""
    d = switch().receive(4, wire(tag(0x88A8, 20)), make_tci(10), 0.0)
    assert d.drop is None and d.vid == 10 and d.untagged == (1, 2, 5)


@pytest.mark.parametrize("tpid", [0x9100, 0x9200])
def test_other_tpids_are_ethertypes_of_untagged_frames(tpid: int) -> None:
    sw = switch()
    frame = wire(tag(tpid, 20))
    assert sw.receive(4, frame, None, 0.0).drop == "untagged-no-native"   # not VLAN 20
    d = sw.receive(5, frame, None, 0.0)                                   # native VLAN 10
    assert d.drop is None and d.vid == 10
    d = sw.receive(3, frame, None, 0.0)                                   # access VLAN 20
    assert d.drop is None and d.vid == 20


# ---- property: the whole receive path, from what the kernel hands over to what is sent ---------

class Recorder(Port):
    """A port that only records what the datapath emits through it."""

    kind = "recorder"

    def __init__(self) -> None:  # no socket: nothing is received, nothing really sent
        self.sent: list[bytes] = []

    def drain(self, now: float, budget: int) -> None:
        raise AssertionError("not used")

    def emit(self, hdr: bytes, frame: bytes) -> None:
        self.sent.append(frame)


def spec(config: PortConfig, frame: bytes) -> int | str:
    """What an 802.1Q C-VLAN bridge that drops S-tags does with ``frame`` as on the wire
    arriving at ``config``: the VLAN it is switched in, or the drop reason."""
    outer = frame[12:14]
    if outer == S_TAG:
        return "s-tagged"
    if outer == C_TAG and int.from_bytes(frame[14:16], "big") & 0xFFF:
        vid = int.from_bytes(frame[14:16], "big") & 0xFFF
        if config.mode == "access":
            return "tagged-on-access"
        return vid if vid in config.members else "vlan-not-allowed"
    after = frame[16:18] if outer == C_TAG else outer   # untagged, or behind a priority tag
    if after == S_TAG:
        return "s-tagged"
    if config.mode == "access":
        return "tagged-on-access" if after == C_TAG else config.vlan or 0
    return config.native if config.native else "untagged-no-native"


TPIDS = st.sampled_from([0x8100, 0x88A8, 0x9100, 0x9200])
VIDS = st.one_of(st.sampled_from([0, 10, 20, 30]), st.integers(0, 4095))
TAGS = st.lists(st.builds(tag, TPIDS, VIDS, st.integers(0, 7)), max_size=3)


@settings(max_examples=400, deadline=None)
@given(port=st.sampled_from(CONFIGS), tags=TAGS, kernel_moves=st.booleans())
def test_only_an_outer_c_tag_selects_a_vlan(port: PortConfig, tags: list[bytes],
                                            kernel_moves: bool) -> None:
    """Any stack of tags of any TPID, the outer one moved out by the kernel (as it does on
    veths and TAPs: TPID 0x8100 or 0x88a8) or left in band: the datapath's receive path and
    the switch decide as ``spec`` says, the frame is not changed but for its outer C-tag, and
    the normalisation loses nothing."""
    on_wire = wire(*tags)
    frame, tpid, tci = on_wire, 0, 0
    moved = kernel_moves and on_wire[12:14] in (C_TAG, S_TAG)
    if moved:
        tpid, tci = struct.unpack_from("!HH", on_wire, 12)
        frame = on_wire[:12] + on_wire[16:]
    hdr, frame, c_tci = c_tag_beside(PLAIN_HDR, frame, tpid, tci) if moved else (
        PLAIN_HDR, frame, None)
    assert (frame if c_tci is None else insert_tag(frame, c_tci)) == on_wire  # lossless

    with tempfile.TemporaryDirectory() as tmp:
        dp = Datapath(str(Path(tmp) / "dp.sock"))
        try:
            sw = switch()
            ports = {c.number: Recorder() for c in CONFIGS}
            dp.ports.update(ports)
            dp._deliverer(Bridge("lab", sw), port.number)(hdr, frame, c_tci, 0.0)
        finally:
            dp.close()
    want = spec(port, on_wire)
    sent = {n: p.sent for n, p in ports.items() if p.sent}
    if isinstance(want, str):
        assert sw.counters(port.number).drops == {want: 1}
        assert sent == {}
        return
    assert sw.counters(port.number).drops == {}
    outer_c = on_wire[12:14] == C_TAG
    inner = on_wire[:12] + on_wire[16:] if outer_c else on_wire
    pcp = on_wire[14] >> 5 if outer_c else 0
    members = [c for c in CONFIGS if c.number != port.number and want in c.members]
    assert sent == {c.number: [insert_tag(inner, make_tci(want, pcp)) if c.tags(want) else inner]
                    for c in members}
