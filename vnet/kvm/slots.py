"""Where each virtio-mmio device of a VM sits: one table of (register base, GSI) slots.

The first NIC is where the tiny guest looks for it (0xd0000000, GSI 5), the disk next to it
(0xd0001000, GSI 6); further NICs follow 4 KiB apart on the I/O APIC's pins 16-23.  The
kernel command line and the ACPI DSDT announce these, the runner wires them, and the
topology loader takes the NIC limit from here: this module imports nothing, so the loader
does not pull in the VMM.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MmioSlot:
    base: int   # guest-physical address of the transport's 4 KiB register window
    gsi: int    # the interrupt line the device raises


NIC_SLOTS = (MmioSlot(0xD0000000, 5),
             *(MmioSlot(0xD0002000 + i * 0x1000, 16 + i) for i in range(8)))
DISK_SLOT = MmioSlot(0xD0001000, 6)
MAX_NICS = len(NIC_SLOTS)
