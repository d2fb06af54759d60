"""OverlaySync with a fake overlay whose calls block until the test lets them go: one call
at a time per network, wanted states overtaken meanwhile never written, the latest one
applied, failures retried at the next want, and a held lab left alone."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping

import pytest

from vnet.daemon.bus_overlay import NetworkOverlay
from vnet.daemon.overlay_sync import OverlaySync
from vnet.errors import HostError
from vnet.topology.model import FrozenMap

RED, BLUE = ("lab1", "red"), ("lab1", "blue")


def target(*peers: str, macs: int = 0) -> NetworkOverlay:
    return NetworkOverlay(frozenset(peers), FrozenMap(
        {f"02:00:00:00:00:{i:02x}": (peers[0], None) for i in range(macs)}))


class BlockingOverlay:
    """Records every call; each waits for ``gate`` (open: no wait), and counts how many
    calls of one network are inside the overlay at the same time."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.calls: list[tuple[str, tuple[str, str], object]] = []
        self.inside: dict[tuple[str, str], int] = {}
        self.most_inside: dict[tuple[str, str], int] = {}
        self.peers: dict[tuple[str, str], frozenset[str]] = {}
        self.macs: dict[tuple[str, str], dict[str, tuple[str, str | None]]] = {}
        self.fail: BaseException | None = None

    async def _call(self, what: str, key: tuple[str, str], value: object) -> None:
        self.calls.append((what, key, value))
        self.inside[key] = self.inside.get(key, 0) + 1
        self.most_inside[key] = max(self.most_inside.get(key, 0), self.inside[key])
        try:
            await self.gate.wait()
            if self.fail is not None:
                raise self.fail
        finally:
            self.inside[key] -= 1

    async def set_flood_peers(self, lab: str, network: str, peers: Collection[str]) -> None:
        await self._call("peers", (lab, network), frozenset(peers))
        self.peers[(lab, network)] = frozenset(peers)

    async def set_remote_macs(self, lab: str, network: str,
                              macs: Mapping[str, tuple[str, str | None]]) -> None:
        await self._call("macs", (lab, network), dict(macs))
        self.macs[(lab, network)] = dict(macs)


async def until(condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


def test_wants_while_a_call_blocks_start_no_second_call_and_the_latest_is_applied():
    async def scenario() -> None:
        overlay = BlockingOverlay()
        sync = OverlaySync(overlay)
        overlay.gate.clear()
        sync.want(*RED, target("10.0.0.2", macs=1))
        await until(lambda: overlay.calls, "the first call")
        for n in range(2, 40):                       # many updates while it blocks
            sync.want(*RED, target("10.0.0.2", "10.0.0.3", macs=n))
            await asyncio.sleep(0)
        assert len(overlay.calls) == 1 and not sync.idle
        last = target("10.0.0.4", macs=7)
        sync.want(*RED, last)
        overlay.gate.set()
        await until(lambda: sync.idle, "the sync to finish")
        assert overlay.most_inside[RED] == 1
        assert overlay.peers[RED] == last.peers and overlay.macs[RED] == dict(last.macs)
        # the blocked call, then the latest MACs and peers: nothing in between was written
        assert [what for what, _, _ in overlay.calls] == ["peers", "macs", "peers"]
        assert sync.peers[RED] == last.peers and dict(sync.macs[RED]) == dict(last.macs)
        sync.want(*RED, last)                        # applied already: no call
        await asyncio.sleep(0)
        assert len(overlay.calls) == 3 and sync.idle
    asyncio.run(scenario())


def test_networks_converge_independently():
    async def scenario() -> None:
        overlay = BlockingOverlay()
        sync = OverlaySync(overlay)
        overlay.gate.clear()
        sync.want(*RED, target("10.0.0.2"))
        sync.want(*BLUE, target("10.0.0.3"))
        await until(lambda: len(overlay.calls) == 2, "one call per network")
        overlay.gate.set()
        await until(lambda: sync.idle, "the sync to finish")
        assert overlay.peers == {RED: {"10.0.0.2"}, BLUE: {"10.0.0.3"}}
        assert overlay.most_inside == {RED: 1, BLUE: 1}
    asyncio.run(scenario())


def test_a_failed_call_is_logged_once_and_tried_again_at_the_next_want(caplog):
    async def scenario() -> None:
        overlay = BlockingOverlay()
        sync = OverlaySync(overlay)
        overlay.fail = HostError("network red: its vxlan interface vx-red is gone")
        with caplog.at_level(logging.ERROR, logger="vnet.daemon.bus"):
            for _ in range(3):
                sync.want(*RED, target("10.0.0.2"))
                await until(lambda: sync.idle, "the attempt")
        assert len(overlay.calls) == 3 and RED not in sync.peers
        assert caplog.text.count("overlay of lab1/red not updated (will retry): network red: "
                                 "its vxlan interface vx-red is gone") == 1
        overlay.fail = None
        sync.want(*RED, target("10.0.0.2"))
        await until(lambda: sync.idle, "the retry")
        assert sync.peers[RED] == {"10.0.0.2"} and overlay.peers[RED] == {"10.0.0.2"}
    asyncio.run(scenario())


def test_a_held_lab_gets_no_calls_and_is_forgotten_after():
    async def scenario() -> None:
        overlay = BlockingOverlay()
        sync = OverlaySync(overlay)
        overlay.gate.clear()
        sync.want(*RED, target("10.0.0.2"))
        await until(lambda: overlay.calls, "the first call")
        entered = asyncio.Event()

        async def realise() -> None:
            async with sync.held("lab1"):
                entered.set()
                sync.want(*RED, target("10.0.0.3"))     # not while held
                await asyncio.sleep(0)
                assert len(overlay.calls) == 1
        holder = asyncio.create_task(realise())
        await asyncio.sleep(0.01)
        assert not entered.is_set()                     # the running call ends first
        overlay.gate.set()
        await asyncio.wait_for(holder, 5)
        assert len(overlay.calls) == 1 and sync.idle
        assert RED not in sync.peers and RED not in sync.wanted   # unknown after the hold
        sync.want(*RED, target("10.0.0.3"))
        await until(lambda: sync.idle, "the sync after the hold")
        assert overlay.peers[RED] == {"10.0.0.3"}
    asyncio.run(scenario())


def test_stop_cancels_a_blocked_call():
    async def scenario() -> None:
        overlay = BlockingOverlay()
        sync = OverlaySync(overlay)
        overlay.gate.clear()
        sync.want(*RED, target("10.0.0.2"))
        await until(lambda: overlay.calls, "the first call")
        await asyncio.wait_for(sync.stop(), 5)
        assert sync.idle
    asyncio.run(scenario())


@pytest.mark.parametrize("count", [0, 3])
def test_an_empty_or_full_target_equal_to_what_is_applied_needs_no_call(count):
    async def scenario() -> None:
        overlay = BlockingOverlay()
        sync = OverlaySync(overlay)
        sync.want(*RED, target("10.0.0.2", macs=count))
        await until(lambda: sync.idle, "the sync")
        calls = len(overlay.calls)
        sync.want(*RED, target("10.0.0.2", macs=count))   # equal, a new object
        assert sync.idle and len(overlay.calls) == calls
    asyncio.run(scenario())
