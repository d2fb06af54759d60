"""The 64-byte generator's pure parts: its frame, its pace, and the pace's statistics."""

from __future__ import annotations

import socket

import pytest

from vnet.bench import frames64, pacer
from vnet.bench.frames64 import smoothness
from vnet.bench.testbed import SINK_ADDR
from vnet.packet.inet import internet_checksum


def test_the_frame_is_60_bytes_of_ipv4_udp_with_a_valid_header_checksum() -> None:
    frame = frames64.udp64()
    assert len(frame) == 60 and frame[12:14] == b"\x08\x00"
    ip = frame[14:34]
    assert internet_checksum(ip) == 0           # a correct header sums to 0xffff
    assert ip[9] == 17 and socket.inet_ntoa(ip[16:20]) == SINK_ADDR


def test_an_even_pace_has_the_target_per_ms_and_a_burst_shows() -> None:
    even = [i * 10_000 for i in range(1000)]      # 100 k/s, one frame every 10 µs
    s = smoothness(even, 100_000)
    assert s.frames == 1000 and s.max_per_ms == 100 and s.peak_ratio == pytest.approx(1.0)
    assert s.rate == pytest.approx(100_000, rel=0.01) and s.longest_gap_us == 10
    bursty = [(i // 1000) * 10_000_000 + (i % 1000) * 1000 for i in range(5000)]
    b = smoothness(bursty, 100_000)               # 1 000 frames in 1 ms, every 10 ms
    assert b.max_per_ms == 1000 and b.peak_ratio == pytest.approx(10.0)
    assert b.longest_gap_us == pytest.approx(10_000 - 999)


def test_the_window_slides_rather_than_counting_fixed_bins() -> None:
    # 50 frames just before and 50 just after a millisecond boundary: fixed bins see 50
    stamps = [900_000 + i * 2000 for i in range(100)]
    assert smoothness(stamps, 50_000).max_per_ms == 100


class FakeTime:
    def __init__(self, stalls: dict[int, float] | None = None) -> None:
        self.now, self.calls, self.stalls = 0.0, 0, stalls or {}
        self.sent: list[tuple[float, int]] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def batch(self, k: int) -> int:
        self.calls += 1
        self.now += self.stalls.get(self.calls, 0.0)   # descheduled before this batch
        self.sent.append((self.now, k))
        self.now += k * 1e-6                           # a frame costs 1 µs to send
        return k


def per_frame(sent: list[tuple[float, int]]) -> list[int]:
    return [round((t + i * 1e-6) * 1e9) for t, k in sent for i in range(k)]


def test_the_paced_sender_keeps_every_millisecond_near_the_target() -> None:
    fake = FakeTime()
    took, refused = pacer.send_repeated(fake.batch, 200_000, 200_000, 0.0002,
                                        clock=fake.clock, sleep=fake.sleep)
    assert refused == 0 and took == pytest.approx(1.0, rel=0.01)
    s = smoothness(per_frame(fake.sent), 200_000)
    assert s.max_per_ms <= 200 + pacer.chunk_size(200_000, 0.0002)


def test_after_a_stall_it_catches_up_slowly_and_forgets_an_old_deficit() -> None:
    fake = FakeTime(stalls={100: 0.003, 2000: 0.05})   # 3 ms, then 50 ms away
    chunk = pacer.chunk_size(100_000, 0.0002)
    pacer.send_repeated(fake.batch, 100_000, 100_000, 0.0002, clock=fake.clock,
                        sleep=fake.sleep)
    s = smoothness(per_frame(fake.sent), 100_000)
    assert s.max_per_ms <= pacer.CATCH_UP * 100 + 2 * chunk   # no catch-up burst
    # the 50 ms stall is not made up: the whole send took about that much longer
    assert fake.now == pytest.approx(1.0 + 0.05, abs=0.01)


def test_refused_frames_are_counted() -> None:
    fake = FakeTime()
    _took, refused = pacer.send_repeated(lambda k: k - 1, 100, 10_000, 0.001,
                                        clock=fake.clock, sleep=fake.sleep)
    assert refused == 10


def test_the_batch_sender_sends_its_frames_in_turn_and_round_again() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        frames = [bytes([i]) * 60 for i in range(3)]
        send = frames64.BatchSender(a, frames)
        assert send(2) == 2 and send(3) == 3
        b.setblocking(False)
        got = [b.recv(100) for _ in range(5)]
        assert got == [frames[0], frames[1], frames[2], frames[0], frames[1]]
