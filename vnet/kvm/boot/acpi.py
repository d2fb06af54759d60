"""Minimal ACPI tables for a PC guest: RSDP -> XSDT -> MADT, listing the vCPUs' local APICs,
the I/O APIC and the timer's interrupt override.  ACPI rather than an MP table: Debian's
kernels are built without MP-table parsing (CONFIG_X86_MPPARSE is off).
Pure bytes, written at 0xE0000, where Linux looks for the RSDP on a BIOS machine (the e820
map reserves it)."""

from __future__ import annotations

import struct

RSDP_ADDR = 0xE0000
LAPIC_ADDR = 0xFEE00000
IOAPIC_ADDR = 0xFEC00000
MAX_VCPUS = 64
OEM_ID = b"VNET  "
OEM_TABLE = b"VNETVM  "


def _checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def _sdt(signature: bytes, body: bytes, revision: int = 1) -> bytes:
    table = bytearray(struct.pack("<4sIBB6s8sI4sI", signature, 36 + len(body), revision, 0,
                                  OEM_ID, OEM_TABLE, 1, b"VNET", 1) + body)
    table[9] = _checksum(bytes(table))
    return bytes(table)


def madt(vcpus: int) -> bytes:
    entries = b"".join(struct.pack("<BBBBI", 0, 8, cpu, cpu, 1) for cpu in range(vcpus))
    entries += struct.pack("<BBBBII", 1, 12, vcpus, 0, IOAPIC_ADDR, 0)
    entries += struct.pack("<BBBBIH", 2, 10, 0, 0, 2, 0)   # ISA IRQ 0 (the PIT) -> GSI 2
    return _sdt(b"APIC", struct.pack("<II", LAPIC_ADDR, 1) + entries, revision=4)


def acpi_tables(vcpus: int, base: int = RSDP_ADDR) -> bytes:
    """RSDP, XSDT and MADT, laid out from ``base``."""
    if not 1 <= vcpus <= MAX_VCPUS:
        raise ValueError(f"vcpus must be 1..{MAX_VCPUS}, not {vcpus}")
    madt_table = madt(vcpus)
    xsdt_addr = base + 0x40
    madt_addr = xsdt_addr + 0x40
    xsdt = _sdt(b"XSDT", struct.pack("<Q", madt_addr))
    rsdp = bytearray(struct.pack("<8sB6sBIIQB3x", b"RSD PTR ", 0, OEM_ID, 2, 0, 36, xsdt_addr,
                                 0))
    rsdp[8] = _checksum(bytes(rsdp[:20]))
    rsdp[32] = _checksum(bytes(rsdp))
    return bytes(rsdp).ljust(0x40, b"\0") + xsdt.ljust(0x40, b"\0") + madt_table
