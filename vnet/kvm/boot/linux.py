"""The Linux x86 64-bit boot protocol: bzImage → vmlinux ELF, zero page, e820, entry state.

vnet enters the kernel's own 64-bit entry (``startup_64``, the vmlinux ELF's entry point)
rather than running the bzImage's decompressor, which on nested KVM would run at CPL 0 under
the emulator for over a minute.  The vmlinux is taken from the bzImage's payload on the host:
Debian's cloud kernel packs it as LZ4 in the legacy frame format (magic 02 21 4C 18).
Everything here is pure (bytes in, bytes out) and unit-tested without /dev/kvm.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vnet.errors import VnetError
from vnet.kvm import layout

LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK = 8 << 20
ZERO_PAGE = 0x7000        # struct boot_params
CMDLINE = 0x20000         # the command line, NUL-terminated
CMDLINE_MAX = 2048
E820_RAM, E820_RESERVED = 1, 2
BOOT_CS, BOOT_DS = 0x10, 0x18


class BootError(VnetError):
    """The kernel image is not one this boot path understands; the message says why."""


@dataclass(frozen=True)
class Segment:
    physical: int
    data: bytes
    memory_size: int


@dataclass(frozen=True)
class Kernel:
    entry: int
    segments: tuple[Segment, ...]
    setup_header: bytes   # the bzImage's setup header (copied into the zero page), or b""


def is_bzimage(image: bytes) -> bool:
    return len(image) > 0x260 and image[0x202:0x206] == b"HdrS"


def extract_vmlinux(image: bytes) -> tuple[bytes, bytes]:
    """(vmlinux ELF, setup header) from a bzImage whose payload is LZ4 legacy or plain ELF."""
    if not is_bzimage(image):
        raise BootError("not a bzImage (no 'HdrS' setup header at 0x202)")
    version = struct.unpack_from("<H", image, 0x206)[0]
    if version < 0x208:
        raise BootError(f"boot protocol {version >> 8}.{version & 0xFF} has no payload "
                        f"fields; need 2.08 or newer")
    setup_sects = image[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = image[start:start + payload_length]
    header = image[0x1F1:0x202 + image[0x201]]
    if payload[:4] == b"\x7fELF":
        return payload, header
    if struct.unpack_from("<I", payload)[0] == LZ4_LEGACY_MAGIC:
        return lz4_legacy_decompress(payload), header
    raise BootError(f"the kernel payload starts {payload[:4].hex()}: only an uncompressed "
                    f"or LZ4-compressed vmlinux is supported; pass the vmlinux itself")


def lz4_legacy_decompress(data: bytes) -> bytes:
    """The LZ4 legacy frame: magic, then blocks of (u32 size, compressed bytes), each block
    up to 8 MiB decompressed; a repeated magic starts a new frame (concatenated streams)."""
    try:
        import lz4.block  # the C implementation: a pure-Python decoder takes minutes on 50 MB
    except ImportError:
        raise BootError("decompressing this kernel needs the lz4 package: pip install lz4") \
            from None
    out, i = [], 4
    while i + 4 <= len(data):
        (size,) = struct.unpack_from("<I", data, i)
        i += 4
        if size == LZ4_LEGACY_MAGIC:
            continue
        if size == 0 or i + size > len(data):
            break  # the trailer (the decompressed size) or padding
        try:
            out.append(lz4.block.decompress(data[i:i + size],
                                            uncompressed_size=LZ4_LEGACY_BLOCK))
        except lz4.block.LZ4BlockError as err:
            raise BootError(f"corrupt LZ4 block at offset {i - 4}: {err}") from None
        i += size
    return b"".join(out)


def parse_elf(elf: bytes, setup_header: bytes = b"") -> Kernel:
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise BootError("the kernel is not a 64-bit little-endian ELF")
    (entry,) = struct.unpack_from("<Q", elf, 0x18)
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    segments = []
    for n in range(phnum):
        p_type, _flags, offset, _vaddr, paddr, filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", elf, phoff + n * phentsize)
        if p_type == 1:  # PT_LOAD
            if offset + filesz > len(elf) or filesz > memsz:
                raise BootError(f"program header {n} points outside the file")
            segments.append(Segment(paddr, elf[offset:offset + filesz], memsz))
    if not segments:
        raise BootError("the ELF has no loadable segments")
    return Kernel(entry, tuple(segments), setup_header)


def e820_map(memory_size: int) -> list[tuple[int, int, int]]:
    """RAM below 640 KiB, the legacy hole reserved, RAM from 1 MiB to the end."""
    return [(0, 0x9FC00, E820_RAM), (0x9FC00, 0x100000 - 0x9FC00, E820_RESERVED),
            (0x100000, memory_size - 0x100000, E820_RAM)]


def initrd_address(kernel: Kernel, initrd_size: int, memory_size: int) -> int:
    """Where the initrd goes: page-aligned at the top of RAM (as boot loaders do), above the
    kernel; BootError when it does not fit."""
    kernel_end = max(s.physical + s.memory_size for s in kernel.segments)
    address = (memory_size - initrd_size) & ~0xFFF
    if address < kernel_end:
        raise BootError(f"a {initrd_size >> 20} MiB initrd does not fit above the kernel in "
                        f"{memory_size >> 20} MiB: give the VM more memory")
    return address


def zero_page(kernel: Kernel, cmdline: str, memory_size: int,
              initrd: tuple[int, int] | None = None) -> bytes:
    """``struct boot_params`` for a 64-bit entry: the setup header, loader id, command line
    pointer, the initrd's (address, size) and the e820 map."""
    if len(cmdline.encode()) >= CMDLINE_MAX:
        raise BootError(f"the command line is longer than {CMDLINE_MAX - 1} bytes")
    page = bytearray(4096)
    page[0x1F1:0x1F1 + len(kernel.setup_header)] = kernel.setup_header
    page[0x210] = 0xFF                                   # type_of_loader: undefined
    page[0x211] |= 0x01                                  # loadflags: LOADED_HIGH
    struct.pack_into("<I", page, 0x228, CMDLINE)         # cmd_line_ptr
    struct.pack_into("<I", page, 0x238, CMDLINE_MAX - 1)  # cmdline_size
    if initrd is not None:
        struct.pack_into("<II", page, 0x218, *initrd)     # ramdisk_image, ramdisk_size
    entries = e820_map(memory_size)
    page[0x1E8] = len(entries)
    for n, (address, size, kind) in enumerate(entries):
        struct.pack_into("<QQI", page, 0x2D0 + 20 * n, address, size, kind)
    return bytes(page)


def build_gdt() -> bytes:
    """Flat segments at the selectors the protocol names: __BOOT_CS 0x10, __BOOT_DS 0x18."""
    gdt_entry = layout.gdt_entry
    return bytes(16) + gdt_entry(0, 0xFFFFF, 0x9A, 0xA) + gdt_entry(0, 0xFFFFF, 0x92, 0xC)


def write_entry_tables(memory: bytearray | memoryview, memory_size: int) -> int:
    """What ``Vcpu.enter_long_mode_kernel`` runs on: the identity page tables and this GDT
    at ``layout.GDT_ADDR``.  Returns the GDT's limit, which the entry needs."""
    layout.write_page_tables(memory, memory_size)
    gdt = build_gdt()
    memory[layout.GDT_ADDR:layout.GDT_ADDR + len(gdt)] = gdt
    return len(gdt) - 1
