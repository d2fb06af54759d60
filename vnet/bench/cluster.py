"""Several hosts and a broker on one machine: what the multi-host benchmark and the demo run.

::

    [broker: mosquitto, ul0 10.90.255.254] --+
    [h1: vnetd --host h1, ul0 10.90.0.1]   --+-- br0 [underlay] (a Linux bridge)
    [h2: vnetd --host h2, ul0 10.90.0.2]   --+
    ...

Every piece is the test library's (``vnet.testing``): the broker is ``Broker`` (Debian's
mosquitto with vnet's ACL, every host an operator), each host is a ``TestHost`` (a namespace
and a vnetd started with ``--netns`` and a daemon config file naming its host and the
broker); this module only adds the underlay that joins them, and one place that removes all
of it (``Cluster.close``, also after a failure or a signal).  Nothing touches the root
namespace's network.

``python -m vnet.bench.cluster --hosts 3 --prefix vnet-demo --env FILE`` builds one, writes
the names of its parts as shell variables to FILE, and keeps it until SIGTERM or SIGINT
(what ``.ci/demo`` uses).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from vnet.errors import VnetError
from vnet.host import netns
from vnet.testing import TestHost
from vnet.testing.broker import Broker
from vnet.testing.underlay import attach, daemon_config, make_underlay
from vnet.testing.wait import wait_until

UNDERLAY_PREFIX = "10.90"          # hosts 10.90.X.Y/16; the broker at 10.90.255.254
BROKER_ADDRESS = "10.90.255.254"
BROKER_PORT = 1883
MAX_HOSTS = 250 * 250
START_WORKERS = 4                  # vnetds started at once (2 cores: more only queue up)
ONLINE_TIMEOUT = 120.0             # s for every vnetd to see every other online


class ClusterError(VnetError):
    """The cluster could not be built (a step failed, a namespace name is taken)."""


def host_name(index: int) -> str:
    """Host 1 is ``h1``: the name in topologies, in the broker's users and ACL."""
    return f"h{index}"


def host_address(index: int) -> str:
    """Host ``index``'s underlay address (1-based): 10.90.0.1, ..., 10.90.0.250, 10.90.1.1."""
    if not 1 <= index <= MAX_HOSTS:
        raise ValueError(f"host index must be 1..{MAX_HOSTS}")
    high, low = divmod(index - 1, 250)
    return f"{UNDERLAY_PREFIX}.{high}.{low + 1}"


def broker_url() -> str:
    return f"mqtt://{BROKER_ADDRESS}:{BROKER_PORT}"


def hosts_block(count: int) -> str:
    """The ``hosts:`` and ``bus:`` lines of a topology for the cluster's hosts (pure)."""
    lines = ["hosts:"]
    lines += [f"  {host_name(i)}: {{address: {host_address(i)}}}" for i in range(1, count + 1)]
    lines += [f'bus: {{broker: "{broker_url()}"}}']
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Host:
    """One host of the cluster: its name in topologies and its vnetd."""

    name: str
    address: str
    daemon: TestHost


class Cluster:
    """A broker, an underlay and ``count`` hosts with a vnetd each (see module docstring)."""

    def __init__(self, count: int, prefix: str, *, log_level: str = "INFO",
                 extra_users: Mapping[str, str] | None = None,
                 log: Callable[[str], None] = lambda _: None) -> None:
        """``extra_users``: more broker users (name -> password), not operators: clients
        that play hosts without a vnetd (the benchmark's MAC source)."""
        if not 1 <= count <= MAX_HOSTS:
            raise ClusterError(f"--hosts must be 1..{MAX_HOSTS}")
        self.count, self.prefix, self.log_level, self.log = count, prefix, log_level, log
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
        self.underlay = f"{prefix}-ul"
        self.passwords = {host_name(i): f"pw-{host_name(i)}" for i in range(1, count + 1)}
        self.extra_users = dict(extra_users or {})
        self.broker: Broker | None = None
        self.hosts: list[Host] = []
        self._lock = threading.Lock()
        self._made_underlay = False

    # -- building -------------------------------------------------------------------------

    def build(self) -> Cluster:
        """Broker, underlay, hosts; returns once every vnetd sees every host online."""
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        for name in [self.underlay, *(f"{self.prefix}-{h}" for h in self.passwords)]:
            if netns.exists(name):
                raise ClusterError(f"network namespace {name} exists already; remove it with "
                                   f"'ip netns del {name}' if an earlier run left it")
        self._made_underlay = True
        make_underlay(self.underlay)
        self.broker = Broker({**self.passwords, **self.extra_users},
                             operators=list(self.passwords), listen=None, port=BROKER_PORT)
        attach(self.underlay, self.broker.netns, "bk", f"{BROKER_ADDRESS}/16")
        self.log(f"broker: mosquitto in {self.broker.netns} at {broker_url()}")
        with concurrent.futures.ThreadPoolExecutor(START_WORKERS) as pool:
            for host in pool.map(self._start_host, range(1, self.count + 1)):
                self.log(f"{host.name}: vnetd in {host.daemon.name}, underlay {host.address}")
        self.hosts.sort(key=lambda h: int(h.name[1:]))
        for host in self.hosts:
            wait_until(functools.partial(self.sees_all_online, host), ONLINE_TIMEOUT,
                       message=f"{host.name}'s vnetd to see all {self.count} hosts online")

    def _start_host(self, index: int) -> Host:
        name = host_name(index)
        password = self.workdir / f"{name}.password"
        password.write_text(self.passwords[name] + "\n")
        password.chmod(0o600)
        daemon = TestHost(name=f"{self.prefix}-{name}",
                          config=daemon_config(name, broker_url(), password),
                          vnetd_args=["--log-level", self.log_level])
        host = Host(name, host_address(index), daemon)
        with self._lock:
            self.hosts.append(host)
        attach(self.underlay, daemon.name, f"u{index}", f"{host.address}/16")
        return host

    # -- looking at it ----------------------------------------------------------------------

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def bus_status(self, host: Host) -> dict[str, Any]:
        status: dict[str, Any] = host.daemon.call("status")["bus"]
        return status

    def sees_all_online(self, host: Host) -> bool:
        peers = self.bus_status(host)["hosts"]
        return len(peers) == self.count and all(p["state"] == "online" for p in peers)

    def generations(self, host: Host, lab: str) -> dict[str, int | None]:
        """Host -> the generation of ``lab`` it realised, as ``host`` sees the bus."""
        return {p["host"]: (p["labs"].get(lab) or {}).get("generation")
                for p in self.bus_status(host)["hosts"]}

    def env(self) -> str:
        """The cluster's parts as shell variable assignments (for .ci/demo)."""
        assert self.broker is not None
        lines = [f"BROKER_NETNS={self.broker.netns}", f"UNDERLAY_NETNS={self.underlay}",
                 f"CONFIG_DIR={self.workdir}",
                 f"HOSTS='{' '.join(h.name for h in self.hosts)}'"]
        for host in self.hosts:
            key = host.name.upper()
            lines += [f"{key}_NETNS={host.daemon.name}", f"{key}_SOCKET={host.daemon.socket}",
                      f"{key}_STATE={host.daemon.state_dir}",
                      f"{key}_CONFIG={host.daemon.workdir / 'vnetd.yaml'}"]
        return "\n".join(lines) + "\n"

    # -- removing it ------------------------------------------------------------------------

    def close(self, labs: Sequence[str] = ()) -> None:
        """Take ``labs`` down, stop every vnetd (each takes its labs down first, then removes
        any node namespace with its prefix that a failed take-down left), the broker, the
        underlay."""
        hosts, self.hosts = self.hosts, []
        for lab in labs if hosts else ():    # once, through the bus, on every host
            try:
                hosts[0].daemon.call("down", lab=lab)
            except (VnetError, OSError) as err:
                self.log(f"vnet down --lab {lab}: {err}")
        with concurrent.futures.ThreadPoolExecutor(START_WORKERS) as pool:
            for outcome in pool.map(_close_host, hosts):
                if outcome:
                    self.log(outcome)
        if self.broker is not None:
            self.broker.close()
            self.broker = None
        if self._made_underlay:
            netns.remove(self.underlay)
            self._made_underlay = False
        subprocess.run(["rm", "-rf", str(self.workdir)], check=False)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_host(host: Host) -> str | None:
    try:
        host.daemon.close()
    except Exception as err:     # the others must still be closed
        return f"{host.name}: closing failed: {err}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vnet.bench.cluster",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--prefix", default="vnet-cluster", help="namespace name prefix")
    parser.add_argument("--env", type=Path, required=True,
                        help="write the parts' names here as shell variables once built")
    parser.add_argument("--lab", action="append", default=[],
                        help="a lab whose leftover node namespaces to remove at the end")
    args = parser.parse_args(argv)
    stop = threading.Event()

    def stopping(_signum: int, _frame: FrameType | None) -> None:
        stop.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    cluster = Cluster(args.hosts, args.prefix, log=lambda m: print(m, file=sys.stderr,
                                                                    flush=True))
    try:
        cluster.build()
        args.env.write_text(cluster.env())
        while not stop.wait(3600):
            pass
    except KeyboardInterrupt:
        pass
    except (VnetError, AssertionError, OSError, RuntimeError) as err:
        print(f"cluster: {err}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)    # the clean-up runs to its end
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with contextlib.suppress(Exception):
            cluster.close(args.lab)
    return 0


if __name__ == "__main__":
    sys.exit(main())
