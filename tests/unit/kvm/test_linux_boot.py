"""The Linux boot protocol's pure parts: bzImage payloads, LZ4 legacy frames, ELF, zero page."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import lz4.block
import pytest

from vnet.kvm.boot import linux


def elf(entry: int, segments: list[tuple[int, bytes, int]]) -> bytes:
    """A minimal 64-bit little-endian ELF with PT_LOAD program headers."""
    phoff, count = 64, len(segments)
    data_at = phoff + 56 * count
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<QQ", header, 0x18, entry, phoff)
    struct.pack_into("<HH", header, 0x36, 56, count)
    headers, blobs = b"", b""
    for paddr, data, memsz in segments:
        headers += struct.pack("<IIQQQQQQ", 1, 5, data_at + len(blobs), 0, paddr, len(data),
                               memsz, 0x1000)
        blobs += data
    return bytes(header) + headers + blobs


def bzimage(payload: bytes) -> bytes:
    image = bytearray(5 * 512 + len(payload))
    image[0x1F1] = 4                                   # setup_sects
    image[0x201] = 0x6A                                # the setup header ends at 0x202 + this
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x20F)
    struct.pack_into("<II", image, 0x248, 0, len(payload))
    image[5 * 512:] = payload
    return bytes(image)


def lz4_legacy(data: bytes, block: int = 1000) -> bytes:
    out = struct.pack("<I", linux.LZ4_LEGACY_MAGIC)
    for i in range(0, len(data), block):
        chunk = lz4.block.compress(data[i:i + block], store_size=False)
        out += struct.pack("<I", len(chunk)) + chunk
    return out + struct.pack("<I", len(data))          # the trailer Linux's build appends


def test_lz4_legacy_frames_decompress() -> None:
    data = bytes(range(256)) * 40
    assert linux.lz4_legacy_decompress(lz4_legacy(data)) == data


def test_bzimage_with_lz4_vmlinux_is_unpacked_and_loaded() -> None:
    kernel_elf = elf(0x1000000, [(0x1000000, b"\x90" * 64, 0x2000), (0x2000000, b"d" * 8, 8)])
    vmlinux, header = linux.extract_vmlinux(bzimage(lz4_legacy(kernel_elf, 50)))
    assert vmlinux == kernel_elf and header[:1] == b"\x04"
    kernel = linux.parse_elf(vmlinux, header)
    assert kernel.entry == 0x1000000
    assert [(s.physical, len(s.data), s.memory_size) for s in kernel.segments] == [
        (0x1000000, 64, 0x2000), (0x2000000, 8, 8)]


def test_bad_images_say_what_is_wrong() -> None:
    with pytest.raises(linux.BootError, match="not a bzImage"):
        linux.extract_vmlinux(b"\0" * 4096)
    with pytest.raises(linux.BootError, match="only an uncompressed or LZ4"):
        linux.extract_vmlinux(bzimage(b"\x1f\x8b" + bytes(100)))  # gzip
    with pytest.raises(linux.BootError, match="64-bit little-endian ELF"):
        linux.parse_elf(b"MZ" + bytes(100))
    broken = bytearray(elf(0, [(0x100000, b"x" * 16, 16)]))
    struct.pack_into("<Q", broken, 64 + 8, 1 << 40)       # p_offset far past the file
    with pytest.raises(linux.BootError, match="outside the file"):
        linux.parse_elf(bytes(broken))


def test_zero_page_carries_the_command_line_pointer_and_e820() -> None:
    kernel = linux.parse_elf(elf(0x1000000, [(0x1000000, b"x", 1)]), b"\x04" + bytes(16))
    page = linux.zero_page(kernel, "console=ttyS0", 256 << 20)
    assert page[0x1F1] == 4 and page[0x210] == 0xFF
    assert struct.unpack_from("<I", page, 0x228)[0] == linux.CMDLINE
    entries = [struct.unpack_from("<QQI", page, 0x2D0 + 20 * n) for n in range(page[0x1E8])]
    assert entries == linux.e820_map(256 << 20)
    assert entries[-1] == (0x100000, (256 << 20) - 0x100000, linux.E820_RAM)
    with pytest.raises(linux.BootError, match="longer than"):
        linux.zero_page(kernel, "x" * linux.CMDLINE_MAX, 256 << 20)


def test_initrd_goes_to_the_top_of_memory_and_into_the_zero_page() -> None:
    kernel = linux.parse_elf(elf(0x1000000, [(0x1000000, b"x", 0x3000000)]))
    address = linux.initrd_address(kernel, 5000, 256 << 20)
    assert address % 4096 == 0 and address + 5000 <= 256 << 20 and address >= 0x4000000
    page = linux.zero_page(kernel, "", 256 << 20, (address, 5000))
    assert struct.unpack_from("<II", page, 0x218) == (address, 5000)
    with pytest.raises(linux.BootError, match="does not fit"):
        linux.initrd_address(kernel, 250 << 20, 256 << 20)


def acpi_table_map(tables: bytes, base: int) -> dict[bytes, bytes]:
    """Follow RSDP -> XSDT -> each table (and FADT -> DSDT), checking every checksum."""
    rsdp = tables[:36]
    assert rsdp[:8] == b"RSD PTR " and sum(rsdp[:20]) % 256 == 0 and sum(rsdp) % 256 == 0
    found = {}

    def table_at(address: int) -> bytes:
        offset = address - base
        length = struct.unpack_from("<I", tables, offset + 4)[0]
        table = tables[offset:offset + length]
        assert len(table) == length and sum(table) % 256 == 0, table[:4]
        found[table[:4]] = table
        return table

    xsdt = table_at(struct.unpack_from("<Q", rsdp, 24)[0])
    for (address,) in struct.iter_unpack("<Q", xsdt[36:]):
        table_at(address)
    fadt = found[b"FACP"]
    assert struct.unpack_from("<I", fadt, 40)[0] == struct.unpack_from("<Q", fadt, 140)[0]
    table_at(struct.unpack_from("<Q", fadt, 140)[0])
    return found


def test_acpi_tables_checksum_and_list_every_vcpu() -> None:
    from vnet.kvm.boot import acpi

    tables = acpi_table_map(acpi.acpi_tables(3, [(0xD0000000, 5)]), acpi.RSDP_ADDR)
    assert set(tables) == {b"XSDT", b"FACP", b"DSDT", b"APIC"}
    madt = tables[b"APIC"]
    entries, i, cpus = madt[44:], 0, []
    while i < len(entries):
        kind, length = entries[i], entries[i + 1]
        if kind == 0:
            cpus.append(entries[i + 3])
        i += length
    assert cpus == [0, 1, 2]
    flags = struct.unpack_from("<I", tables[b"FACP"], 112)[0]
    assert flags & acpi.FADT_HW_REDUCED_ACPI
    with pytest.raises(ValueError, match="vcpus"):
        acpi.acpi_tables(0)


@pytest.mark.parametrize("content,encoded", [(0, b"\x01"), (62, b"\x3f"), (63, b"\x41\x04"),
                                             (4093, b"\x4f\xff"), (4094, b"\x81\x00\x01")])
def test_aml_package_lengths_count_themselves(content: int, encoded: bytes) -> None:
    from vnet.kvm.boot.acpi import pkg_length

    assert pkg_length(content) == encoded


@pytest.mark.skipif(not shutil.which("iasl"), reason="needs iasl (apt-get install "
                    "acpica-tools; .ci/install does)")
def test_acpica_reads_the_dsdt_as_virtio_mmio_devices(tmp_path: Path) -> None:
    """ACPICA (the interpreter Linux uses) disassembles the DSDT into what we meant."""
    from vnet.kvm.boot import acpi

    aml = tmp_path / "dsdt.aml"
    aml.write_bytes(acpi.dsdt([(0xD0000000, 5), (0xD0001000, 6)]))
    result = subprocess.run(["iasl", "-d", str(aml)], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    text = " ".join((tmp_path / "dsdt.dsl").read_text().split())
    for index, (base, gsi) in enumerate([(0xD0000000, 5), (0xD0001000, 6)]):
        device = (f'Device (VR{index:02X}) {{ Name (_HID, "LNRO0005") // _HID: Hardware ID '
                  f'Name (_UID, {"Zero" if index == 0 else "One"}) // _UID: Unique ID '
                  "Name (_CRS, ResourceTemplate () // _CRS: Current Resource Settings { "
                  f"Memory32Fixed (ReadWrite, 0x{base:08X}, // Address Base 0x00001000, "
                  "// Address Length ) Interrupt (ResourceConsumer, Edge, ActiveHigh, "
                  f"Exclusive, ,, ) {{ 0x{gsi:08X}, }} }}) }}")
        assert device in text, text
    assert 'Name (\\_S5, Package (0x04) // _S5_: S5 System State { 0x05, 0x05, Zero, Zero })' \
        in text, text


@pytest.mark.skipif(not shutil.which("iasl"), reason="needs iasl (apt-get install "
                    "acpica-tools; .ci/install does)")
def test_acpica_reads_the_fadt_as_hardware_reduced_with_a_sleep_control_port(
        tmp_path: Path) -> None:
    from vnet.kvm.boot import acpi

    table = tmp_path / "facp.dat"
    table.write_bytes(acpi.fadt(0xE0100))
    result = subprocess.run(["iasl", "-d", str(table)], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (tmp_path / "facp.dsl").read_text()
    for line in ("Hardware Reduced (V5) : 1", "DSDT Address : 00000000000E0100",
                 "CMOS RTC Not Present (V5) : 1"):
        assert line in " ".join(text.split()), line
    control = text.split("Sleep Control Register")[1].split("Sleep Status Register")[0]
    assert "[SystemIO]" in control and "Address : 0000000000000600" in control


def test_a_sleep_control_write_means_soft_off_only_with_slp_en_and_type_5() -> None:
    from vnet.kvm.boot.acpi import S5_SLEEP_TYPE, sleep_value

    assert sleep_value(5 << 2 | 0x20) == S5_SLEEP_TYPE
    assert sleep_value(5 << 2) is None          # no SLP_EN: not a request
    assert sleep_value(3 << 2 | 0x20) == 3      # another state: not soft-off
