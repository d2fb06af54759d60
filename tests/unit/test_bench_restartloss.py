"""The restart benchmark's arithmetic (vnet/bench/restartloss.py): what a stream lost across
one disruption, its own accounting, and parsing ping's and the receiver's lines."""

from __future__ import annotations

import pytest

from vnet.bench.restartloss import (
    Accounting,
    accounting,
    loss_after,
    parse_datagram,
    parse_ping_reply,
    parse_ping_summary,
    spread,
)


def stream(seqs: range | list[int], start: float = 100.0, period: float = 0.001
           ) -> dict[int, float]:
    return {s: start + s * period for s in seqs}


def test_a_stream_that_never_stops_lost_nothing() -> None:
    arrivals = stream(range(1, 1001))
    loss = loss_after(100.5, arrivals)
    assert (loss.lost, loss.received, loss.back_after) == (0, 500, 0.0)
    assert loss.longest_silence == pytest.approx(0.001)


def test_one_gap_is_counted_and_timed_from_the_disruption() -> None:
    arrivals = stream([*range(1, 501), *range(601, 1001)])
    loss = loss_after(100.5005, arrivals)
    assert loss.lost == 100
    assert loss.received == 400
    assert loss.back_after == pytest.approx(0.601 - 0.5005)
    assert loss.longest_silence == pytest.approx(0.601 - 0.5005)


def test_every_gap_after_the_disruption_counts_but_not_those_before() -> None:
    arrivals = stream([*range(1, 100), *range(110, 501), *range(521, 800), *range(803, 900)])
    loss = loss_after(100.5005, arrivals)
    assert loss.lost == 20 + 3
    assert loss.back_after == pytest.approx(0.521 - 0.5005)   # the first gap after it


def test_frames_in_flight_at_the_disruption_count_as_lost() -> None:
    # 500 left before the disruption at .5005 and its reply never came; 501 came after.
    arrivals = {**stream(range(1, 500)), 501: 100.6, 502: 100.601}
    assert loss_after(100.5005, arrivals).lost == 1


def test_a_stream_that_did_not_flow_or_did_not_resume_is_refused() -> None:
    with pytest.raises(ValueError, match="never flowed"):
        loss_after(99.0, stream(range(1, 10)))
    with pytest.raises(ValueError, match="never resumed"):
        loss_after(200.0, stream(range(1, 10)))


def test_accounting_agrees_or_says_what_is_wrong() -> None:
    arrivals = stream([*range(1, 50), *range(60, 101)])
    assert accounting(100, arrivals, 90).problems == []
    assert accounting(100, arrivals, None).problems == []
    assert "only 99 were sent" in " ".join(accounting(99, arrivals, None).problems)
    assert accounting(100, arrivals, 91).problems == ["the receiver counted 91, 90 were seen"]
    assert Accounting(5, 6, None, 5).problems == ["6 arrived but only 5 were sent"]


def test_ping_and_receiver_lines_are_parsed_and_others_ignored() -> None:
    assert parse_ping_reply("[1764681234.123456] 64 bytes from 10.2.0.2: icmp_seq=17 ttl=64 "
                            "time=0.31 ms") == (17, 1764681234.123456)
    assert parse_ping_reply("PING 10.2.0.2 (10.2.0.2) 56(84) bytes of data.") is None
    assert parse_ping_summary(["", "--- 10.2.0.2 ping statistics ---",
                               "1200 packets transmitted, 1187 received, 1.08% packet loss, "
                               "time 1300ms"]) == (1200, 1187)
    assert parse_ping_summary(["PING 10.2.0.2"]) is None
    assert parse_datagram("42 1764681234.500000\n") == (42, 1764681234.5)
    assert parse_datagram("end 42") is None


def test_spread_text() -> None:
    assert spread([3, 1, 2]).text() == "2 (1..3)"
    assert spread([0.0, 0.0]).text("{:.0f} ms") == "0 ms"
    with pytest.raises(ValueError):
        spread([])
