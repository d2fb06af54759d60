"""What ``vnet bench`` shows of its progress on stderr: the measurements it will take, an
updating line per measurement on a terminal, a line per finished one otherwise (no root)."""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable

import pytest

from vnet.bench.run import Steps, measurements


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_measurements_of_a_run_in_order() -> None:
    assert measurements(1, ["bridge", "vnet"], {"tcp", "frames"}) == [
        "bridge frames", "bridge tcp", "vnet frames", "vnet tcp"]
    assert measurements(2, ["vnet"], {"latency"}) == ["run 1/2 vnet latency",
                                                       "run 2/2 vnet latency"]
    assert measurements(1, [], {"reach", "macs"}) == ["multihost reach", "multihost macs"]
    assert measurements(3, [], {"tcp"}) == []       # every system skipped: nothing to count


def clock() -> Callable[[], float]:
    ticks = itertools.count(0.0, 7.0)
    return lambda: next(ticks)


def test_plain_output_is_a_line_per_finished_measurement() -> None:
    out = io.StringIO()
    steps = Steps(2, out, clock())
    with steps.step("vnet tcp"):
        pass
    try:
        with steps.step("vnet scale"):
            raise OSError("a failed measurement is still counted")
    except OSError:
        pass
    steps.close()
    assert out.getvalue() == "bench: vnet tcp done 1/2 (7 s)\nbench: vnet scale done 2/2 (7 s)\n"


def test_a_terminal_shows_the_running_measurement_and_keeps_the_report_apart(
        capsys: pytest.CaptureFixture[str]) -> None:
    out = Terminal()
    steps = Steps(12, out, clock())
    steps.done = 2
    with steps.step("vnet tcp"):
        steps.log("  TCP 4 streams 9.1 Gbit/s")   # the report, on stdout
    steps.close()
    assert capsys.readouterr().out == "  TCP 4 streams 9.1 Gbit/s\n"
    assert out.getvalue() == ("\r\x1b[Kbench: vnet tcp ... 3/12"
                              "\r\x1b[K"                              # cleared for the report
                              "\r\x1b[Kbench: vnet tcp ... 3/12"      # and shown again
                              "\r\x1b[Kbench: vnet tcp done 3/12 (7 s)\r\x1b[K")
