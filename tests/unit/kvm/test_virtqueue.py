"""Guest-controlled virtqueues, honest and hostile, against a bytearray as guest memory."""

from __future__ import annotations

import struct

import pytest

from vnet.kvm.virtio.mmio import S_DRIVER_OK, S_FEATURES_OK, S_NEEDS_RESET, MmioTransport
from vnet.kvm.virtio.queue import DESC_F_NEXT, DESC_F_WRITE, QueueError, SplitQueue

MEM = 1 << 20
DESC, AVAIL, USED, SIZE = 0x1000, 0x2000, 0x3000, 8


def memory() -> memoryview:
    return memoryview(bytearray(MEM))


def desc(mem: memoryview, index: int, addr: int, length: int, flags: int = 0,
         nxt: int = 0) -> None:
    struct.pack_into("<QIHH", mem, DESC + 16 * index, addr, length, flags, nxt)


def loop(mem: memoryview) -> None:
    desc(mem, 0, 0x10000, 8, DESC_F_NEXT, 1)
    desc(mem, 1, 0x10000, 8, DESC_F_NEXT, 0)


def offer(mem: memoryview, *heads: int) -> None:
    (idx,) = struct.unpack_from("<H", mem, AVAIL + 2)
    for head in heads:
        struct.pack_into("<H", mem, AVAIL + 4 + 2 * (idx % SIZE), head)
        idx += 1
    struct.pack_into("<H", mem, AVAIL + 2, idx)


def queue(mem: memoryview) -> SplitQueue:
    q = SplitQueue(mem, SIZE, DESC, AVAIL, USED)
    q.check()
    return q


def test_a_chain_is_read_written_and_returned() -> None:
    mem = memory()
    mem[0x10000:0x10005] = b"hello"
    desc(mem, 0, 0x10000, 5, DESC_F_NEXT, 1)
    desc(mem, 1, 0x20000, 16, DESC_F_WRITE)
    offer(mem, 0)
    q = queue(mem)
    head, buffers = q.pop() or (None, [])
    assert head == 0 and q.read(buffers) == b"hello"
    assert q.write(buffers, b"x" * 20) == 16              # clipped to the writable space
    q.push_used(0, 16)
    assert struct.unpack_from("<HII", mem, USED + 2) == (1, 0, 16)
    assert q.pop() is None


@pytest.mark.parametrize(("setup", "message"), [
    (lambda m: desc(m, 0, MEM - 4, 16), "outside guest memory"),
    (lambda m: desc(m, 0, 0x10000, 0xFFFFFFFF), "outside guest memory"),
    (lambda m: loop(m), "a loop"),
    (lambda m: desc(m, 0, 0x10000, 8, DESC_F_NEXT, 99), "outside a queue"),
    (lambda m: desc(m, 0, 0x10000, 8, 4), "indirect"),
])
def test_hostile_chains_are_refused(setup, message) -> None:
    mem = memory()
    setup(mem)
    offer(mem, 0)
    with pytest.raises(QueueError, match=message):
        queue(mem).pop()


def test_an_available_index_that_jumps_is_refused() -> None:
    mem = memory()
    struct.pack_into("<H", mem, AVAIL + 2, SIZE + 5)
    with pytest.raises(QueueError, match="jumped"):
        queue(mem).pop()


def test_rings_outside_memory_or_bad_sizes_are_refused() -> None:
    with pytest.raises(QueueError, match="outside guest memory"):
        SplitQueue(memory(), SIZE, MEM - 8, AVAIL, USED).check()
    with pytest.raises(QueueError, match="power of two"):
        SplitQueue(memory(), 6, DESC, AVAIL, USED).check()


class Sink:
    device_id, features, num_queues = 1, 0, 1
    notified = 0

    negotiated_features = -1

    def config(self) -> bytes:
        return b"\x02\x00\x00\x00\x00\x01"

    def negotiated(self, features: int) -> None:
        self.negotiated_features = features

    def notify(self, transport: MmioTransport, index: int) -> None:
        q = transport.queue(index)
        assert q is not None
        while (chain := q.pop()) is not None:
            self.notified += 1
            q.push_used(chain[0], 0)


def reg(t: MmioTransport, offset: int, value: int) -> None:
    t.write(t.base + offset, struct.pack("<I", value))


def bring_up(t: MmioTransport) -> None:
    reg(t, 0x70, 3)
    reg(t, 0x24, 1)
    reg(t, 0x20, 1)                         # VIRTIO_F_VERSION_1
    reg(t, 0x70, 3 | S_FEATURES_OK)
    reg(t, 0x30, 0)
    reg(t, 0x38, SIZE)
    for offset, address in ((0x80, DESC), (0x90, AVAIL), (0xA0, USED)):
        reg(t, offset, address)
    reg(t, 0x44, 1)
    reg(t, 0x70, 3 | S_FEATURES_OK | S_DRIVER_OK)


def test_transport_negotiates_and_a_hostile_ring_fails_the_device_until_reset() -> None:
    mem = memory()
    device = Sink()
    t = MmioTransport(device, mem, 0xD0000000)
    assert t.read(0xD0000000, 4) == b"virt" and t.read(0xD0000100, 6) == device.config()
    bring_up(t)
    assert device.negotiated_features == 1 << 32      # VERSION_1 only
    desc(mem, 0, 0x10000, 8)
    offer(mem, 0)
    reg(t, 0x50, 0)
    assert device.notified == 1 and t.failure is None
    desc(mem, 1, 0x10000, 8, DESC_F_NEXT, 1)   # a chain that points at itself
    offer(mem, 1)
    reg(t, 0x50, 0)
    assert t.failure is not None and "loop" in t.failure
    status = struct.unpack("<I", t.read(0xD0000070, 4))[0]
    assert status & S_NEEDS_RESET
    offer(mem, 0)
    reg(t, 0x50, 0)
    assert device.notified == 1                 # failed: notifications are ignored
    reg(t, 0x70, 0)                              # the guest resets the device
    assert t.failure is None and t.status == 0


def test_features_without_version_1_are_refused() -> None:
    t = MmioTransport(Sink(), memory(), 0xD0000000)
    reg(t, 0x70, 3)
    reg(t, 0x70, 3 | S_FEATURES_OK)
    assert not struct.unpack("<I", t.read(0xD0000070, 4))[0] & S_FEATURES_OK


def test_offloads_follow_what_the_driver_accepted() -> None:
    from vnet.kvm.virtio import net

    assert net.tun_offloads(net.F_MAC) == 0
    assert net.tun_offloads(net.F_GUEST_TSO4) == 0            # TSO without checksum: none
    assert net.tun_offloads(net.F_GUEST_CSUM) == net.TUN_F_CSUM
    full = net.F_GUEST_CSUM | net.F_GUEST_TSO4 | net.F_GUEST_TSO6 | net.F_GUEST_ECN
    assert net.tun_offloads(full) == (net.TUN_F_CSUM | net.TUN_F_TSO4 | net.TUN_F_TSO6
                                      | net.TUN_F_TSO_ECN)
    assert net.OFFERED & net.F_HOST_TSO4 and net.OFFERED & net.F_CSUM


def test_used_buffers_raise_the_interrupt_until_acknowledged() -> None:
    mem = memory()
    raised: list[int] = []
    t = MmioTransport(Sink(), mem, 0xD0000000, lambda: raised.append(1))
    bring_up(t)
    desc(mem, 0, 0x10000, 8)
    offer(mem, 0)
    reg(t, 0x50, 0)
    assert raised == [1] and struct.unpack("<I", t.read(0xD0000060, 4))[0] == 1
    reg(t, 0x64, 1)                                    # InterruptACK
    assert struct.unpack("<I", t.read(0xD0000060, 4))[0] == 0
    struct.pack_into("<H", mem, AVAIL, 1)              # VIRTQ_AVAIL_F_NO_INTERRUPT: it polls
    offer(mem, 0)
    reg(t, 0x50, 0)
    assert raised == [1]


@pytest.mark.parametrize(("desc_at", "avail_at", "used_at", "what"), [
    (DESC + 8, AVAIL, USED, "descriptor table"), (DESC, AVAIL + 1, USED, "available ring"),
    (DESC, AVAIL, USED + 2, "used ring")])
def test_misaligned_rings_are_refused(desc_at: int, avail_at: int, used_at: int,
                                      what: str) -> None:
    with pytest.raises(QueueError, match=f"{what} at .* is not .*aligned"):
        SplitQueue(memory(), SIZE, desc_at, avail_at, used_at).check()


def test_the_used_index_counts_on_and_wraps() -> None:
    mem = memory()
    desc(mem, 0, 0x10000, 8)
    struct.pack_into("<H", mem, USED + 2, 0xFFFF)
    q = queue(mem)
    q.push_used(0, 8)
    assert struct.unpack_from("<H", mem, USED + 2) == (0,)
    assert struct.unpack_from("<II", mem, USED + 4 + 8 * (0xFFFF % SIZE)) == (0, 8)
    q.push_used(0, 4)
    assert struct.unpack_from("<H", mem, USED + 2) == (1,)
