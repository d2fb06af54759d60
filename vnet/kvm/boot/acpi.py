"""Minimal ACPI tables for a PC guest: RSDP -> XSDT -> FADT (-> DSDT) and MADT.

The MADT lists the vCPUs' local APICs, the I/O APIC and the timer's interrupt override: ACPI
rather than an MP table, because Debian's kernels are built without MP-table parsing
(CONFIG_X86_MPPARSE is off).  The DSDT describes each virtio-mmio device as an ACPI device
``LNRO0005`` with its registers and interrupt, which is how a stock distribution kernel finds
them: Debian's builds virtio_mmio as a module without CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, so
the ``virtio_mmio.device=`` command line (which microVM kernels use) means nothing to it.  The
FADT says "hardware-reduced ACPI" (no PM timer, SCI or fixed hardware to emulate), no VGA and
no CMOS RTC, and names a sleep control register: with the soft-off object ``_S5`` in the DSDT,
that is how the guest powers itself off.  Pure bytes, written at 0xE0000, where Linux looks
for the RSDP on a BIOS machine (the e820 map reserves it).
"""

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


# AML opcodes and resource descriptors (ACPI 6.5, sections 20.2 and 6.4).
AML_NAME, AML_STRING = b"\x08", b"\x0d"
AML_BUFFER, AML_SCOPE, AML_PACKAGE, AML_DEVICE = b"\x11", b"\x10", b"\x12", b"\x5b\x82"
AML_ZERO, AML_ONE, AML_BYTE, AML_WORD, AML_DWORD = 0x00, 0x01, 0x0A, 0x0B, 0x0C
VIRTIO_MMIO_HID = "LNRO0005"
VIRTIO_MMIO_SIZE = 0x1000
FADT_HW_REDUCED_ACPI = 1 << 20
BOOT_ARCH_NO_VGA, BOOT_ARCH_NO_CMOS_RTC = 1 << 2, 1 << 5
FADT_LENGTH = 276   # revision 6
# Power-off, hardware-reduced style: the guest writes SLP_TYP (from \_S5) and SLP_EN to the
# FADT's sleep control register, an I/O port here (where a PC chipset's PM block often is).
SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT = 0x600, 0x601
S5_SLEEP_TYPE = 5
SLP_EN = 0x20
SLP_TYP_SHIFT, SLP_TYP_MASK = 2, 0x7


def pkg_length(content: int) -> bytes:
    """AML PkgLength of a package whose content (after the PkgLength) is ``content`` bytes;
    the encoded length counts the PkgLength bytes themselves."""
    if content + 1 < 0x40:
        return bytes([content + 1])
    for extra in (1, 2, 3):
        total = content + 1 + extra
        if total < 1 << (4 + 8 * extra):
            return bytes([extra << 6 | total & 0xF]) + (total >> 4).to_bytes(extra, "little")
    raise ValueError(f"an AML package of {content} bytes is too long")


def aml_integer(value: int) -> bytes:
    if value in (0, 1):
        return bytes([AML_ZERO if value == 0 else AML_ONE])
    for opcode, size in ((AML_BYTE, 1), (AML_WORD, 2), (AML_DWORD, 4)):
        if value < 1 << (8 * size):
            return bytes([opcode]) + value.to_bytes(size, "little")
    raise ValueError(f"{value:#x} does not fit a DWord")


def aml_name(seg: str, value: bytes) -> bytes:
    return AML_NAME + seg.encode() + value


def aml_package(opcode: bytes, body: bytes) -> bytes:
    """An AML term whose body's length follows its opcode: Scope, Device, Buffer, Package."""
    return opcode + pkg_length(len(body)) + body


def aml_buffer(data: bytes) -> bytes:
    return aml_package(AML_BUFFER, aml_integer(len(data)) + data)


def sleep_value(value: int) -> int | None:
    """The sleep state a write to the sleep control register asks for (None: not a request)."""
    return value >> SLP_TYP_SHIFT & SLP_TYP_MASK if value & SLP_EN else None


def _io_register(port: int) -> bytes:
    """A Generic Address Structure: one byte in system I/O space at ``port``."""
    return struct.pack("<BBBBQ", 1, 8, 0, 1, port)


def virtio_mmio_device(index: int, base: int, gsi: int) -> bytes:
    """``Device (VRnn) { _HID "LNRO0005", _UID n, _CRS { Memory32Fixed (ReadWrite, base,
    4 KiB), Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi } } }``.
    Edge: an irqfd raises the line and lowers it again."""
    resources = (struct.pack("<BHBII", 0x86, 9, 1, base, VIRTIO_MMIO_SIZE)
                 + struct.pack("<BHBBI", 0x89, 6, 0b0011, 1, gsi)
                 + b"\x79\x00")  # end tag, checksum "valid"
    body = (f"VR{index:02X}".encode()
            + aml_name("_HID", AML_STRING + VIRTIO_MMIO_HID.encode() + b"\0")
            + aml_name("_UID", aml_integer(index))
            + aml_name("_CRS", aml_buffer(resources)))
    return aml_package(AML_DEVICE, body)


def dsdt(virtio: list[tuple[int, int]]) -> bytes:
    """The DSDT: ``Name (\\_S5, Package { 5, 5, 0, 0 })`` (the soft-off state's SLP_TYP) and
    ``Scope (\\_SB) { one device per virtio-mmio transport (base, GSI) }``."""
    s5 = aml_package(AML_PACKAGE, bytes([4]) + aml_integer(S5_SLEEP_TYPE) * 2
                     + aml_integer(0) * 2)
    devices = b"".join(virtio_mmio_device(i, base, gsi) for i, (base, gsi) in enumerate(virtio))
    return _sdt(b"DSDT", AML_NAME + b"\\_S5_" + s5 + aml_package(AML_SCOPE, b"\\_SB_" + devices),
                revision=2)


def fadt(dsdt_addr: int) -> bytes:
    """A revision-6 FADT for hardware-reduced ACPI, pointing at the DSDT."""
    body = bytearray(FADT_LENGTH - 36)
    struct.pack_into("<I", body, 40 - 36, dsdt_addr)
    struct.pack_into("<H", body, 109 - 36, BOOT_ARCH_NO_VGA | BOOT_ARCH_NO_CMOS_RTC)
    struct.pack_into("<I", body, 112 - 36, FADT_HW_REDUCED_ACPI)
    struct.pack_into("<Q", body, 140 - 36, dsdt_addr)   # X_DSDT
    body[244 - 36:256 - 36] = _io_register(SLEEP_CONTROL_PORT)
    body[256 - 36:268 - 36] = _io_register(SLEEP_STATUS_PORT)
    return _sdt(b"FACP", bytes(body), revision=6)


def _align(offset: int) -> int:
    return (offset + 15) & ~15


def acpi_tables(vcpus: int, virtio: list[tuple[int, int]] | None = None,
                base: int = RSDP_ADDR) -> bytes:
    """RSDP, XSDT, FADT, DSDT and MADT, laid out from ``base``; ``virtio`` lists the
    virtio-mmio transports as (register base, GSI)."""
    if not 1 <= vcpus <= MAX_VCPUS:
        raise ValueError(f"vcpus must be 1..{MAX_VCPUS}, not {vcpus}")
    xsdt_addr = base + 0x40
    fadt_addr = xsdt_addr + 0x40
    dsdt_addr = _align(fadt_addr + FADT_LENGTH)
    dsdt_table = dsdt(virtio or [])
    madt_addr = _align(dsdt_addr + len(dsdt_table))
    xsdt = _sdt(b"XSDT", struct.pack("<QQ", fadt_addr, madt_addr))
    rsdp = bytearray(struct.pack("<8sB6sBIIQB3x", b"RSD PTR ", 0, OEM_ID, 2, 0, 36, xsdt_addr,
                                 0))
    rsdp[8] = _checksum(bytes(rsdp[:20]))
    rsdp[32] = _checksum(bytes(rsdp))
    out = bytearray(madt_addr - base)
    for address, table in ((base, bytes(rsdp)), (xsdt_addr, xsdt), (fadt_addr, fadt(dsdt_addr)),
                           (dsdt_addr, dsdt_table)):
        out[address - base:address - base + len(table)] = table
    return bytes(out) + madt(vcpus)
