"""What the VMM writes into guest memory, checked without /dev/kvm."""

from __future__ import annotations

import hashlib
import shutil
import struct
from pathlib import Path

import pytest

from vnet.kvm import layout
from vnet.kvm.runner import parse_size
from vnet.kvm.serial import LSR, LSR_THR_EMPTY, Serial16550

MEMORY = 16 << 20


def translate(memory: bytearray, virtual: int) -> tuple[int, int]:
    """Walk the 4-level tables like the MMU: (physical address, AND of the entries' flags)."""
    flags = 0xFFF
    table = layout.PML4_ADDR
    for shift in (39, 30, 21):
        (entry,) = struct.unpack_from("<Q", memory, table + 8 * ((virtual >> shift) & 0x1FF))
        assert entry & layout.PTE_PRESENT, f"not mapped at level {shift}"
        flags &= entry
        if entry & layout.PTE_HUGE:
            return (entry & ~0x1FFFFF & 0xFFFFFFFFFF000) | (virtual & 0x1FFFFF), flags
        table = entry & 0xFFFFFFFFFF000
    raise AssertionError("4 KiB pages are not used")


def test_identity_map_is_user_accessible() -> None:
    memory = bytearray(MEMORY)
    layout.write_page_tables(memory, MEMORY)
    for address in (0, layout.IMAGE_ADDR, layout.BOOT_INFO_ADDR, 0x3FFFFFFF, 0xD0000000):
        physical, flags = translate(memory, address)
        assert physical == address
        assert flags & layout.PTE_USER and flags & layout.PTE_WRITE


def test_gdt_has_user_long_mode_code_and_a_tss() -> None:
    gdt = layout.build_gdt()
    code = struct.unpack_from("<Q", gdt, layout.USER_CS & ~7)[0]
    assert (code >> 40) & 0xFF == 0xFA            # present, DPL 3, code, readable
    assert (code >> 53) & 1 == 1                   # L: 64-bit
    tss = struct.unpack_from("<Q", gdt, layout.TSS_SELECTOR)[0]
    assert (tss >> 40) & 0xFF == 0x89              # present, available 64-bit TSS
    base = ((tss >> 16) & 0xFFFFFF) | ((tss >> 56) << 24)
    assert base == layout.TSS_ADDR


def test_tss_io_bitmap_allows_every_port() -> None:
    memory = bytearray(MEMORY)
    layout.write_tss(memory)
    (iomap,) = struct.unpack_from("<H", memory, layout.TSS_ADDR + 0x66)
    bitmap = memory[layout.TSS_ADDR + iomap:layout.TSS_ADDR + iomap + layout.IO_BITMAP_SIZE]
    assert iomap == layout.TSS_HEADER and bitmap == bytes(layout.IO_BITMAP_SIZE)
    assert memory[layout.TSS_ADDR + layout.TSS_SIZE - 1] == 0xFF
    assert layout.TSS_ADDR + layout.TSS_SIZE <= layout.STACK_TOP - 0x1000


def test_boot_info_and_image_are_bounded() -> None:
    memory = bytearray(MEMORY)
    layout.write_boot_info(memory, "ip=10.0.0.1/24")
    assert memory[layout.BOOT_INFO_ADDR:layout.BOOT_INFO_ADDR + 15] == b"ip=10.0.0.1/24\0"
    with pytest.raises(ValueError, match="at most"):
        layout.write_boot_info(memory, "x" * layout.BOOT_INFO_SIZE)
    with pytest.raises(ValueError, match="does not fit"):
        layout.load_image(memory, bytes(MEMORY), MEMORY)


def test_serial_transmits_and_reports_an_empty_transmitter() -> None:
    out: list[bytes] = []
    uart = Serial16550(out.append)
    for c in b"hi":
        uart.write(0x3F8, c)
    assert b"".join(out) == b"hi"
    assert uart.read(0x3F8 + LSR) & LSR_THR_EMPTY
    uart.write(0x3F8 + 3, 0x80)                    # DLAB: the divisor, not the THR
    uart.write(0x3F8, 12)
    assert uart.read(0x3F8) == 12 and b"".join(out) == b"hi"


def test_sizes() -> None:
    assert parse_size("64M") == 64 << 20 and parse_size("1G") == 1 << 30
    assert parse_size("4096") == 4096


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_tiny_guest_builds_reproducibly(tmp_path: Path) -> None:
    from vnet.guest.build import build_tiny_guest

    first = build_tiny_guest(tmp_path / "a")
    second = build_tiny_guest(tmp_path / "b", force=True)
    assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(
        second.read_bytes()).digest()
    assert first.name == second.name and 0 < first.stat().st_size < 64 << 10
