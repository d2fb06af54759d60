"""The restart benchmark's machinery, once per case (``python -m vnet.bench.restart``): the
streams flow, stop and resume, their own counts agree with what was seen to arrive, and a
vnetd restart loses no frame.  No figure is checked: timing is the benchmark's to report."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import needs_root
from vnet.bench import restart
from vnet.testing import TestHost

pytestmark = [needs_root, pytest.mark.skipif(shutil.which("ping") is None,
                                             reason="needs ping")]


def test_every_case_measures_consistently_and_a_vnetd_restart_loses_nothing() -> None:
    with TestHost() as host:
        bench = restart.Bench.up(host)
        runs = [bench.run(case) for case in restart.CASES]   # in the order they need
        for run in runs:
            for name, acct in (("ping", run.ping_accounting), ("udp", run.udp_accounting)):
                assert acct.problems == [], (run.case, name, acct)
            for loss in (run.ping, run.udp):
                assert loss.received >= restart.FLOWING, run   # it resumed, and flowed on
                assert loss.lost >= 0
                assert (loss.back_after > 0) == (loss.lost > 0), run
            # the lost ones are among those sent and not seen: nothing counted twice
            assert run.udp.lost <= run.udp_accounting.sent - run.udp_accounting.arrived
            assert run.ping.lost <= run.ping_accounting.sent - run.ping_accounting.arrived
            assert run.control_back > 0
        by_case = {run.case: run for run in runs}
        # A functional guarantee, not a timing one: vnetd restarting (stopped, or killed)
        # does not touch the datapath, which forwards on and is adopted.
        for case in ("vnetd-term", "vnetd-kill"):
            assert (by_case[case].ping.lost, by_case[case].udp.lost) == (0, 0), by_case[case]
        # A datapath restart is a first crash each time (restarted at once, no back-off).
        for case in ("datapath-kill", "datapath-kill-adopted", "datapath-term"):
            assert by_case[case].restart_attempt == 1, by_case[case]
        assert "| vnetd SIGTERM, started again | 0 | 0 |" in "\n".join(
            restart.report(runs, 0.001, 0.001))
        host.down(bench.lab.name)
