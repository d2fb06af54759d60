"""The node-side rtnetlink requests, encoded and their acks read, without a socket."""

from __future__ import annotations

import socket
import struct

from vnet.host import rtnl


def attrs(payload: bytes) -> dict[int, bytes]:
    found = {}
    while payload:
        length, kind = struct.unpack_from("=HH", payload)
        found[kind] = payload[4:length]
        payload = payload[(length + 3) & ~3:]
    return found


def test_requests_are_framed_in_order_each_numbered_and_asking_an_ack() -> None:
    requests = [rtnl.link_up(1, "lo"), rtnl.address_add(7, "eth0", "10.77.0.5/16"),
                rtnl.link_up(7, "eth0")]
    data = rtnl.frame(requests, first_sequence=5)
    offset, seen = 0, []
    while offset < len(data):
        length, kind, flags, sequence, _ = struct.unpack_from("=IHHII", data, offset)
        assert flags & rtnl.NLM_F_ACK
        seen.append((kind, sequence))
        offset += length
    assert seen == [(rtnl.RTM_NEWLINK, 5), (rtnl.RTM_NEWADDR, 6), (rtnl.RTM_NEWLINK, 7)]


def test_a_link_goes_up_by_its_index() -> None:
    family, _type, index, flags, change = struct.unpack("=BxHiII", rtnl.link_up(7, "eth0").message)
    assert (family, index, flags, change) == (socket.AF_UNSPEC, 7, rtnl.IFF_UP, rtnl.IFF_UP)


def test_an_address_is_its_own_local_and_address_with_its_prefix() -> None:
    for text, family, packed in (("10.77.0.5/16", socket.AF_INET, bytes([10, 77, 0, 5])),
                                 ("fd00::5/64", socket.AF_INET6,
                                  bytes.fromhex("fd000000000000000000000000000005"))):
        request = rtnl.address_add(7, "eth0", text)
        head = struct.unpack_from("=BBBBI", request.message)
        assert (head[0], head[1], head[4]) == (family, int(text.split("/")[1]), 7)
        assert attrs(request.message[8:]) == {rtnl.IFA_LOCAL: packed, rtnl.IFA_ADDRESS: packed}
        assert request.flags & rtnl.NLM_F_EXCL, "a taken address is refused, not replaced"


def test_a_default_route_has_its_gateway_and_interface() -> None:
    request = rtnl.default_route("10.77.0.1", 7, "eth0")
    family, dst_len, _src, _tos, table, *_ = struct.unpack_from("=BBBBBBBBI", request.message)
    assert (family, dst_len, table) == (socket.AF_INET, 0, rtnl.RT_TABLE_MAIN)
    assert attrs(request.message[12:]) == {rtnl.RTA_GATEWAY: bytes([10, 77, 0, 1]),
                                           rtnl.RTA_OIF: struct.pack("=I", 7)}


def test_acks_and_refusals_are_read_by_sequence() -> None:
    def error(sequence: int, code: int) -> bytes:
        original = struct.pack("=IHHII", 16, rtnl.RTM_NEWADDR, 0, sequence, 0)
        body = struct.pack("=i", code) + original
        return struct.pack("=IHHII", 16 + len(body), rtnl.NLMSG_ERROR, 0, sequence, 0) + body

    assert rtnl.acks(error(1, 0) + error(2, -17)) == [(1, 0), (2, 17)]
