"""VM nodes: one persistent TAP per NIC (named, marked and closed to the host's stack as a
namespace node's host ends are), and a runner process that the ``VmSupervisor`` keeps."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from vnet.daemon.drivers.base import BlockingDriver
from vnet.daemon.drivers.port_ends import open_port_ends
from vnet.daemon.resources import VmNodeResource
from vnet.daemon.vms import VmSupervisor
from vnet.host import links, nft, tap


class VmNodeDriver(BlockingDriver[VmNodeResource]):
    """Created: its TAPs, then its runner started.  Deleted: the runner stopped, then the
    TAPs.  The blocking steps are the TAPs'; the runner is the supervisor's.  A wave is
    made in two stages (``reconciler.Staged``), as namespace nodes are: each VM's TAPs,
    down; then, for the whole wave, their port tables in ONE nft transaction and the TAPs
    up, and only then the runners of those whose TAPs are ready."""

    kind = VmNodeResource.kind
    concurrent = True   # its resources share nothing: a wave of them runs at once

    def __init__(self, vms: VmSupervisor) -> None:
        self.vms = vms

    async def create(self, vm: VmNodeResource) -> None:
        self.vms.warm_up()   # the runners' parent warms up while the TAPs are made
        await super().create(vm)
        await self.vms.start(vm)

    async def restore(self, vm: VmNodeResource) -> None:
        """Its TAPs only, when vnetd rebuilds it from its record (``reconciler.restore``):
        whether its runner starts is the run state its user chose, which vnetd's start
        honours for every VM alike."""
        await super().create(vm)

    async def delete(self, vm: VmNodeResource) -> None:
        await self.vms.stop(vm)
        await super().delete(vm)

    async def create_first(self, vm: VmNodeResource) -> None:
        self.vms.warm_up()   # the runners' parent warms up while the TAPs are made
        await asyncio.to_thread(self.first_blocking, vm)

    async def create_together(self, vms: Sequence[VmNodeResource]) -> list[Exception | None]:
        outcomes = await asyncio.to_thread(self.together_blocking, vms)
        ready = [i for i, failed in enumerate(outcomes) if failed is None]
        started = await asyncio.gather(*(self.vms.start(vms[i]) for i in ready),
                                       return_exceptions=True)
        for i, outcome in zip(ready, started, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome
                outcomes[i] = outcome
        return outcomes

    def create_blocking(self, vm: VmNodeResource) -> None:
        self.first_blocking(vm)
        failed = self.together_blocking([vm])[0]
        if failed is not None:
            raise failed

    def first_blocking(self, vm: VmNodeResource) -> None:
        """Its TAPs, with their MTUs, marked as ours, still down (no frame passes before the
        port tables; a rollback deletes what is marked)."""
        ipr = links.host_iproute()
        links.refuse_taken(ipr, (spec.ifname for spec in vm.taps), "node")
        for spec in vm.taps:
            tap.create_persistent_tap(spec.ifname)
            index = ipr.link_lookup(ifname=spec.ifname)[0]
            if spec.mtu is not None:   # a spanning network's: the overlay's MTU
                ipr.link("set", index=index, mtu=spec.mtu)
            links.mark_port_end(ipr, index, spec.ifname, spec.alias)

    def together_blocking(self, vms: Sequence[VmNodeResource]) -> list[Exception | None]:
        """Every VM's TAPs' port tables in one nft transaction, then those TAPs up; each VM's
        error (None: its TAPs are ready)."""
        return open_port_ends([[spec.ifname for spec in vm.taps] for vm in vms])

    def delete_blocking(self, vm: VmNodeResource) -> None:
        ipr = links.host_iproute()
        for spec in vm.taps:
            nft.forget_port_table(spec.ifname)
            links.delete_owned_link(ipr, spec.ifname, spec.alias)

    def exists_blocking(self, vm: VmNodeResource) -> bool:
        """Its TAPs are there (whether its runner runs is its state, not its existence)."""
        return links.all_present(links.host_iproute(), (spec.ifname for spec in vm.taps))

    def describe(self, vm: VmNodeResource) -> dict[str, Any]:
        return {"name": vm.node, "kind": "vm", **self.vms.status(vm.lab, vm.node),
                "nics": [{"name": t.nic, "mac": t.mac, "ip": [t.ip] if t.ip else [],
                          "ifname": t.ifname, "mtu": t.mtu or 1500} for t in vm.taps]}
