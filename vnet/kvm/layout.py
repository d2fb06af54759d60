"""Guest-physical memory layout for 64-bit entry, and the tables written there (pure).

The VMM builds what a boot loader would: a GDT, a TSS, identity-mapping page tables (2 MiB
pages, user-accessible so code at CPL 3 may run on them), and the boot info.  These are
pure functions of the layout that write into a bytearray-like guest memory, unit-tested
without /dev/kvm.
"""

from __future__ import annotations

import struct

GDT_ADDR = 0x500
TSS_ADDR = 0x8000         # 64-bit TSS followed by an I/O permission bitmap that allows all
TSS_HEADER = 0x68
IO_BITMAP_SIZE = 0x2000   # one bit per port; the CPU also reads one byte past it
TSS_SIZE = TSS_HEADER + IO_BITMAP_SIZE + 1
PML4_ADDR = 0x1000
PDPT_ADDR = 0x2000
PD_ADDR = 0x3000          # 4 page directories: identity map of the first 4 GiB
BOOT_INFO_ADDR = 0x7000   # the guest's command line, NUL-terminated
BOOT_INFO_SIZE = 0x1000
STACK_TOP = 0x80000
IMAGE_ADDR = 0x100000     # where the tiny guest's flat image is loaded
MIN_MEMORY = 2 << 20

PTE_PRESENT, PTE_WRITE, PTE_USER, PTE_HUGE = 1, 2, 4, 0x80

# GDT entries: null, kernel code/data (unused by a CPL-3 guest but valid), user code/data,
# TSS (two slots).  Selectors: user code 0x1b, user data 0x23, TSS 0x28.
USER_CS, USER_DS, TSS_SELECTOR = 0x18 | 3, 0x20 | 3, 0x28


def gdt_entry(base: int, limit: int, access: int, flags: int) -> bytes:
    return struct.pack("<HHBBBB", limit & 0xFFFF, base & 0xFFFF, (base >> 16) & 0xFF, access,
                       (flags << 4) | ((limit >> 16) & 0xF), (base >> 24) & 0xFF)


def build_gdt() -> bytes:
    tss_low = gdt_entry(TSS_ADDR, TSS_SIZE - 1, 0x89, 0)   # present, 64-bit available TSS
    tss_high = struct.pack("<II", TSS_ADDR >> 32, 0)
    return b"".join([
        bytes(8),
        gdt_entry(0, 0xFFFFF, 0x9A, 0xA),   # 0x08 kernel code, long mode
        gdt_entry(0, 0xFFFFF, 0x92, 0xC),   # 0x10 kernel data
        gdt_entry(0, 0xFFFFF, 0xFA, 0xA),   # 0x18 user code, DPL 3, long mode
        gdt_entry(0, 0xFFFFF, 0xF2, 0xC),   # 0x20 user data, DPL 3
        tss_low, tss_high])                  # 0x28 TSS


def write_tss(memory: bytearray | memoryview) -> None:
    """A TSS whose I/O bitmap allows every port: CPL-3 code may do port I/O even where the
    hypervisor does not keep RFLAGS.IOPL at 3 (nested PVM clears it on entry, measured)."""
    memory[TSS_ADDR:TSS_ADDR + TSS_SIZE] = bytes(TSS_SIZE)
    struct.pack_into("<H", memory, TSS_ADDR + 0x66, TSS_HEADER)  # I/O map base
    memory[TSS_ADDR + TSS_SIZE - 1] = 0xFF                          # the terminating byte


def write_page_tables(memory: bytearray | memoryview, memory_size: int) -> None:
    """Identity-map the first 4 GiB with 2 MiB user pages: guest RAM (at most 3 GiB here) and
    the MMIO window of the devices at 0xd0000000, which lies outside every memory slot so
    that the guest's accesses exit to the VMM."""
    if memory_size > 3 << 30:
        raise ValueError("the tiny guest's layout maps 4 GiB: at most 3 GiB of memory")
    gib = 4
    flags = PTE_PRESENT | PTE_WRITE | PTE_USER
    struct.pack_into("<Q", memory, PML4_ADDR, PDPT_ADDR | flags)
    for g in range(gib):
        struct.pack_into("<Q", memory, PDPT_ADDR + 8 * g, (PD_ADDR + 0x1000 * g) | flags)
        for i in range(512):
            address = (g << 30) | (i << 21)
            struct.pack_into("<Q", memory, PD_ADDR + 0x1000 * g + 8 * i,
                             address | flags | PTE_HUGE)


def write_user_mode_tables(memory: bytearray | memoryview, memory_size: int) -> None:
    """Everything ``Vcpu.enter_long_mode_user`` relies on: page tables, GDT and TSS."""
    write_page_tables(memory, memory_size)
    gdt = build_gdt()
    memory[GDT_ADDR:GDT_ADDR + len(gdt)] = gdt
    write_tss(memory)


def write_boot_info(memory: bytearray | memoryview, cmdline: str) -> None:
    data = cmdline.encode()
    if len(data) >= BOOT_INFO_SIZE:
        raise ValueError(f"the command line is {len(data)} bytes; at most "
                         f"{BOOT_INFO_SIZE - 1} fit")
    memory[BOOT_INFO_ADDR:BOOT_INFO_ADDR + len(data) + 1] = data + b"\0"


def load_image(memory: bytearray | memoryview, image: bytes, memory_size: int) -> None:
    if IMAGE_ADDR + len(image) > memory_size:
        raise ValueError(f"a {len(image)}-byte image does not fit at {IMAGE_ADDR:#x} in "
                         f"{memory_size} bytes of guest memory")
    memory[IMAGE_ADDR:IMAGE_ADDR + len(image)] = image
