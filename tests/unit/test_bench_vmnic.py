"""The NIC benchmark's pure parts: its frames, the sink's answers, the UDP echo, /proc parsing,
and the report."""

from __future__ import annotations

import struct

import pytest

from vnet.bench import vmnic
from vnet.bench.nicframes import (
    COUNT,
    DATA,
    FRAME_LEN,
    QUERY,
    bench_frame,
    parse_bench,
    sink_answer,
    udp_echo,
)
from vnet.bench.testbed import BenchError
from vnet.bench.vmnic import BARE, VIRTIO, Rate, RoundTrip, Sitting
from vnet.packet.inet import internet_checksum

MAC, PEER = bytes.fromhex("02b000000102"), bytes.fromhex("02b000000101")
IP, PEER_IP = bytes([10, 253, 0, 2]), bytes([10, 253, 0, 1])


def udp_frame(dport: int = 7, dst_ip: bytes = IP, payload: bytes = b"vnet") -> bytes:
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0x1234) + payload
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 63, 17, 0,
                                   PEER_IP, dst_ip))
    header[10:12] = struct.pack("!H", internet_checksum(bytes(header)))
    return MAC + PEER + b"\x08\x00" + bytes(header) + udp


def test_a_bench_frame_is_60_bytes_and_reads_back() -> None:
    frame = bench_frame(MAC, PEER, DATA, 123456)
    assert len(frame) == FRAME_LEN
    assert frame[12:14] == b"\x88\xb5" and frame[14] == ord("D")
    parsed = parse_bench(frame)
    assert parsed is not None
    assert (parsed.dst, parsed.src, parsed.kind, parsed.value) == (MAC, PEER, DATA, 123456)
    assert parse_bench(udp_frame()) is None and parse_bench(b"short") is None


def test_the_sink_counts_data_and_answers_a_query_with_the_count() -> None:
    counted = 0
    for seq in range(3):
        counted, reply = sink_answer(bench_frame(MAC, PEER, DATA, seq), MAC, IP, counted)
        assert reply is None
    counted, reply = sink_answer(bench_frame(MAC, PEER, QUERY), MAC, IP, counted)
    assert counted == 3 and reply == bench_frame(PEER, MAC, COUNT, 3)
    other = bytes.fromhex("02b0000001ff")
    assert sink_answer(bench_frame(other, PEER, DATA), MAC, IP, 3) == (3, None)  # not ours


def test_the_udp_echo_swaps_addresses_and_ports_and_keeps_a_valid_header() -> None:
    echo = udp_echo(udp_frame(), MAC, IP)
    assert echo is not None
    assert echo[0:6] == PEER and echo[6:12] == MAC
    assert echo[26:30] == IP and echo[30:34] == PEER_IP and echo[22] == 64
    assert internet_checksum(echo[14:34]) == 0
    assert struct.unpack("!HHHH", echo[34:42]) == (7, 40000, 12, 0) and echo[42:] == b"vnet"
    assert udp_echo(udp_frame(dport=9), MAC, IP) is None
    assert udp_echo(udp_frame(dst_ip=PEER_IP), MAC, IP) is None
    assert udp_echo(udp_frame()[:30], MAC, IP) is None


def test_proc_figures_are_read() -> None:
    stat = "4242 (python -m x) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3"
    assert vmnic.stat_cpu_seconds(stat, 100) == 3.0
    dev = ("Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed "
           "multicast|bytes packets errs drop fifo colls carrier compressed\n"
           "    lo: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
           "vmtap0: 6000 100 0 2 0 0 0 0 3000 50 0 7 0 0 0 0\n")
    assert vmnic.netdev_packets(dev, "vmtap0") == (100, 2, 50, 7)
    with pytest.raises(BenchError, match="no eth9"):
        vmnic.netdev_packets(dev, "eth9")


def sitting(path: str, to_host: int, p50: float) -> Sitting:
    return Sitting(path, Rate(to_host, 2.0, 1.0), Rate(1000, 2.0, 0.5, offered=4000),
                   RoundTrip((p50, p50, p50 * 2), 0, 1.0, 0.25))


def test_the_report_gives_medians_and_ratios() -> None:
    text = vmnic.report([sitting(VIRTIO, 100_000, 300), sitting(BARE, 1_000_000, 100),
                         sitting(VIRTIO, 120_000, 200), sitting(BARE, 800_000, 80),
                         sitting(VIRTIO, 140_000, 400), sitting(BARE, 900_000, 90)], "test")
    lines = {line[:30].strip(): line[30:].split() for line in text.splitlines()[2:-1]}
    assert text.splitlines()[0] == "The VM NIC path, median of 3 (test)"
    assert lines["guest -> host, frames/s"] == ["60.0", "k", "450.0", "k", "0.13x"]
    assert lines["round trip p50, us"] == ["300", "90", "3.33x"]
    assert lines["offered/s"] == ["2.0", "k", "2.0", "k", "1.00x"]
    assert lines["far end CPU %"] == ["25", "%", "25", "%"]  # the last CPU row: no ratio


def test_bad_arguments_get_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        vmnic.main(["--repeat", "0"])
    assert exit_.value.code == 2
    assert "--repeat must be 1 or more" in capsys.readouterr().err
