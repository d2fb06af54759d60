"""The VM runner: one process per guest (``python -m vnet.kvm.runner``).

A ``Machine`` is the PC every guest gets: memory, the in-kernel irqchip and PIT, a 16550
console, the i8042 reset line, and virtio-mmio devices (a NIC on a TAP, a disk on an image)
whose kicks arrive on ioeventfds and whose interrupts leave through irqfds.  Two boot paths
put a guest in it: the project's tiny guest (64-bit, CPL 3) and Linux's 64-bit boot protocol.
See docs/kvm.md for what each does and does not do yet.

The runner's supervisory side (signals, console and control sockets, the vCPU and device
threads) is one trio nursery, ``vnet/kvm/supervisor.py``; its exit statuses are
``vnet.kvm.control.ExitStatus``: 0 when the guest powered off or was stopped by SIGTERM, the
guest's own status (below 64) from the exit port, 1 when the VM could not be set up, 70 when
a vCPU failed, 71 when a device thread failed, 72 when a shutdown's deadline passed and the
guest was forced off, 73 on an internal error of the supervisor.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from vnet.errors import VnetError
from vnet.guest.build import build_tiny_guest
from vnet.kvm import cpuid_probe, layout
from vnet.kvm.boot import acpi, linux
from vnet.kvm.console import ConsoleHub
from vnet.kvm.control import ExitStatus
from vnet.kvm.iothread import DeviceThread, NetIoThread
from vnet.kvm.serial import COM1_IRQ, Serial16550
from vnet.kvm.slots import DISK_SLOT, MAX_NICS, NIC_SLOTS
from vnet.kvm.supervisor import REBOOT, Boot, Supervisor
from vnet.kvm.virtio.blk import VirtioBlk
from vnet.kvm.virtio.mmio import QUEUE_NOTIFY, MmioTransport
from vnet.kvm.virtio.net import RX, TX, VirtioNet, open_tap
from vnet.kvm.vm import IoExit, KvmError, Vcpu, Vm

EXIT_PORT = 0x501
I8042_COMMAND = 0x64
I8042_RESET = 0xFE
WAIT_PORT = 0x502
SHUTDOWN_PORT = 0x503  # reads 1 once the runner asks the guest to power off (the tiny guest)
WAIT_TIMEOUT = 0.2
IDLE_TIMEOUT = 0.05  # the wait port without a NIC: a guest that counts, 20 times a second
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
    gw: str | None = None   # the default gateway, for a guest on a NAT network
    mtu: int | None = None  # offered to the guest (VIRTIO_NET_F_MTU): a spanning network's


NIC_SYNTAX = "tap=NAME,mac=MAC[,ip=ADDR/PREFIX][,gw=GATEWAY][,mtu=BYTES]"
MTU_MIN, MTU_MAX = 68, 65535


def parse_nic(text: str) -> NicArg:
    fields = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
    unknown = set(fields) - {"tap", "mac", "ip", "gw", "mtu"}
    if unknown or "tap" not in fields or "mac" not in fields:
        raise argparse.ArgumentTypeError(f"--nic {text!r}: say {NIC_SYNTAX}")
    mtu = fields.get("mtu")
    if mtu is not None and not (mtu.isdigit() and MTU_MIN <= int(mtu) <= MTU_MAX):
        raise argparse.ArgumentTypeError(
            f"--nic {text!r}: mtu must be a number of bytes from {MTU_MIN} to {MTU_MAX}")
    return NicArg(fields["tap"], fields["mac"], fields.get("ip"), fields.get("gw"),
                  int(mtu) if mtu is not None else None)


def parse_disk(text: str) -> tuple[str, bool]:
    path, _, mode = text.partition(",")
    if mode not in ("", "ro", "rw"):
        raise argparse.ArgumentTypeError(f"--disk {text!r}: say PATH, PATH,ro or PATH,rw")
    return path, mode == "ro"


class Machine:
    """One boot of a PC: create, ``run`` (until the guest exits, resets or fails), close."""

    def __init__(self, memory: int, serial: Serial16550, nics: list[NicArg],
                 disk: tuple[str, bool] | None) -> None:
        if len(nics) > MAX_NICS:
            raise KvmError(f"{len(nics)} NICs: a VM has at most {MAX_NICS}")
        self.vm = Vm(memory)
        self.memory_size = memory
        self.mem = memoryview(self.vm.memory)
        self.serial = serial
        self.status = 0
        self.shutdown_requested = False  # read by the guest on SHUTDOWN_PORT
        self.idle = threading.Event()    # set to cut a wait on WAIT_PORT short
        self.nics = nics
        self.disk = disk
        self.serial_wired = False
        self.tap_fds: list[int] = []
        self.blk: VirtioBlk | None = None
        self.nic_threads: list[NetIoThread] = []
        self.threads: list[DeviceThread] = []      # every device's, the NICs' first
        self.transports: list[tuple[MmioTransport, int]] = []  # with their GSIs
        try:
            self.vm.create_irqchip_and_pit()
            serial.wire(lambda level: self.vm.set_irq_line(COM1_IRQ, level))
            self.serial_wired = True
            for index, nic in enumerate(nics):
                base, gsi = NIC_SLOTS[index].base, NIC_SLOTS[index].gsi
                self.tap_fds.append(open_tap(nic.tap))
                net = VirtioNet(self.tap_fds[-1], nic.mac, nic.mtu)
                transport = MmioTransport(net, self.mem, base, self._irq(gsi))
                notify = base + QUEUE_NOTIFY
                self.nic_threads.append(NetIoThread(net, transport,
                                                    self.vm.ioeventfd(notify, 4, RX),
                                                    self.vm.ioeventfd(notify, 4, TX)))
                self.transports.append((transport, gsi))
            self.threads.extend(self.nic_threads)
            if disk is not None:
                self.blk = VirtioBlk(*disk)
                transport = MmioTransport(self.blk, self.mem, DISK_SLOT.base,
                                          self._irq(DISK_SLOT.gsi))
                kick = self.vm.ioeventfd(DISK_SLOT.base + QUEUE_NOTIFY, 4, 0)
                self.threads.append(DeviceThread("virtio-blk-io", transport, {kick: 0}))
                self.transports.append((transport, DISK_SLOT.gsi))
        except BaseException:
            self.close()
            raise

    def _irq(self, gsi: int) -> Callable[[], None]:
        fd = self.vm.irqfd(gsi)
        return lambda: os.eventfd_write(fd, 1)

    def virtio_devices(self) -> list[tuple[int, int]]:
        """(register base, GSI) of each virtio-mmio transport."""
        return [(t.base, gsi) for t, gsi in self.transports]

    def virtio_cmdline(self) -> str:
        """How a microVM kernel (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES) learns of virtio-mmio
        devices: ``virtio_mmio.device=SIZE@BASE:IRQ``.  Stock kernels read the DSDT."""
        return " ".join(f"virtio_mmio.device=4K@{base:#x}:{gsi}"
                        for base, gsi in self.virtio_devices())

    def wake(self) -> None:
        """End a vCPU's wait on WAIT_PORT now (it is being stopped or paused)."""
        self.idle.set()
        for thread in self.nic_threads:
            thread.rx_delivered.set()

    def device_status(self) -> list[dict[str, object]]:
        """Each virtio device's state and per-queue counters, for the control socket."""
        devices: list[dict[str, object]] = []
        for nic, thread in zip(self.nics, self.nic_threads, strict=True):
            stats = dict(thread.net.stats)
            devices.append({
                "kind": "virtio-net", "base": f"{thread.transport.base:#x}", "tap": nic.tap,
                "mac": nic.mac, "state": _transport_state(thread.transport),
                "queues": [{"queue": name, "frames": stats[f"{name}_frames"],
                            "bytes": stats[f"{name}_bytes"], "drops": stats[f"{name}_drops"]}
                           for name in ("rx", "tx")]})
        if self.blk is not None and self.disk is not None:
            transport = self.threads[-1].transport
            devices.append({"kind": "virtio-blk", "base": f"{transport.base:#x}",
                            "path": self.disk[0], "readonly": self.disk[1],
                            "state": _transport_state(transport),
                            "queues": [{"queue": "requests", **self.blk.stats}]})
        return devices

    def on_io(self, io: IoExit) -> bytes | None:
        if io.port == EXIT_PORT and io.out:
            self.status = io.data[0]
            return b"stop"
        if io.port == acpi.SLEEP_CONTROL_PORT and io.out:
            if acpi.sleep_value(io.data[0]) == acpi.S5_SLEEP_TYPE:  # soft off: power down
                self.status = 0
                return b"stop"
            return None
        if io.port == I8042_COMMAND:
            if io.out and io.data[0] == I8042_RESET:
                self.status = REBOOT
                return b"stop"
            return b"\0"  # status: both buffers empty
        if io.port == WAIT_PORT and self.nic_threads:  # the tiny guest drives its first NIC
            first = self.nic_threads[0]
            first.rx_delivered.wait(WAIT_TIMEOUT)  # paravirtual idle: until a frame
            first.rx_delivered.clear()
            return None
        if io.port == WAIT_PORT:
            self.idle.wait(IDLE_TIMEOUT)
            self.idle.clear()
            return None
        if io.port == SHUTDOWN_PORT and not io.out:
            return b"\1" if self.shutdown_requested else b"\0"
        if self.serial.owns(io.port):
            if io.out:
                self.serial.write(io.port, io.data[0])
                return None
            return bytes([self.serial.read(io.port)])
        return None  # no device: writes vanish, reads see all ones, as on a bus

    def on_mmio(self, address: int, length: int, data: bytes | None) -> bytes:
        owner = next((t for t, _gsi in self.transports if t.owns(address)), None)
        if owner is None:
            return b"\xff" * length
        if data is None:
            return owner.read(address, length)
        owner.write(address, data)
        return b""

    def run(self, vcpu: Vcpu) -> int:
        """Run this boot under a supervisor of its own (no sockets) until it ends; its
        status (used by tests that set a machine up themselves)."""
        return trio.run(Supervisor("test").run_one, Boot(self, [vcpu]))

    def close(self) -> None:
        if self.serial_wired:  # the console outlives this boot; the VM's irqchip does not
            self.serial.wire(None)
        for thread in self.threads:
            thread.stop()
        self.threads.clear()
        self.vm.close()
        if self.blk is not None:
            self.blk.close()
        for fd in self.tap_fds:
            os.close(fd)


def prepare_tiny_guest(memory: int, cmdline: str, serial: Serial16550, nics: list[NicArg],
                       disk: tuple[str, bool] | None = None) -> Boot:
    """Set up a boot of the tiny guest (it drives the first NIC); its status is what it
    writes to the exit port (or REBOOT)."""
    image = build_tiny_guest().read_bytes()
    if nics and nics[0].ip:
        cmdline = f"{cmdline} ip={nics[0].ip}".strip()
    if nics and nics[0].gw:
        cmdline = f"{cmdline} gw={nics[0].gw}"
    machine = Machine(memory, serial, nics, disk)
    try:
        mem = machine.mem
        layout.write_user_mode_tables(mem, memory)
        layout.write_boot_info(mem, cmdline)
        layout.load_image(mem, image, memory)
        vcpu, = machine.vm.create_vcpus(1)
        vcpu.enter_long_mode_user(layout.IMAGE_ADDR, layout.STACK_TOP)
        return Boot(machine, [vcpu])
    except BaseException:
        machine.close()
        raise


def prepare_linux(memory: int, kernel_path: Path, cmdline: str, serial: Serial16550,
                  vcpus: int = 1, initrd_path: Path | None = None,
                  nics: list[NicArg] | None = None,
                  disk: tuple[str, bool] | None = None) -> Boot:
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
    machine = Machine(memory, serial, nics or [], disk)
    try:
        mem = machine.mem
        cmdline = f"{cmdline} {machine.virtio_cmdline()}".strip()
        gdt_limit = linux.write_entry_tables(mem, memory)
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
        tables = acpi.acpi_tables(vcpus, machine.virtio_devices())
        mem[acpi.RSDP_ADDR:acpi.RSDP_ADDR + len(tables)] = tables
        every = machine.vm.create_vcpus(vcpus)  # the APs wait in KVM for INIT/SIPI
        every[0].enter_long_mode_kernel(kernel.entry, gdt_limit, linux.ZERO_PAGE)
        return Boot(machine, every)
    except BaseException:
        machine.close()
        raise


def report_cpuid_delivery(name: str) -> None:
    """Say in the log, once, when a guest here will not see its vCPU's own CPUID (AMD hosts
    under PVM: guest user mode sees the host's).  Each vCPU still gets its own table: the
    guest kernel reads it."""
    try:
        warning = cpuid_probe.probe().warning()
    except (KvmError, OSError) as err:
        detail = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        warning = f"cannot tell how CPUID reaches a guest on this host: {detail}"
    if warning is not None:
        print(f"vnet-vm {name}: warning: {warning}", file=sys.stderr, flush=True)


class Console:
    """Where the guest's serial output goes: the log file, the console socket's clients (the
    hub, served in the supervisor's nursery) and, with --echo, stdout."""

    def __init__(self, log: Path | None, with_socket: bool, echo: bool) -> None:
        self.log = open(log, "ab") if log else None  # noqa: SIM115 - closed in close()
        self.echo = echo
        self.serial = Serial16550(self.write)
        self.hub = ConsoleHub(self.serial) if with_socket else None

    def write(self, data: bytes) -> None:
        if self.log:
            self.log.write(data)
            self.log.flush()
        if self.hub:
            self.hub.write(data)
        if self.echo:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()

    def close(self) -> None:
        if self.log:
            self.log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vnet-vm", description="run one guest on /dev/kvm",
                                     epilog="exit status: " + "; ".join(
                                         f"{int(s)} {s.name.lower().replace('_', ' ')}"
                                         for s in ExitStatus)
                                     + "; other values below 64: the guest's own status")
    parser.add_argument("--name", default="vm")
    parser.add_argument("--memory", type=parse_size, default=64 << 20)
    parser.add_argument("--vcpus", type=int, default=1,
                        help="vCPUs (Linux guests: announced in the ACPI MADT; the tiny guest "
                        "uses one)")
    parser.add_argument("--kernel", default="builtin:tiny",
                        help="builtin:tiny, or a Linux bzImage or vmlinux")
    parser.add_argument("--cmdline", default="")
    parser.add_argument("--initrd", type=Path, help="an initramfs for a Linux kernel")
    parser.add_argument("--nic", type=parse_nic, action="append", default=[],
                        help=f"{NIC_SYNTAX}; repeat it for more NICs (at most {MAX_NICS})")
    parser.add_argument("--disk", type=parse_disk,
                        help=f"PATH[,ro]: a raw image as virtio-blk at {DISK_SLOT.base:#x}")
    parser.add_argument("--console-log", type=Path)
    parser.add_argument("--console-socket", type=Path,
                        help="a Unix socket for `vnet console`: live output, typed input")
    parser.add_argument("--control-socket", type=Path,
                        help="a Unix socket (JSON lines) for status, pause, resume, shutdown "
                        "(vnet/kvm/control.py)")
    parser.add_argument("--echo", action="store_true", help="copy the console to stdout")
    parser.add_argument("--on-reboot", choices=["exit", "restart"], default="restart",
                        help="when the guest resets itself (i8042): boot it again, or exit 0")
    args = parser.parse_args(argv)
    # SIGTERM before the supervisor runs: a clean exit; then the supervisor handles it.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    console = None
    try:
        console = Console(args.console_log, args.console_socket is not None, args.echo)
        report_cpuid_delivery(args.name)
        serial = console.serial
        prepare: Callable[[], Boot]
        if args.kernel != "builtin:tiny":
            def prepare() -> Boot:
                return prepare_linux(args.memory, Path(args.kernel), args.cmdline, serial,
                                     args.vcpus, args.initrd, args.nic, args.disk)
        else:
            def prepare() -> Boot:
                return prepare_tiny_guest(args.memory, args.cmdline, serial, args.nic,
                                          args.disk)
        supervisor = Supervisor(args.name, console.hub, args.console_socket,
                                args.control_socket)
        return trio.run(supervisor.run, prepare, args.on_reboot)
    except (KvmError, VnetError, ValueError, OSError) as err:
        print(f"vnet-vm {args.name}: {err}", file=sys.stderr)
        return ExitStatus.SETUP_FAILED
    except BaseExceptionGroup as group:  # a bug in the supervisor itself
        traceback.print_exception(group)
        print(f"vnet-vm {args.name}: internal error in the runner's supervisor",
              file=sys.stderr)
        return ExitStatus.SUPERVISOR_FAILED
    finally:
        if console is not None:
            console.close()


def _transport_state(transport: MmioTransport) -> str:
    if transport.failure is not None:
        return f"failed: {transport.failure}"
    return "driver-ok" if transport.driver_ok else "not set up by the guest"


if __name__ == "__main__":
    sys.exit(main())
