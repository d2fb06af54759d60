"""The shape of a driver whose work blocks (netlink, nft, a subprocess).

vnetd's event loop must keep answering the API and supervising the datapath and the VMs
while a namespace is built, so such a driver writes its steps as plain blocking functions
(``create_blocking``, ...) and this base runs each in a worker thread.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any, Generic, TypeVar

R = TypeVar("R")


class BlockingDriver(ABC, Generic[R]):
    """A ``reconciler.Driver`` made of blocking steps, each run off the loop."""

    kind: str

    async def create(self, resource: R) -> None:
        await asyncio.to_thread(self.create_blocking, resource)

    async def delete(self, resource: R) -> None:
        await asyncio.to_thread(self.delete_blocking, resource)

    async def exists(self, resource: R) -> bool:
        return await asyncio.to_thread(self.exists_blocking, resource)

    @abstractmethod
    def create_blocking(self, resource: R) -> None:
        """Create it; refuse (``HostError``) to take over anything vnet's state does not
        record."""

    @abstractmethod
    def delete_blocking(self, resource: R) -> None:
        """Delete it, tolerating a half-created or already-gone resource."""

    @abstractmethod
    def exists_blocking(self, resource: R) -> bool:
        """Is it there now?"""

    @abstractmethod
    def describe(self, resource: R) -> dict[str, Any]:
        """What ``vnet status`` shows of it (cheap: no netlink round trip)."""
