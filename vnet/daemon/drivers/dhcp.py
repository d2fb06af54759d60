"""DHCP servers: one dnsmasq per NAT network with ``dhcp:``, on the gateway's interface.
Its files are ``STATE_DIR/dhcp-LAB-NETWORK.pid`` and ``.leases``; a pid is taken for ours
only if that process was started with our pid file."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from vnet.daemon.drivers.base import BlockingDriver
from vnet.daemon.resources import DhcpResource
from vnet.errors import HostError

STOP_POLLS, STOP_POLL = 100, 0.02  # how long a stopping dnsmasq is waited for: 2 s


class DhcpDriver(BlockingDriver[DhcpResource]):
    kind = DhcpResource.kind

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def base(self, dhcp: DhcpResource) -> Path:
        return self.state_dir / f"dhcp-{dhcp.lab}-{dhcp.network}"

    def pid_file(self, dhcp: DhcpResource) -> Path:
        return Path(f"{self.base(dhcp)}.pid")

    def create_blocking(self, dhcp: DhcpResource) -> None:
        base = self.base(dhcp)
        subnet = ipaddress.ip_network(dhcp.subnet)
        command = [
            "dnsmasq", "--conf-file=/dev/null", "--bind-interfaces",
            f"--interface={dhcp.interface}", "--except-interface=lo",
            f"--listen-address={dhcp.gateway}",
            f"--pid-file={self.pid_file(dhcp)}", f"--dhcp-leasefile={base}.leases",
            f"--dhcp-range={dhcp.range_start},{dhcp.range_end},{subnet.netmask},infinite",
            f"--dhcp-option=option:router,{dhcp.gateway}", "--dhcp-authoritative",
            f"--domain={dhcp.lab}.vnet", f"--local=/{dhcp.lab}.vnet/", "--no-hosts",
            "--user=root", "--group=root"]
        command += [f"--dhcp-host={mac},{ip},{name}" for mac, ip, name in dhcp.hosts]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True)
        except FileNotFoundError:
            raise HostError("dnsmasq is not installed: install the dnsmasq-base package"
                            ) from None
        except subprocess.CalledProcessError as err:
            raise HostError(f"dnsmasq did not start for network {dhcp.network}: "
                            f"{err.stderr.strip()}") from None

    def delete_blocking(self, dhcp: DhcpResource) -> None:
        pid = self.our_pid(dhcp)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            for _ in range(STOP_POLLS):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(STOP_POLL)
        base = self.base(dhcp)
        for suffix in (".pid", ".leases"):
            Path(f"{base}{suffix}").unlink(missing_ok=True)

    def exists_blocking(self, dhcp: DhcpResource) -> bool:
        return self.our_pid(dhcp) is not None

    def our_pid(self, dhcp: DhcpResource) -> int | None:
        """The pid of this network's dnsmasq, if it runs (and is ours)."""
        try:
            pid = int(self.pid_file(dhcp).read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ValueError):
            return None
        return pid if f"--pid-file={self.pid_file(dhcp)}".encode() in cmdline else None

    def describe(self, dhcp: DhcpResource) -> dict[str, Any]:
        return {"network": dhcp.network, "interface": dhcp.interface,
                "range": [dhcp.range_start, dhcp.range_end], "pid_file": str(self.pid_file(dhcp))}
