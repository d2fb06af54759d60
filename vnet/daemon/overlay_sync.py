"""One converge at a time per network: the bus service's overlay updates, level-triggered.

The bus service learns what a network's overlay should hold from several tasks (the
session's events, the ticker, the worker that realises labs), often many times a second
while MACs arrive.  Each of them only says what it wants now (``want``); one task per
(lab, network) does the driver calls, one after the other, always towards the latest
wanted state, and ends when what it applied is what is wanted.  So two converges of the
same netdev never run at once (they would fight over the same entries), wanted states that
were overtaken before their turn are never written, and nothing queues up.  A failed call
is logged once per failure streak and tried again at the next ``want`` (the ticker's, at
the latest).  Realising or removing a lab holds its networks (``held``): the running calls
end first, none starts meanwhile, and afterwards nothing is assumed about the netdevs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

from vnet.aiotasks import cancel_and_wait
from vnet.daemon.bus_overlay import NetworkOverlay, Overlay
from vnet.errors import VnetError

log = logging.getLogger("vnet.daemon.bus")

Key = tuple[str, str]          # (lab, network)


class OverlaySync:
    """The latest wanted overlay of each network, and the one task that applies it."""

    def __init__(self, overlay: Overlay) -> None:
        self.overlay = overlay
        self.wanted: dict[Key, NetworkOverlay] = {}
        self.peers: dict[Key, frozenset[str]] = {}    # what the netdev holds (last success)
        self.macs: dict[Key, Mapping[str, tuple[str, str | None]]] = {}
        self.calls = 0                                 # driver calls made, for tests/status
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._failing: set[Key] = set()
        self._held: dict[str, int] = {}                # lab -> holders
        self._epoch: dict[Key, int] = {}               # bumped when a lab is forgotten

    @property
    def idle(self) -> bool:
        """No network's task is running."""
        return not self._tasks

    def applied(self, key: Key) -> bool:
        wanted = self.wanted.get(key)
        return wanted is None or (self.peers.get(key) == wanted.peers
                                  and self.macs.get(key) == wanted.macs)

    def want(self, lab: str, network: str, target: NetworkOverlay) -> None:
        """Make ``target`` what ``network``'s overlay converges to next (it replaces any
        earlier wanted state not yet applied); returns at once."""
        key = (lab, network)
        self.wanted[key] = target
        if key not in self._tasks and lab not in self._held and not self.applied(key):
            self._tasks[key] = asyncio.get_running_loop().create_task(self._run(key))

    async def _run(self, key: Key) -> None:
        try:
            while key[0] not in self._held and not self.applied(key):
                if not await self._converge(key):
                    return          # the next want() tries again
        finally:
            self._tasks.pop(key, None)

    async def _converge(self, key: Key) -> bool:
        """One step towards the latest wanted state (read again before each call)."""
        lab, network = key
        epoch = self._epoch.get(key, 0)
        try:
            peers = self.wanted[key].peers
            if self.peers.get(key) != peers:
                self.calls += 1
                await self.overlay.set_flood_peers(lab, network, peers)
                if self._epoch.get(key, 0) != epoch:
                    return True     # forgotten meanwhile: nothing to record
                self.peers[key] = peers
                if lab in self._held:
                    return True     # held meanwhile: no further call
            macs = self.wanted[key].macs
            if self.macs.get(key) != macs:
                self.calls += 1
                await self.overlay.set_remote_macs(lab, network, macs)
                if self._epoch.get(key, 0) == epoch:
                    self.macs[key] = macs
        except Exception as err:
            if key not in self._failing:
                self._failing.add(key)
                log.error("bus: overlay of %s/%s not updated (will retry): %s", lab, network,
                          err, exc_info=not isinstance(err, VnetError))
            return False
        if key in self._failing:
            self._failing.discard(key)
            log.info("bus: overlay of %s/%s updated again", lab, network)
        return True

    @contextlib.asynccontextmanager
    async def held(self, lab: str) -> AsyncIterator[None]:
        """No overlay call for ``lab`` while the block runs (the running ones end first);
        afterwards its netdevs' contents are unknown (``forget``)."""
        self._held[lab] = self._held.get(lab, 0) + 1
        try:
            running = [task for key, task in self._tasks.items() if key[0] == lab]
            if running:
                await asyncio.wait(running)
            yield
        finally:
            self._held[lab] -= 1
            if not self._held[lab]:
                del self._held[lab]
            self.forget(lab)

    def forget(self, lab: str) -> None:
        """Nothing is known any more of what ``lab``'s netdevs hold, nor wanted of them."""
        for key in {k for k in (*self.wanted, *self.peers, *self.macs) if k[0] == lab}:
            self.wanted.pop(key, None)
            self.peers.pop(key, None)
            self.macs.pop(key, None)
            self._epoch[key] = self._epoch.get(key, 0) + 1

    async def stop(self) -> None:
        await cancel_and_wait(list(self._tasks.values()))
