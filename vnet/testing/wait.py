"""Wait for a condition, not for a time: the one poll loop every test shares.

A test that sleeps "long enough" fails on a machine slower than the author's, and wastes
time on a faster one.  ``wait_until`` returns as soon as the condition holds and allows a
generous deadline, since waiting costs nothing once the condition is met; when the deadline
passes it says what was awaited and what it saw last.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

DEFAULT_WAIT = 30.0    # seconds; generous: a slow, loaded machine must not miss it
POLL_INTERVAL = 0.05   # seconds between two looks

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = DEFAULT_WAIT,
               message: str | Callable[[], str] = "the condition", *,
               interval: float = POLL_INTERVAL,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], object] = time.sleep) -> T:
    """Call ``condition`` until it returns something true, and return that.

    ``message`` names what is awaited (a callable is called only on failure, for evidence
    gathered then, such as a console log).  On timeout raises ``AssertionError`` with the
    message and the condition's last value.  The condition is looked at once more at the
    deadline; an exception it raises is not caught.  ``clock`` and ``sleep`` are for tests.
    """
    deadline = clock() + timeout
    while True:
        value = condition()
        if value:
            return value
        now = clock()
        if now >= deadline:
            awaited = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:g} s waiting for {awaited}; "
                                 f"last observed: {value!r}")
        sleep(min(interval, deadline - now))
