"""The VM runner: one process per guest (``python -m vnet.kvm.runner``).

What exists today: guest memory, one vCPU entered directly in 64-bit mode at CPL 3, the
16550 console written to a log file (and stdout), the paravirtual exit port 0x501 and wait
port 0x502, one virtio-net NIC over virtio-mmio on a TAP (queue kicks on ioeventfds, served
by a device thread), a virtio-blk disk on a raw image, and the project's tiny guest.  Still to
come (docs/kvm.md): irqfd and the in-kernel irqchip and PIT, the Linux boot protocol, several
vCPUs and NICs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vnet.errors import VnetError
from vnet.guest.build import build_tiny_guest
from vnet.kvm import layout
from vnet.kvm.boot import acpi, linux
from vnet.kvm.console import ConsoleSocket
from vnet.kvm.iothread import NetIoThread
from vnet.kvm.serial import Serial16550
from vnet.kvm.virtio.blk import VirtioBlk
from vnet.kvm.virtio.mmio import QUEUE_NOTIFY, MmioTransport
from vnet.kvm.virtio.net import RX, TX, VirtioNet, open_tap
from vnet.kvm.vm import IoExit, KvmError, Vm

EXIT_PORT = 0x501
I8042_COMMAND = 0x64
I8042_RESET = 0xFE
REBOOT = -1  # run_tiny_guest's status when the guest pulsed the reset line
WAIT_PORT = 0x502
WAIT_TIMEOUT = 0.2
NET_MMIO_BASE = 0xD0000000
BLK_MMIO_BASE = 0xD0001000
NET_IRQ, BLK_IRQ = 5, 6  # GSIs, as a kernel command line would announce them


def _irq(vm: Vm, gsi: int) -> Callable[[], None]:
    fd = vm.irqfd(gsi)
    return lambda: os.eventfd_write(fd, 1)
SIZES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    unit = SIZES.get(text[-1:].upper())
    try:
        return int(text[:-1]) * unit if unit else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (say 64M or 1G)") from None


@dataclass(frozen=True)
class NicArg:
    tap: str
    mac: str
    ip: str | None


def parse_nic(text: str) -> NicArg:
    fields = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
    unknown = set(fields) - {"tap", "mac", "ip"}
    if unknown or "tap" not in fields or "mac" not in fields:
        raise argparse.ArgumentTypeError(
            f"--nic {text!r}: say tap=NAME,mac=MAC[,ip=ADDR/PREFIX]")
    return NicArg(fields["tap"], fields["mac"], fields.get("ip"))


def parse_disk(text: str) -> tuple[str, bool]:
    path, _, mode = text.partition(",")
    if mode not in ("", "ro", "rw"):
        raise argparse.ArgumentTypeError(f"--disk {text!r}: say PATH, PATH,ro or PATH,rw")
    return path, mode == "ro"


def run_tiny_guest(memory: int, cmdline: str, serial: Serial16550, nic: NicArg | None = None,
                   disk: tuple[str, bool] | None = None) -> int:
    """Boot the tiny guest; returns the status it wrote to the exit port."""
    image = build_tiny_guest().read_bytes()
    if nic is not None and nic.ip:
        cmdline = f"{cmdline} ip={nic.ip}".strip()
    vm = Vm(memory)
    tap_fd = open_tap(nic.tap) if nic is not None else None
    status = 0
    mem = memoryview(vm.memory)
    vm.create_irqchip_and_pit()  # the interrupt lines the devices' irqfds raise
    net = VirtioNet(tap_fd, nic.mac) if tap_fd is not None and nic is not None else None
    transport = (MmioTransport(net, mem, NET_MMIO_BASE, _irq(vm, NET_IRQ))
                 if net is not None else None)

    blk = VirtioBlk(*disk) if disk is not None else None
    blk_transport = MmioTransport(blk, mem, BLK_MMIO_BASE, _irq(vm, BLK_IRQ)) if blk else None
    transports = [t for t in (transport, blk_transport) if t is not None]
    io_thread = None
    if net is not None and transport is not None:
        notify = NET_MMIO_BASE + QUEUE_NOTIFY
        io_thread = NetIoThread(net, transport, vm.ioeventfd(notify, 4, RX),
                                vm.ioeventfd(notify, 4, TX))

    def on_io(io: IoExit) -> bytes | None:
        nonlocal status
        if io.port == EXIT_PORT and io.out:
            status = io.data[0]
            return b"stop"
        if io.port == I8042_COMMAND:
            if io.out and io.data[0] == I8042_RESET:
                status = REBOOT
                return b"stop"
            return b"\0"  # status: both buffers empty
        if io.port == WAIT_PORT and io_thread is not None:
            io_thread.rx_delivered.wait(WAIT_TIMEOUT)  # paravirtual idle until a frame lands
            io_thread.rx_delivered.clear()
            return None
        if serial.owns(io.port):
            if io.out:
                serial.write(io.port, io.data[0])
                return None
            return bytes([serial.read(io.port)])
        return None  # no device: writes vanish, reads see all ones, as on a bus

    def on_mmio(address: int, length: int, data: bytes | None) -> bytes:
        owner = next((t for t in transports if t.owns(address)), None)
        if owner is None:
            return b"\xff" * length
        if data is None:
            return owner.read(address, length)
        owner.write(address, data)
        return b""

    try:
        layout.write_page_tables(mem, memory)
        gdt = layout.build_gdt()
        mem[layout.GDT_ADDR:layout.GDT_ADDR + len(gdt)] = gdt
        layout.write_tss(mem)
        layout.write_boot_info(mem, cmdline)
        layout.load_image(mem, image, memory)
        vcpu = vm.create_vcpu()
        vcpu.enter_long_mode_user(layout.IMAGE_ADDR, layout.STACK_TOP)
        if io_thread is not None:
            io_thread.start()
        vcpu.run_until(on_io, on_mmio)
    finally:
        if io_thread is not None and io_thread.is_alive():
            io_thread.stop()
        vm.close()
        if blk is not None:
            blk.close()
        if tap_fd is not None:
            os.close(tap_fd)
    return status


def run_linux(memory: int, kernel_path: Path, cmdline: str, serial: Serial16550,
              vcpus: int = 1, initrd_path: Path | None = None) -> int:
    """Boot a Linux bzImage or vmlinux with the 64-bit boot protocol.  On these machines
    (nested KVM, CPL 0 emulated) it prints its early console and then stops with an emulation
    failure (docs/kvm.md); on a host with VT-x/AMD-V this is the normal path."""
    image = kernel_path.read_bytes()
    elf, header = linux.extract_vmlinux(image) if linux.is_bzimage(image) else (image, b"")
    kernel = linux.parse_elf(elf, header)
    end = max(s.physical + s.memory_size for s in kernel.segments)
    if end + (16 << 20) > memory:
        raise KvmError(f"the kernel ends at {end >> 20} MiB: give the VM more than "
                       f"{(end >> 20) + 16} MiB of memory")
    vm = Vm(memory)

    def on_io(io: IoExit) -> bytes | None:
        if serial.owns(io.port):
            if io.out:
                serial.write(io.port, io.data[0])
                return None
            return bytes([serial.read(io.port)])
        return None  # no device there: reads see all ones

    try:
        mem = memoryview(vm.memory)
        layout.write_page_tables(mem, memory)
        gdt = linux.build_gdt()
        mem[layout.GDT_ADDR:layout.GDT_ADDR + len(gdt)] = gdt
        initrd = None
        if initrd_path is not None:
            ramdisk = initrd_path.read_bytes()
            address = linux.initrd_address(kernel, len(ramdisk), memory)
            mem[address:address + len(ramdisk)] = ramdisk
            initrd = (address, len(ramdisk))
        mem[linux.ZERO_PAGE:linux.ZERO_PAGE + 4096] = linux.zero_page(kernel, cmdline, memory,
                                                                      initrd)
        data = cmdline.encode() + b"\0"
        mem[linux.CMDLINE:linux.CMDLINE + len(data)] = data
        for segment in kernel.segments:
            mem[segment.physical:segment.physical + len(segment.data)] = segment.data
        tables = acpi.acpi_tables(vcpus)
        mem[acpi.RSDP_ADDR:acpi.RSDP_ADDR + len(tables)] = tables
        vm.create_irqchip_and_pit()
        vcpu = vm.create_vcpu()
        vcpu.set_supported_cpuid(vm.kvm)
        for _ in range(1, vcpus):  # application processors: they wait in KVM for INIT/SIPI
            ap = vm.create_vcpu()
            ap.set_supported_cpuid(vm.kvm)
            threading.Thread(target=ap.run_until, args=(on_io,), daemon=True,
                             name=f"vcpu{ap.index}").start()
        vcpu.enter_long_mode_kernel(kernel.entry, len(gdt) - 1, linux.ZERO_PAGE)
        vcpu.run_until(on_io)
    finally:
        vm.close()
    return 0


class Console:
    """Where the guest's serial output goes: the log file, the console socket's clients and,
    with --echo, stdout."""

    def __init__(self, log: Path | None, socket_path: Path | None, echo: bool) -> None:
        self.log = open(log, "ab") if log else None  # noqa: SIM115 - closed in close()
        self.echo = echo
        self.serial = Serial16550(self.write)
        self.socket = ConsoleSocket(socket_path, self.serial) if socket_path else None
        if self.socket:
            self.socket.start()

    def write(self, data: bytes) -> None:
        if self.log:
            self.log.write(data)
            self.log.flush()
        if self.socket:
            self.socket.write(data)
        if self.echo:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()

    def close(self) -> None:
        if self.socket:
            self.socket.close()
        if self.log:
            self.log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vnet-vm", description="run one guest on /dev/kvm")
    parser.add_argument("--name", default="vm")
    parser.add_argument("--memory", type=parse_size, default=64 << 20)
    parser.add_argument("--vcpus", type=int, default=1,
                        help="vCPUs (Linux guests: announced in the ACPI MADT; the tiny guest "
                        "uses one)")
    parser.add_argument("--kernel", default="builtin:tiny",
                        help="builtin:tiny, or a Linux bzImage or vmlinux")
    parser.add_argument("--cmdline", default="")
    parser.add_argument("--initrd", type=Path, help="an initramfs for a Linux kernel")
    parser.add_argument("--nic", type=parse_nic, help="tap=NAME,mac=MAC[,ip=ADDR/PREFIX]")
    parser.add_argument("--disk", type=parse_disk,
                        help="PATH[,ro]: a raw image as virtio-blk at 0xd0001000")
    parser.add_argument("--console-log", type=Path)
    parser.add_argument("--console-socket", type=Path,
                        help="a Unix socket for `vnet console`: live output, typed input")
    parser.add_argument("--echo", action="store_true", help="copy the console to stdout")
    parser.add_argument("--on-reboot", choices=["exit", "restart"], default="restart",
                        help="when the guest resets itself (i8042): boot it again, or exit 0")
    args = parser.parse_args(argv)
    # SIGTERM: a clean shutdown.  The vCPU's KVM_RUN returns EINTR, the handler raises
    # SystemExit on the main thread, and the finally blocks close the VM and the console.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    console = None
    try:
        console = Console(args.console_log, args.console_socket, args.echo)
        if args.kernel != "builtin:tiny":
            return run_linux(args.memory, Path(args.kernel), args.cmdline, console.serial,
                             args.vcpus, args.initrd)
        while True:
            status = run_tiny_guest(args.memory, args.cmdline, console.serial, args.nic,
                                    args.disk)
            if status != REBOOT:
                return status
            if args.on_reboot == "exit":
                return 0
    except (KvmError, VnetError, ValueError, OSError) as err:
        print(f"vnet-vm {args.name}: {err}", file=sys.stderr)
        return 1
    finally:
        if console is not None:
            console.close()


if __name__ == "__main__":
    sys.exit(main())
