"""What vnet up/down show of vnetd's progress: an updating line on a terminal, a line per
finished wave otherwise (no root)."""

from __future__ import annotations

import io

import pytest

from vnet.cli_progress import ProgressLine, counted, describe


def event(done: int, total: int, verb: str = "making", kind: str = "netns-node"
          ) -> dict[str, object]:
    return {"verb": verb, "kind": kind, "done": done, "total": total}


def test_events_in_words() -> None:
    assert describe(event(3, 20)) == ("making netns-node 3/20", False)
    assert describe(event(20, 20)) == ("made 20 netns-node", True)
    assert describe(event(1, 1, "removing", "port")) == ("removed 1 port", True)


@pytest.mark.parametrize("bad", [None, "x", {}, event(0, 2), event(3, 2), event(1, 2, "eating"),
                                 {**event(1, 2), "done": True} | {"done": "1"}])
def test_what_is_not_an_event_is_skipped(bad: object) -> None:
    assert describe(bad) is None


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_output_has_a_line_per_finished_wave() -> None:
    out = io.StringIO()
    shown = ProgressLine(out, "demo")
    for done in range(1, 4):
        shown(event(done, 3))
    shown(event(1, 1, kind="port"))
    shown("garbage")
    shown.close()
    assert out.getvalue() == "demo: made 3 netns-node\ndemo: made 1 port\n"


def test_a_terminal_gets_one_line_that_updates_and_is_cleared() -> None:
    out = Terminal()
    shown = ProgressLine(out, "demo")
    shown(event(1, 2))
    shown(event(2, 2))
    shown.close()
    assert out.getvalue() == ("\r\x1b[Kdemo: making netns-node 1/2\r\x1b[Kdemo: made 2 "
                              "netns-node\r\x1b[K")


def test_a_count_shows_on_a_terminal_only_unless_plain() -> None:
    plain, terminal = io.StringIO(), Terminal()
    for out in (plain, terminal):
        shown = ProgressLine(out, "test demo")
        shown.show(counted("expectations checked", 4, 6))
        shown.show("done 1/2", plain=True)
        shown.close()
    assert plain.getvalue() == "test demo: done 1/2\n"
    assert terminal.getvalue() == ("\r\x1b[Ktest demo: 4/6 expectations checked"
                                   "\r\x1b[Ktest demo: done 1/2\r\x1b[K")


def test_other_output_goes_around_the_updating_line() -> None:
    out = Terminal()
    shown = ProgressLine(out, "bench")
    with shown.cleared():          # nothing shown yet: nothing to clear or show again
        out.write("log 1\n")
    shown.show("vnet tcp ... 3/12")
    with shown.cleared():
        out.write("log 2\n")
    shown.close()
    assert out.getvalue() == ("log 1\n\r\x1b[Kbench: vnet tcp ... 3/12\r\x1b[Klog 2\n"
                              "\r\x1b[Kbench: vnet tcp ... 3/12\r\x1b[K")
