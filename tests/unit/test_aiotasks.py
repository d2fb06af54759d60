"""Stopping helper tasks keeps the caller's own cancellation (no root)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from vnet.aiotasks import cancel_and_wait


async def slow_to_stop(release: asyncio.Event) -> None:
    """A helper that, cancelled, still has to finish something (close a session)."""
    try:
        await asyncio.Event().wait()   # until cancelled
    except asyncio.CancelledError:
        await release.wait()
        raise


async def stopping(helper: asyncio.Task[None], stopped: list[str], new: bool) -> None:
    if new:
        await cancel_and_wait([helper])
    else:   # the pattern it replaces
        helper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await helper
    stopped.append("went on")


@pytest.mark.parametrize("new", [True, False])
def test_a_caller_cancelled_while_it_stops_a_helper_is_cancelled(new: bool) -> None:
    async def scenario() -> tuple[bool, list[str]]:
        release, stopped = asyncio.Event(), list[str]()
        helper = asyncio.create_task(slow_to_stop(release))
        await asyncio.sleep(0)
        caller = asyncio.create_task(stopping(helper, stopped, new))
        for _ in range(5):
            await asyncio.sleep(0)
        caller.cancel()          # vnetd stopping, while the caller waits for its helper
        release.set()
        with contextlib.suppress(asyncio.CancelledError):
            await caller
        await asyncio.wait([helper])
        return caller.cancelled(), stopped

    cancelled, stopped = asyncio.run(scenario())
    if new:
        assert cancelled and stopped == [], "the caller's cancellation reached it"
    else:
        assert not cancelled and stopped == ["went on"], "the old pattern swallows it"


def test_a_helper_that_failed_raises_its_error_as_awaiting_it_would() -> None:
    async def failing() -> None:
        raise KeyError("bug")

    async def scenario() -> None:
        task = asyncio.create_task(failing())
        await asyncio.sleep(0)
        await cancel_and_wait([task, asyncio.create_task(asyncio.Event().wait())])

    with pytest.raises(KeyError, match="bug"):
        asyncio.run(scenario())


def test_nothing_to_stop_returns_at_once() -> None:
    asyncio.run(cancel_and_wait([]))
