"""vnetd's log leaves out what says nothing about vnet: asyncio's line per event loop."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from vnet.daemon.main import configure_logging, not_a_selector_notice


@pytest.fixture
def configured() -> Iterator[None]:
    pyroute2_level = logging.getLogger("pyroute2").level
    configure_logging("debug")
    yield
    logging.getLogger("asyncio").removeFilter(not_a_selector_notice)
    logging.getLogger("pyroute2").setLevel(pyroute2_level)


def test_a_new_event_loop_is_not_logged_but_asyncio_still_is(
        configured: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    asyncio.new_event_loop().close()       # what every pyroute2 IPRoute does
    logging.getLogger("asyncio").debug("Executing <Task> took 0.2 seconds")
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert messages == ["Executing <Task> took 0.2 seconds"]


def test_pyroute2_debug_is_not_logged(configured: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("pyroute2.netlink.core").debug("a netlink message")
    logging.getLogger("pyroute2.netlink.core").warning("a netlink warning")
    assert [r.getMessage() for r in caplog.records] == ["a netlink warning"]
