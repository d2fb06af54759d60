"""Small frames of other flows ahead of super-frames (``vnet.datapath.sparse``): a flow's
frames keep their order, a sparse flow's small frame does not wait behind a bulk one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vnet.datapath.sparse import Lookahead, flow_key

MAC_A, MAC_B, MAC_C = (bytes.fromhex(m) for m in ("020000000001", "020000000002",
                                                    "020000000003"))


def ipv4(proto: int, src: bytes, dst: bytes, rest: bytes = bytes(20)) -> bytes:
    return MAC_B + MAC_A + b"\x08\x00" + b"\x45" + bytes(8) + bytes([proto]) + bytes(2) + (
        src + dst + rest)


def ipv6(next_header: int, src: bytes, dst: bytes) -> bytes:
    return MAC_B + MAC_A + b"\x86\xdd" + bytes(6) + bytes([next_header, 64]) + src + dst


def test_the_key_tells_protocols_and_addresses_apart_not_ports() -> None:
    a, b, c = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), bytes([10, 0, 0, 3])
    tcp = flow_key(ipv4(6, a, b, b"\x30\x39\x14\x51" + bytes(16)))
    assert tcp == flow_key(ipv4(6, a, b, b"\x30\x3a\x14\x51" + bytes(16)))  # other port
    assert tcp != flow_key(ipv4(1, a, b))                                    # ICMP
    assert tcp != flow_key(ipv4(6, a, c))
    x, y = bytes(15) + b"\x01", bytes(15) + b"\x02"
    assert flow_key(ipv6(6, x, y)) != flow_key(ipv6(58, x, y))
    assert flow_key(ipv6(6, x, y)) == flow_key(ipv6(6, x, y) + b"payload")
    arp = MAC_B + MAC_A + b"\x08\x06" + bytes(28)
    assert flow_key(arp) == arp[:14] != flow_key(MAC_C + MAC_A + b"\x08\x06" + bytes(28))
    assert flow_key(MAC_B + MAC_A + b"\x08\x00") == MAC_B + MAC_A + b"\x08\x00"  # too short


def test_a_small_frame_of_another_flow_goes_ahead_and_its_slot_is_only_given_back() -> None:
    look = Lookahead()
    assert [look.examine(k, s) for k, s in ((b"bulk", False), (b"bulk", False),
                                            (b"ping", True), (b"bulk", True))] == [
        False, False, True, False]   # the bulk flow's small frame keeps its place
    assert len(look) == 4
    assert [look.consume() for _ in range(4)] == [False, False, True, False]
    assert len(look) == 0 and look.behind == {}


def test_a_small_frame_of_a_flow_passed_over_waits_even_after_one_went_ahead() -> None:
    look = Lookahead()
    assert look.examine(b"ping", True)          # nothing of its flow waits: ahead
    assert not look.examine(b"bulk", False)
    assert look.examine(b"ping", True)          # still nothing of "ping" passed over
    assert not look.examine(b"bulk", True)
    assert look.consume() and not look.consume()
    assert look.behind == {b"bulk": 1}
    look.clear()
    assert len(look) == 0 and look.behind == {}


Frame = tuple[int, bool]   # (flow, small)


def _switch(frames: list[Frame], arrivals: list[int], budgets: list[int]
            ) -> list[int]:
    """A model of ``RingPort.drain``: ``frames`` arrive in runs (``arrivals``), turns of
    ``budgets`` frames; at a large frame at the head, the look-ahead; returns the order the
    frames (their indices) were delivered in."""
    look, order, ring, head = Lookahead(), [], 0, 0   # ring: frames arrived so far
    turns = iter(budgets)
    while head < len(frames):
        ring = min(len(frames), ring + (arrivals.pop(0) if arrivals else len(frames)))
        budget, taken = next(turns, 64), 0
        while taken < budget and head < ring:
            if not frames[head][1]:
                scan = head + len(look)
                while taken < budget and scan < ring:
                    flow, small = frames[scan]
                    if look.examine(flow.to_bytes(1, "big"), small):
                        order.append(scan)
                        taken += 1
                    scan += 1
                if taken >= budget:
                    break
            index, head = head, head + 1
            if look and look.consume():
                continue
            order.append(index)
            taken += 1
    return order


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.booleans()), max_size=40),
       st.lists(st.integers(1, 8), max_size=20), st.lists(st.integers(1, 5), max_size=40))
def test_every_frame_is_delivered_once_and_each_flow_in_its_order(
        frames: list[Frame], arrivals: list[int], budgets: list[int]) -> None:
    order = _switch(frames, list(arrivals), budgets)
    assert sorted(order) == list(range(len(frames)))
    for flow in range(4):
        mine = [i for i in order if frames[i][0] == flow]
        assert mine == sorted(mine), f"flow {flow} was reordered: {order}"


@given(st.integers(1, 30), st.integers(0, 29))
def test_a_lone_small_frame_waits_behind_at_most_one_super_frame(bulk: int, at: int) -> None:
    """A ping that arrived behind ``bulk`` super-frames is delivered after at most the one
    the reader was at."""
    frames = [(0, False)] * bulk
    frames.insert(min(at, bulk), (1, True))
    order = _switch(frames, [], [])
    assert order.index(min(at, bulk)) <= 1
