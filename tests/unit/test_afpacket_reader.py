"""``afpacket.FrameReader``: frames read through one reusable buffer come out as
``recv_frame`` gives them (a Unix datagram socketpair stands in for the packet socket)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from vnet.host import afpacket
from vnet.packet.vnethdr import VNET_HDR_LEN


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_a_super_frame_then_a_short_one_come_out_whole_and_as_bytes(pair) -> None:
    sender, receiver = pair
    reader = afpacket.FrameReader()
    hdr = bytes([1, 4, 0, 66, 0x05, 0xA8, 0, 34, 0, 16])
    big, small = os.urandom(65000), os.urandom(60)
    sender.send(hdr + big)
    sender.send(bytes(VNET_HDR_LEN) + small)
    assert reader.read(receiver) == (hdr, big, None)
    got_hdr, got, tci = reader.read(receiver)   # nothing of the larger frame is left in it
    assert (got_hdr, got, tci) == (bytes(VNET_HDR_LEN), small, None)
    assert type(got) is bytes and type(got_hdr) is bytes  # the switch hashes slices of it
    with pytest.raises(BlockingIOError):
        reader.read(receiver)


def test_a_frame_read_stays_as_it_was_after_the_next_read(pair) -> None:
    sender, receiver = pair
    reader = afpacket.FrameReader()
    first, second = b"\x01" * 1500, b"\x02" * 1500
    sender.send(bytes(VNET_HDR_LEN) + first)
    sender.send(bytes(VNET_HDR_LEN) + second)
    kept = reader.read(receiver)[1]
    reader.read(receiver)
    assert kept == first


def test_without_vnet_hdr_the_whole_datagram_is_the_frame(pair) -> None:
    sender, receiver = pair
    frame = os.urandom(100)
    sender.send(frame)
    assert afpacket.FrameReader(vnet_hdr=False).read(receiver) == (
        afpacket.NO_VNET_HDR, frame, None)
