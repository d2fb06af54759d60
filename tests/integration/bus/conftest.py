"""Bus tests against a real mosquitto (vnet.testing.broker) and an observer that feeds a
BusView from a real connection, waiting for conditions with a deadline."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vnet.bus.client import BusClient, BusConfig, BusEvent, Connected, Received, open_bus
from vnet.bus.errors import BusError
from vnet.bus.view import BusView
from vnet.testing.broker import Broker

USERS = {"h1": "secret-1", "h2": "secret-2", "h3": "secret-3"}
ROOT_DIR = Path(__file__).parents[3]
DEADLINE = 15.0
POLL = 0.05


@pytest.fixture
def broker() -> Iterator[Broker]:
    with Broker(USERS) as b:
        yield b


def config(broker: Broker, host: str, **options: Any) -> BusConfig:
    settings: dict[str, Any] = {"password": USERS.get(host, "wrong"), "keepalive": 5,
                                "backoff_min": 0.05, "backoff_max": 0.5, **options}
    return BusConfig(broker.url, **settings)


class Observer:
    """A host's bus connection plus its BusView; ``until`` consumes events (and ticks the
    view) until a condition on the view (or the event log) holds."""

    def __init__(self, bus: BusClient) -> None:
        self.bus = bus
        self.view = BusView(bus.host)
        self.events: list[BusEvent] = []

    async def until(self, condition: Callable[[], bool], what: str,
                    timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            self.view.tick(time.monotonic())        # leases expire on the view's clock
            if condition():
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.bus.host} waited {timeout} s for {what}; saw "
                                     f"{[type(e).__name__ for e in self.events][-20:]}, "
                                     f"stats {self.bus.stats.as_dict()}")
            try:   # a condition may also change without an event (bus.connected): poll it
                event = await asyncio.wait_for(anext(self.bus), min(left, POLL))
            except TimeoutError:
                continue
            self.events.append(event)
            try:
                if isinstance(event, Connected):
                    self.view.connected(event.epoch, event.at)
                elif isinstance(event, Received):
                    self.view.receive(event.message, event.at)
            except BusError as err:
                self.bus.stats.drop(err)

    def received(self) -> list[Received]:
        return [e for e in self.events if isinstance(e, Received)]

    def peer_state(self, host: str) -> tuple[str, int] | None:
        peer = self.view.peers.get(host)
        return None if peer is None else (peer.state, peer.epoch)


async def observe(broker: Broker, host: str = "h1", **options: Any) -> Observer:
    bus = open_bus(config(broker, host, **options), host)
    await bus.start()
    observer = Observer(bus)
    await observer.until(lambda: bus.connected, f"{host} to connect")
    return observer


def start_victim(broker: Broker, host: str, lease: float = 30.0) -> subprocess.Popen[bytes]:
    return broker.popen([sys.executable, "-m", "tests.integration.bus.victim", broker.url, host,
                         USERS[host], str(lease)], cwd=ROOT_DIR, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT_DIR)})


def kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
