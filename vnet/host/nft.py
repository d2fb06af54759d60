"""nftables from vnetd: one ``nft -f`` transaction per change, and the port tables.

A table vnet owns is always replaced or removed whole, in one transaction that first makes
sure it exists (``add table`` is a no-op for an existing one) and then deletes it, so the
same script works whether the table was there or not.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from vnet.errors import HostError


def nft(script: str) -> None:
    """Run ``script`` as one ``nft -f`` transaction (all or nothing).  Scripts that threads
    give at the same moment (a lab's nodes made side by side) share one ``nft`` run."""
    _commits.submit(script)


def _run_nft(script: str) -> None:
    try:
        subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True,
                       capture_output=True)
    except FileNotFoundError:
        raise HostError("nft is not installed: install the nftables package") from None
    except subprocess.CalledProcessError as err:
        raise HostError(f"nft refused the lab's rules: {err.stderr.strip()}") from None


@dataclass
class _Job:
    script: str
    done: bool = False
    error: HostError | None = None


class GroupCommit:
    """Group commit, as databases do it with their log: a caller that finds ``run`` idle
    runs its script at once; scripts given while it runs wait and then go together, in the
    order given, as one transaction.  Nothing waits for company: a lone script runs as soon
    as it comes.  If a batch is refused, each of its scripts is run on its own, so every
    caller gets its own script's answer (and only a bad script fails)."""

    def __init__(self, run: Callable[[str], None]) -> None:
        self.run = run
        self.queue: list[_Job] = []
        self.running = False
        self.changed = threading.Condition()

    def submit(self, script: str) -> None:
        job = _Job(script)
        with self.changed:
            self.queue.append(job)
            while self.running and not job.done:
                self.changed.wait()
            if not job.done:
                self.running = True
                batch, self.queue = self.queue, []
        if not job.done:
            try:
                self._commit(batch)
            finally:
                with self.changed:
                    self.running = False
                    self.changed.notify_all()
        if job.error is not None:
            raise job.error

    def _commit(self, batch: list[_Job]) -> None:
        try:
            self.run("".join(job.script for job in batch))
        except HostError as err:
            if len(batch) == 1:
                batch[0].error = err
            else:
                for job in batch:
                    job.error = self._alone(job.script)
        except Exception as err:   # a bug: every caller hears of it, none hangs
            for job in batch:
                job.error = HostError(f"running nft failed: {err!r}")
        for job in batch:
            job.done = True

    def _alone(self, script: str) -> HostError | None:
        try:
            self.run(script)
        except HostError as err:
            return err
        return None


_commits = GroupCommit(_run_nft)


def no_table(family: str, table: str) -> str:
    """nft commands that leave no ``table`` of ``family``, whether there was one or not."""
    return f"add table {family} {table}\ndelete table {family} {table}\n"


def table_exists(family: str, table: str) -> bool:
    try:
        return subprocess.run(["nft", "list", "table", family, table], capture_output=True,
                              check=False).returncode == 0
    except FileNotFoundError:
        return False


def port_table(ifname: str) -> str:
    return f"vnet-port-{ifname}"


def port_tables_script(ifnames: Iterable[str]) -> str:
    """The nft commands that (re)make the port table of each of ``ifnames``; pure."""
    return "".join(no_table("netdev", port_table(ifname))
                   + f"table netdev {port_table(ifname)} {{\n  chain ingress {{\n"
                   f'    type filter hook ingress device "{ifname}" priority -500; '
                   "policy drop;\n  }\n}\n" for ifname in ifnames)


def keep_host_stack_off(ifname: str) -> None:
    """A switch port's frames are the datapath's alone.  An nftables ingress hook on the port
    drops every frame after AF_PACKET has seen it and before ARP or IP do, as a bridge port
    keeps frames from its own stack.  Without it the host answered a node's ARP for the
    gateway's address with the port's MAC, and routed frames sent to that MAC past the
    switch, its VLANs and the NAT rules."""
    nft(port_tables_script([ifname]))


def keep_host_stacks_off(groups: Sequence[Sequence[str]]) -> list[HostError | None]:
    """``keep_host_stack_off`` for every port of every group (a wave's nodes, each with its
    NICs) in ONE transaction: each commit waits for an RCU grace period, so a wave pays one
    instead of one per node.  If nft refuses it, each group is tried alone, so only a bad
    group fails; returns each group's error (None: its tables are in place)."""
    if not groups:
        return []
    try:
        nft(port_tables_script(ifname for group in groups for ifname in group))
    except HostError as err:
        if len(groups) == 1:
            return [err]
        return [_tried(port_tables_script(group)) for group in groups]
    return [None] * len(groups)


def _tried(script: str) -> HostError | None:
    try:
        nft(script)
    except HostError as err:
        return err
    return None


def forget_port_table(ifname: str) -> None:
    nft(no_table("netdev", port_table(ifname)))
