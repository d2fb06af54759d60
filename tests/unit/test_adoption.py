"""What a vnetd that finds its datapath and VM runners running does with them (pure)."""

from __future__ import annotations

import pytest

from tests.unit.test_recovery import BRIDGE, LAB, PORT_A, PORT_B, RECORD
from vnet.daemon.adoption import Stale, VmAction, stale, vm_action


def test_nothing_is_stale_when_the_datapath_holds_what_the_records_say() -> None:
    held = {LAB: {PORT_A.name, PORT_B.name}}
    assert stale(held, RECORD) == Stale()
    assert stale(held, RECORD).empty
    assert stale({}, RECORD).empty, "what is missing is the replay's, not stale"


def test_a_bridge_no_lab_has_and_a_port_no_record_has_are_stale() -> None:
    held = {LAB: {PORT_A.name, "gone.eth0"}, "oldlab": {"x.eth0"}}
    assert stale(held, RECORD) == Stale(bridges=("oldlab",), ports=((LAB, "gone.eth0"),))


def test_a_pending_port_is_not_stale() -> None:
    """A port an unfinished up recorded as pending is the next up's or down's to finish."""
    assert stale({LAB: {PORT_A.name}}, [BRIDGE, PORT_A]).empty


@pytest.mark.parametrize("wanted,found,action", [
    (None, True, VmAction.ADOPT), ("running", True, VmAction.ADOPT),
    (None, False, VmAction.START), ("running", False, VmAction.START),
    ("stopped", True, VmAction.STOP), ("stopped", False, VmAction.STAY_STOPPED)])
def test_each_vm_is_adopted_started_or_stopped_as_its_user_left_it(
        wanted: str | None, found: bool, action: VmAction) -> None:
    assert vm_action(wanted, found) is action
