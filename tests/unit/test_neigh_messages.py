"""vnet.host.neigh's netlink messages, built and parsed without a kernel: the layout of a
request, which request an acknowledgement answers, and the words of a refusal."""

from __future__ import annotations

import errno
import socket

import pytest

from vnet.errors import HostError
from vnet.host import neigh


def test_a_forwarding_entry_request_is_one_ndmsg_with_the_mac_and_the_destination():
    request = neigh.fdb_set(7, "02:AA:00:00:00:01", "10.90.0.3")
    length, kind, flags, seq, pid = neigh.HEADER.unpack_from(request.message)
    assert (length, kind, seq, pid) == (len(request.message), neigh.RTM_NEWNEIGH, 0, 0)
    assert flags == (neigh.NLM_F_REQUEST | neigh.NLM_F_ACK | neigh.NLM_F_CREATE
                     | neigh.NLM_F_REPLACE)
    body = request.message[neigh.HEADER.size:]
    assert neigh.NDMSG.unpack_from(body) == (neigh.AF_BRIDGE, 0, 0, 7, neigh.NUD_PERMANENT,
                                             neigh.NTF_SELF, 0)
    assert neigh.parse_neigh(body) == (7, "10.90.0.3", "02:aa:00:00:00:01")
    assert len(request.message) % 4 == 0
    assert request.what == "forwarding entry 02:AA:00:00:00:01 -> 10.90.0.3"


def test_flood_entries_append_and_removals_may_find_nothing():
    append = neigh.fdb_append(3, neigh.ALL_ZEROS, "fd00::2")
    _, _, flags, _, _ = neigh.HEADER.unpack_from(append.message)
    assert flags & neigh.NLM_F_APPEND and not flags & neigh.NLM_F_REPLACE
    assert neigh.parse_neigh(append.message[neigh.HEADER.size:])[1] == "fd00::2"
    whole = neigh.fdb_delete(3, "02:aa:00:00:00:01")
    assert neigh.parse_neigh(whole.message[neigh.HEADER.size:]) == (3, None,
                                                                    "02:aa:00:00:00:01")
    assert whole.absent_is_fine and not append.absent_is_fine


def test_a_neighbour_entry_is_in_the_ip_family():
    request = neigh.neigh_set(4, "10.1.0.2", "02:00:00:00:02:01")
    body = request.message[neigh.HEADER.size:]
    assert neigh.NDMSG.unpack_from(body)[0] == socket.AF_INET
    assert neigh.parse_neigh(body) == (4, "10.1.0.2", "02:00:00:00:02:01")
    assert neigh.neigh_delete(4, "10.1.0.2").absent_is_fine


def ack(seq: int, code: int, message: str = "", capped: bool = True) -> bytes:
    echoed = neigh.HEADER.pack(40, neigh.RTM_NEWNEIGH, 0, seq, 0)
    if not capped:
        echoed += b"\x07" * 24                      # the request's body, echoed
    tlvs = neigh._attr(neigh.NLMSGERR_ATTR_MSG, message.encode() + b"\0") if message else b""
    flags = (neigh.NLM_F_CAPPED if capped else 0) | (neigh.NLM_F_ACK_TLVS if tlvs else 0)
    payload = neigh.ERROR.pack(-code) + echoed + tlvs
    return neigh.HEADER.pack(neigh.HEADER.size + len(payload), neigh.NLMSG_ERROR, flags, seq,
                             0) + payload


@pytest.mark.parametrize("capped", [True, False])
def test_an_acknowledgement_names_its_request_and_the_kernels_reason(capped):
    data = ack(41, 0, capped=capped) + ack(42, errno.EINVAL, "Invalid address", capped)
    messages = list(neigh.split_messages(data))
    assert [(kind, seq) for kind, _, seq, _ in messages] == [(neigh.NLMSG_ERROR, 41),
                                                             (neigh.NLMSG_ERROR, 42)]
    (_, flags0, _, first), (_, flags1, _, second) = messages
    assert neigh.parse_ack(flags0, first) == (41, 0, "")
    assert neigh.parse_ack(flags1, second) == (42, errno.EINVAL, "Invalid address")


def test_a_cut_answer_is_an_error_not_a_crash():
    with pytest.raises(HostError, match="cut short"):
        list(neigh.split_messages(ack(1, 0)[:-4]))


def test_a_failure_says_which_entry_and_why_in_words():
    failure = neigh.Failure("forwarding entry 02:aa:00:00:00:01 -> 10.90.0.3", errno.ENODEV)
    assert str(failure) == ("forwarding entry 02:aa:00:00:00:01 -> 10.90.0.3: the interface "
                            "is gone")
    odd = neigh.Failure("neighbour entry 10.1.0.2 -> 02:00:00:00:02:01", errno.EMLINK, "x")
    assert "Errno" not in str(odd) and str(odd).endswith("too many links (x)")
