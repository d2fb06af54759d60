"""virtio-blk against guest memory (a bytearray) and a disk image: good and hostile requests."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.unit.kvm.test_virtqueue import bring_up, desc, memory, offer
from vnet.kvm.virtio.blk import S_IOERR, S_OK, S_UNSUPP, T_FLUSH, T_GET_ID, T_IN, T_OUT, VirtioBlk
from vnet.kvm.virtio.mmio import S_NEEDS_RESET, MmioTransport
from vnet.kvm.virtio.queue import DESC_F_NEXT, DESC_F_WRITE

HDR, DATA, STATUS = 0x10000, 0x11000, 0x12000


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * 16)  # 4 KiB: 8 sectors
    return path


def request(mem: memoryview, kind: int, sector: int, length: int, data_writable: bool) -> None:
    struct.pack_into("<IIQ", mem, HDR, kind, 0, sector)
    desc(mem, 0, HDR, 16, DESC_F_NEXT, 1)
    desc(mem, 1, DATA, length, DESC_F_NEXT | (DESC_F_WRITE if data_writable else 0), 2)
    desc(mem, 2, STATUS, 1, DESC_F_WRITE)
    mem[STATUS] = 0xFF
    offer(mem, 0)


OPEN: list[VirtioBlk] = []


@pytest.fixture(autouse=True)
def close_disks():
    yield
    while OPEN:
        OPEN.pop().close()


def device(path: Path, readonly: bool = False) -> tuple[memoryview, MmioTransport, VirtioBlk]:
    mem = memory()
    blk = VirtioBlk(str(path), readonly)
    OPEN.append(blk)
    transport = MmioTransport(blk, mem, 0xD0001000)
    bring_up(transport)
    return mem, transport, blk


def kick(transport: MmioTransport) -> None:
    transport.notify(0)


def test_config_and_features(disk: Path) -> None:
    _mem, t, blk = device(disk, readonly=True)
    assert struct.unpack("<Q", t.read(0xD0001100, 8))[0] == 8
    assert blk.features & (1 << 5)                  # VIRTIO_BLK_F_RO


def test_read_write_flush_get_id(disk: Path) -> None:
    mem, t, _blk = device(disk)
    request(mem, T_IN, 1, 512, True)
    kick(t)
    assert mem[STATUS] == S_OK and bytes(mem[DATA:DATA + 512]) == disk.read_bytes()[512:1024]
    mem[DATA:DATA + 512] = b"w" * 512
    request(mem, T_OUT, 2, 512, False)
    kick(t)
    assert mem[STATUS] == S_OK and disk.read_bytes()[1024:1536] == b"w" * 512
    request(mem, T_FLUSH, 0, 0, False)
    kick(t)
    assert mem[STATUS] == S_OK
    request(mem, T_GET_ID, 0, 20, True)
    kick(t)
    assert bytes(mem[DATA:DATA + 9]) == b"vnet-disk"
    request(mem, 99, 0, 8, True)
    kick(t)
    assert mem[STATUS] == S_UNSUPP and t.failure is None


def test_requests_that_cannot_be_served_get_an_error_status(disk: Path) -> None:
    mem, t, _ = device(disk, readonly=True)
    request(mem, T_OUT, 0, 512, False)              # write to a read-only disk
    kick(t)
    assert mem[STATUS] == S_IOERR
    request(mem, T_IN, 7, 1024, True)               # past the end of the disk
    kick(t)
    assert mem[STATUS] == S_IOERR
    request(mem, T_IN, 2**60, 512, True)            # absurd sector
    kick(t)
    assert mem[STATUS] == S_IOERR and t.failure is None


def test_malformed_chains_fail_the_device(disk: Path) -> None:
    mem, t, _ = device(disk)
    desc(mem, 0, HDR, 16, DESC_F_WRITE)             # a lone writable "header"
    offer(mem, 0)
    kick(t)
    assert t.failure is not None and "header" in t.failure
    assert struct.unpack("<I", t.read(0xD0001070, 4))[0] & S_NEEDS_RESET


def test_a_request_whose_data_points_outside_memory_fails_the_device(disk: Path) -> None:
    mem, t, _ = device(disk)
    request(mem, T_IN, 0, 512, True)
    desc(mem, 1, len(mem) - 100, 512, DESC_F_NEXT | DESC_F_WRITE, 2)
    kick(t)
    assert t.failure is not None and "outside guest memory" in t.failure
