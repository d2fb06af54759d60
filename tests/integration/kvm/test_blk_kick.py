"""A guest's virtio-blk kick is served by the device thread through an ioeventfd: the
QueueNotify write never exits to the vCPU thread, and the request is done all the same."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from vnet.kvm import layout
from vnet.kvm.runner import EXIT_PORT, Machine
from vnet.kvm.serial import Serial16550
from vnet.kvm.slots import DISK_SLOT
from vnet.kvm.virtio.blk import S_OK, T_IN
from vnet.kvm.virtio.mmio import QUEUE_NOTIFY, S_DRIVER_OK, S_FEATURES_OK
from vnet.kvm.virtio.queue import DESC_F_NEXT, DESC_F_WRITE
from vnet.testing import wait_until

pytestmark = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                reason="needs /dev/kvm")

DESC, AVAIL, USED, SIZE = 0x300000, 0x301000, 0x302000, 8
HDR, DATA, STATUS = 0x310000, 0x311000, 0x312000
# mov rax, QueueNotify; mov dword [rax], 0 (queue 0); mov dx, EXIT_PORT; xor eax, eax;
# out dx, al (exit status 0)
GUEST = (b"\x48\xb8" + struct.pack("<Q", DISK_SLOT.base + QUEUE_NOTIFY) + b"\xc7\x00"
         + struct.pack("<I", 0) + b"\x66\xba" + struct.pack("<H", EXIT_PORT) + b"\x31\xc0\xee"
         + b"\xeb\xfe")


def driver_sets_up_a_read_of_sector_1(machine: Machine) -> None:
    """What a guest's driver would do first, done from here: negotiate, give queue 0, post
    one read request."""
    transport = machine.transports[0][0]

    def reg(offset: int, value: int) -> None:
        transport.write(DISK_SLOT.base + offset, struct.pack("<I", value))

    reg(0x70, 3)
    reg(0x24, 1)
    reg(0x20, 1)                                       # VIRTIO_F_VERSION_1
    reg(0x70, 3 | S_FEATURES_OK)
    reg(0x30, 0)
    reg(0x38, SIZE)
    for offset, address in ((0x80, DESC), (0x90, AVAIL), (0xA0, USED)):
        reg(offset, address)
    reg(0x44, 1)
    reg(0x70, 3 | S_FEATURES_OK | S_DRIVER_OK)
    mem = machine.mem
    struct.pack_into("<IIQ", mem, HDR, T_IN, 0, 1)
    for index, (address, length, flags) in enumerate(
            [(HDR, 16, DESC_F_NEXT), (DATA, 512, DESC_F_NEXT | DESC_F_WRITE),
             (STATUS, 1, DESC_F_WRITE)]):
        struct.pack_into("<QIHH", mem, DESC + 16 * index, address, length, flags,
                         index + 1 if flags & DESC_F_NEXT else 0)
    mem[STATUS] = 0xFF
    struct.pack_into("<HHH", mem, AVAIL, 0, 1, 0)      # flags, idx 1, ring[0] = head 0


def test_a_disk_kick_is_served_off_the_vcpu_thread(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(range(256)) * 16)
    machine = Machine(4 << 20, Serial16550(lambda _data: None), [], (str(disk), False))
    try:
        mem = machine.mem
        layout.write_user_mode_tables(mem, machine.memory_size)
        mem[layout.IMAGE_ADDR:layout.IMAGE_ADDR + len(GUEST)] = GUEST
        driver_sets_up_a_read_of_sector_1(machine)
        mmio_exits: list[int] = []
        on_mmio = machine.on_mmio

        def recording(address: int, length: int, data: bytes | None) -> bytes:
            mmio_exits.append(address)
            return on_mmio(address, length, data)

        machine.on_mmio = recording  # type: ignore[method-assign]
        vcpu, = machine.vm.create_vcpus(1)
        vcpu.enter_long_mode_user(layout.IMAGE_ADDR, layout.STACK_TOP)
        assert machine.run(vcpu) == 0
        wait_until(lambda: struct.unpack_from("<H", mem, USED + 2)[0] != 0, 30,
                   "the device thread to serve the request (used index)")
        assert struct.unpack_from("<H", mem, USED + 2)[0] == 1, "one request, served once"
        assert bytes(mem[DATA:DATA + 512]) == (bytes(range(256)) * 2)
        assert mem[STATUS] == S_OK
        assert mmio_exits == [], "the kick went through the vCPU thread"
        disk_status, = machine.device_status()  # what the control socket's status reports
        assert disk_status["kind"] == "virtio-blk"
        assert disk_status["queues"] == [{"queue": "requests", "requests": 1,
                                          "read_bytes": 512, "written_bytes": 0, "errors": 0}]
    finally:
        machine.close()
