"""How far a long change (``vnet up``, ``vnet down``) has got, for a client that asked.

The reconciler reports each finished step of a wave; whoever serves the request (the API
server, for a request with ``"progress": true``) installs a reporter for the request's task
in ``REPORTER``, a context variable, so the wave's tasks inherit it and nothing between the
API and the reconciler passes it along.  Without a reporter, reporting costs a lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Any, Literal

Verb = Literal["making", "removing"]


@dataclass(frozen=True)
class Progress:
    """``done`` of the ``total`` resources of ``kind`` in the wave under way."""

    verb: Verb
    kind: str
    done: int
    total: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Reporter = Callable[[Progress], None]
REPORTER: ContextVar[Reporter | None] = ContextVar("vnet_progress_reporter", default=None)


def report(progress: Progress) -> None:
    reporter = REPORTER.get()
    if reporter is not None:
        reporter(progress)
