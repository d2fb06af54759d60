"""A bus client in a process of its own, for tests that kill it: ``python -m
tests.integration.bus.victim URL HOST PASSWORD [LEASE]`` connects as HOST, keeps its status
online and prints ``online EPOCH`` after each connection."""

from __future__ import annotations

import asyncio
import sys

from vnet.bus.client import BusConfig, Connected, open_bus


async def main(url: str, host: str, password: str, lease: str = "30") -> None:
    config = BusConfig(url, password=password, keepalive=60, lease=float(lease))
    async with open_bus(config, host) as bus:
        await bus.publish_status()
        async for event in bus:
            if isinstance(event, Connected):
                print("online", event.epoch, flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
