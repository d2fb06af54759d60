"""The MAC sweep's pacer: never ahead of a frame's due time by more than one small chunk."""

from __future__ import annotations

import pytest

from vnet.bench import pacer


@pytest.mark.parametrize("n,rate", [(0, 1000.0), (1, 10.0), (200_000, 100_000.0),
                                    (5000, 20_000.0), (7, 800_000.0)])
def test_every_frame_is_sent_once_in_order_and_no_earlier_than_a_chunk_ahead(
        n: int, rate: float) -> None:
    chunks = pacer.plan(n, rate)
    assert [i for _, start, end in chunks for i in range(start, end)] == list(range(n))
    size = pacer.chunk_size(rate)
    for due, start, end in chunks:
        assert due == start / rate and end - start <= size
        assert (end - 1) / rate - due <= pacer.CHUNK_SECONDS + 1e-12


def test_a_sender_that_falls_behind_does_not_burst_to_catch_up() -> None:
    sent: list[tuple[float, bytes]] = []
    clock = [0.0]

    class Sock:
        def send(self, frame: bytes) -> int:
            clock[0] += 0.001  # far slower than the rate asked for
            sent.append((clock[0], frame))
            return len(frame)

    frames = [bytes([i]) for i in range(100)]
    took = pacer.send(Sock(), frames, 1_000_000.0, clock=lambda: clock[0],  # type: ignore[arg-type]
                      sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    assert [f for _, f in sent] == frames and took == pytest.approx(0.1)


def test_bad_rates_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="rate > 0"):
        pacer.plan(10, 0)
