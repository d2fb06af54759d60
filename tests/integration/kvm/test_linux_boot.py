"""Boot Debian's cloud kernel (installed by .ci/install) and read its early console.

On these machines guest CPL-0 code is emulated, and the kernel stops after its early
console (docs/kvm.md); on a host with VT-x/AMD-V it would go on.  One boot, about 10 s here.
"""

from __future__ import annotations

import glob
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from vnet.kvm.boot.linux import e820_map

KERNELS = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))
MEMORY = 256 << 20
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm"),
    pytest.mark.skipif(not KERNELS, reason="no Debian cloud kernel: apt-get install "
                       "linux-image-cloud-amd64 (.ci/install does)"),
]


def test_debian_kernel_prints_our_command_line_e820_map_and_sees_two_vcpus(
        tmp_path: Path) -> None:
    token = f"vnet-boot-test={secrets.token_hex(4)}"
    cmdline = f"console=ttyS0 earlyprintk=serial,ttyS0,115200 {token}"
    console = tmp_path / "console.log"
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    subprocess.run([sys.executable, "-m", "vnet.kvm.runner", "--name", "linux", "--memory",
                    str(MEMORY), "--vcpus", "2", "--kernel", KERNELS[-1], "--cmdline", cmdline,
                    "--disk", f"{disk},ro", "--console-log", str(console)],
                   capture_output=True, text=True, timeout=300)
    text = console.read_text(errors="replace")
    # The runner announces its virtio-mmio disk on the command line, as Linux expects.
    assert f"Command line: {cmdline} virtio_mmio.device=4K@0xd0001000:6" in text, text[:2000]
    for address, size, kind in e820_map(MEMORY):
        line = (f"BIOS-e820: [mem {address:#018x}-{address + size - 1:#018x}] "
                f"{'usable' if kind == 1 else 'reserved'}")
        assert line in text, f"missing {line!r} in:\n{text[:2000]}"
    assert "ACPI: Using ACPI (MADT) for SMP configuration information" in text
    # The FADT and the DSDT that describes the virtio-mmio disk are found, checksums valid.
    assert "ACPI: FACP 0x" in text and "ACPI: DSDT 0x" in text
    assert "Incorrect checksum" not in text
    assert "smpboot: Allowing 2 CPUs, 0 hotplug CPUs" in text
    # The boot MSRs turn MTRRs on (vnet.kvm.cpu), so Linux programs PAT with write-combining.
    assert "MTRRs disabled" not in text
    assert "x86/PAT: Configuration [0-7]: WB  WC  UC- UC" in text
    assert "Hypervisor detected: KVM" in text
