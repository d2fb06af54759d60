"""The pacer refuses what it cannot pace (its schedule: tests/unit/test_bench_frames64.py)."""

from __future__ import annotations

import pytest

from vnet.bench import pacer


def test_bad_rates_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="rate > 0"):
        pacer.send_repeated(lambda k: k, 10, 0)
