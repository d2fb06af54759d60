"""Stopping asyncio tasks without losing the caller's own cancellation.

``task.cancel(); with suppress(CancelledError): await task`` is the usual way to stop a
helper task, and it has a flaw: if the *caller* is cancelled while it waits (vnetd
stopping while a bus session winds down), that cancellation is a ``CancelledError`` too,
and the ``suppress`` swallows it: the caller goes on as if nothing had happened, and a stop
that should end hangs or runs on.  ``cancel_and_wait`` waits with ``asyncio.wait``, which
never raises the tasks' cancellations, so the caller's own propagates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has ended; then raise the first exception one
    of them ended with, other than its cancellation (as awaiting it would have)."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
