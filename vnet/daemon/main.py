"""Entry point of vnetd, the per-host daemon (a systemd service, or started by ``vnet up``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vnet.daemon.config import (
    DEFAULT_CONFIG_FILE,
    LOG_LEVELS,
    ConfigError,
    DaemonConfig,
    check_host_flag,
    datapath_environment,
    load_config,
    with_flags,
)
from vnet.daemon.defaults import DEFAULT_SOCKET, DEFAULT_STATE_DIR
from vnet.daemon.readiness import ServiceLink, ServiceStatus, counts
from vnet.daemon.reload import apply_live, refusal, reload_plan
from vnet.daemon.sdnotify import Notifier, reloading_message
from vnet.daemon.service import Vnetd
from vnet.datapath import protocol
from vnet.errors import HostError, VnetError, describe_os_error
from vnet.host import netns

__all__ = ["DEFAULT_SOCKET", "DEFAULT_STATE_DIR", "main"]  # the CLI takes its defaults here

log = logging.getLogger("vnet.daemon.main")

BAD_CONFIG = 2  # exit status for a config that does not check (systemd: no restart on it)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Flags left out are None, so that the config file's values (or its defaults) hold."""
    parser = argparse.ArgumentParser(
        prog="vnetd", description="vnet's per-host daemon",
        epilog="A flag wins over the environment, which wins over the config file, which wins "
        "over the defaults.")
    parser.add_argument("--config", metavar="FILE",
                        help=f"the config file (default {DEFAULT_CONFIG_FILE}, if it exists)")
    parser.add_argument("--check-config", action="store_true",
                        help="check the config file, print ok or its problems, and exit")
    parser.add_argument("--socket", help=f"API socket (default {DEFAULT_SOCKET})")
    parser.add_argument("--state-dir",
                        help=f"where lab records and logs live (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--netns", help="run inside this network namespace (a test 'host')")
    parser.add_argument("--host", metavar="NAME",
                        help="this host's name under a multi-host topology's hosts: (default: "
                        "the config file's host:, or the machine's short host name)")
    parser.add_argument("--exit-when-idle", action="store_true",
                        help="exit once the last lab is down (set when `vnet up` starts vnetd)")
    parser.add_argument("--datapath-python", metavar="INTERPRETER",
                        help="run the datapath under this Python, e.g. pypy3 (about 1.7x the "
                        "small-frame rate; default: $VNET_DATAPATH_PYTHON, the config file's "
                        "datapath.python, or vnetd's own)")
    parser.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS,
                        help="default: the config file's log_level, or info")
    parser.add_argument("--stop-all", action="store_true", default=None,
                        help="stopping vnetd (SIGTERM) stops the datapath and the VM runners "
                        "too (default: the config file's stop_all, or no: they keep running "
                        "and the next vnetd adopts them)")
    return parser.parse_args(argv)


def configure(args: argparse.Namespace) -> DaemonConfig:
    """The config file (``--config``, or the default one if it exists) under the flags."""
    if args.host is not None:  # it stands in for the machine's name, which may not be valid
        check_host_flag(args.host)
    config = load_config(args.config, hostname=args.host)
    return with_flags(config, socket=args.socket, state_dir=args.state_dir, netns=args.netns,
                      log_level=args.log_level, host=args.host, stop_all=args.stop_all,
                      datapath_python=(args.datapath_python
                                       or os.environ.get("VNET_DATAPATH_PYTHON")))


def datapath_python(choice: str | None) -> str:
    if not choice:
        return sys.executable
    found = shutil.which(choice)
    if found is None:
        raise VnetError(f"--datapath-python {choice}: no such interpreter; install it (apt-get "
                        "install pypy3) or leave the option out to use vnetd's own Python")
    return found


# Test-only hook (see tests/integration/test_service_notify.py): with this variable naming a
# file, SIGUSR2 blocks vnetd's event loop for as long as that file exists, after saying
# STATUS=wedged.  It stands for a wedged loop (a blocking call, a deadlock), which must stop
# the watchdog pings.  Without the variable SIGUSR2 keeps its default action.
WEDGE_FILE_VARIABLE = "VNETD_TEST_WEDGE_FILE"


def observe(daemon: Vnetd) -> ServiceStatus:
    """The status line's counts: records on disk, the bus client's connection."""
    return counts((record.ready() for record in daemon.store.load_all()), bus_connected(daemon))


def bus_connected(daemon: Vnetd) -> bool | None:
    bus = daemon.bus
    return None if bus is None else bus.bus is not None and bus.bus.connected


@dataclass
class Running:
    """What a reload needs: the flags (they still win), the config in effect, and the link."""

    args: argparse.Namespace
    config: DaemonConfig
    link: ServiceLink
    notifier: Notifier
    lock: asyncio.Lock
    daemon: Vnetd


async def reload(running: Running) -> None:
    """SIGHUP: read the config file again; apply what can change live, report the rest, keep
    everything on a bad file.  RELOADING=1 ... READY=1 around it, for systemd."""
    async with running.lock:
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        running.notifier.send(reloading_message(monotonic_usec))
        try:
            reread = await asyncio.to_thread(configure, running.args)
        except ConfigError as err:
            log.error("reload refused: the config file has problems; the running configuration "
                      "stays:\n%s", err)
            running.link.set_note(refusal(err.problems))
        except Exception:  # a bug: the running state stays, and vnetd with it
            log.exception("reload failed; the running configuration stays")
            running.link.set_note("reload failed: internal error (see the log)")
        else:
            plan = reload_plan(running.config, reread)
            running.config = apply_live(running.config, reread)
            set_log_level(running.config.log_level)
            running.daemon.api.set_access(running.config.access)
            for change in plan.needs_restart:
                log.warning("reload: %s waits for a restart (systemctl restart vnetd); the "
                            "running value stays", change)
            log.info("%s", plan.summary())
            running.link.set_note(plan.summary() if plan.needs_restart else None)
        finally:
            running.notifier.send("READY=1")


def configure_logging(level: str) -> None:
    """vnetd's log on stderr (the journal adds time and unit).  pyroute2's DEBUG is every
    netlink message, and each IPRoute opens an event loop that asyncio announces at DEBUG:
    neither says anything about vnet, so neither is logged."""
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s vnetd %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    logging.getLogger("asyncio").addFilter(not_a_selector_notice)


def not_a_selector_notice(record: logging.LogRecord) -> bool:
    """False for asyncio's "Using selector: ..." (a new event loop), True for the rest."""
    return not record.getMessage().startswith("Using selector")


def set_log_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())


def wedge(notifier: Notifier, file: Path) -> None:
    """The test hook: block the loop (on purpose: time.sleep) while ``file`` exists."""
    notifier.send("STATUS=wedged (test hook)")
    while file.exists():
        time.sleep(0.01)


async def serve(args: argparse.Namespace, config: DaemonConfig) -> None:
    notifier, watchdog_period = Notifier.from_environment()
    daemon = Vnetd(config.socket, config.state_dir, args.exit_when_idle,
                   datapath_python(config.datapath.python), host=config.host, bus=config.bus,
                   access=config.access, config_file=config.source, stop_all=config.stop_all,
                   netns_prefix=config.netns_prefix, metrics_config=config.metrics)
    link = ServiceLink(notifier, watchdog_period, lambda: observe(daemon))
    link.start()
    running = Running(args, config, link, notifier, asyncio.Lock(), daemon)
    loop = asyncio.get_running_loop()

    def on_stop(_signum: int, _frame: object) -> None:
        # Not loop.add_signal_handler: that routes signals through a wake-up socket which
        # forked children (pyroute2 helpers, for one) share, so a signal sent to such a child
        # would stop vnetd.  A plain handler runs only in the process that got the signal.
        def stop() -> None:
            notifier.send("STOPPING=1")
            keep(asyncio.ensure_future(daemon.stop()))
        loop.call_soon_threadsafe(stop)

    def on_reload(_signum: int, _frame: object) -> None:
        loop.call_soon_threadsafe(lambda: keep(asyncio.ensure_future(reload(running))))

    tasks: set[asyncio.Future[None]] = set()

    def keep(task: asyncio.Future[None]) -> None:
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    signal.signal(signal.SIGHUP, on_reload)   # before start: its default would end vnetd
    try:
        await daemon.start()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, on_stop)
        wedge_file = os.environ.get(WEDGE_FILE_VARIABLE)
        if wedge_file:
            signal.signal(signal.SIGUSR2, lambda _s, _f: loop.call_soon_threadsafe(
                wedge, notifier, Path(wedge_file)))
        await link.ready(lambda: daemon.datapath.call(protocol.Ping()),
                         lambda: bus_connected(daemon))
        await daemon.stopped.wait()
        notifier.send("STOPPING=1")
    finally:
        await link.stop()


def check_mounts_reach_machine(netns_option: str | None) -> None:
    """Refuse to run where the namespaces vnetd creates would be invisible to everyone else.

    Under ``ip netns exec HOST vnetd`` (or ``unshare -m``, or a service with a private mount
    namespace) the bind mounts under /run/netns stay in vnetd's own mount namespace: ``vnet
    exec`` and every other tool would find empty files there.  Doing those mounts in PID 1's
    mount namespace instead would depend on how each mount propagates, so vnetd refuses and
    says how to start it: ``--netns`` moves only its network namespace."""
    if not netns.namespace_mounts_private():
        return
    host = netns.current_name() if netns_option is None else netns_option
    shown = host or "HOST"
    raise HostError(
        "this vnetd runs in a mount namespace of its own (as 'ip netns exec', 'unshare -m' "
        "or a sandboxed service give it), so the node namespaces it would create under "
        f"{netns.NETNS_RUN_DIR} would be invisible to 'vnet exec' and the rest of the machine. "
        f"Start it in the machine's mount namespace and name the host namespace with --netns: "
        f"'vnetd --netns {shown} ...' instead of 'ip netns exec {shown} vnetd ...'")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = configure(args)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return BAD_CONFIG
    if args.check_config:
        print("ok" if config.source else f"ok (no {DEFAULT_CONFIG_FILE}: the defaults hold)")
        return 0
    for name, value in datapath_environment(config).items():
        os.environ.setdefault(name, value)  # the datapath reads them; a set variable wins
    configure_logging(config.log_level)
    try:
        check_mounts_reach_machine(config.netns)
        if config.netns:
            netns.enter_for_good(config.netns)  # before any thread exists, so all inherit it
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        asyncio.run(serve(args, config))
    except VnetError as err:
        print(f"vnetd: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # one no check foresaw (a socket in use, ...): no errno text
        logging.debug("vnetd stopped on an OSError", exc_info=True)
        print(f"vnetd: {describe_os_error(err)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
