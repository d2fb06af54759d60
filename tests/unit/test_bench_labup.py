"""The bring-up part of the bench's report: summaries and the table, from given sittings."""

from __future__ import annotations

from vnet.bench import labup
from vnet.bench.bringup import Sitting
from vnet.bench.vmbringup import MIB, VmSitting

MACHINE = {"cpu": "Test CPU", "cores": 2, "kernel": "6.0"}


def test_netns_rows_are_ratios_of_medians_to_the_script() -> None:
    sittings = [Sitting(1.0, 1.2, 0.6, 0.5, 0.6, 0.7), Sitting(3.0, 3.2, 0.8, 1.5, 1.6, 0.9),
                Sitting(2.0, 2.2, 0.7, 1.0, 1.1, 0.8)]
    summary = labup.summarize(sittings, labup.NETNS_ROWS)
    assert summary["up"]["vnet"] == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert summary["up"]["ratio"] == 2.0
    assert summary["down"]["ratio"] == 0.7 / 0.8
    assert len(summary["sittings"]) == 3 and summary["sittings"][0]["vnet_up"] == 1.0


def test_the_vm_lab_until_ping_is_divided_by_the_scripts_up() -> None:
    sittings = [VmSitting(1.0, 1.5, 0.5, 0.25, 0.4, (6 * MIB, 8 * MIB), (7 * MIB, 9 * MIB))]
    result = {"settings": {"nodes": 20, "vms": 2, "repeat": 1},
              "vms": {**labup.summarize(sittings, labup.VM_ROWS),
                      "memory": labup.memory(sittings)}}
    assert result["vms"]["ping"]["ratio"] == 6.0
    table = labup.markdown(result, MACHINE, "2026-12-02")
    assert "| 2 tiny VMs + 1 netns node: `vnet up` until every VM answers a ping | 1.50 s | " \
        "0.25 s (its up) | **x6.0** |" in table
    assert "7.0 / 8.0 MiB" in table
    assert "netns nodes" not in table.split("\n\n")[0]   # only the parts that ran
    assert "Test CPU" in table


def test_step_names_match_the_sittings_taken() -> None:
    names = labup.step_names(["vms", "bringup"], 2, labup.Settings(nodes=5, vms=3))
    assert names == ["bring-up 5 netns 1/2", "bring-up 5 netns 2/2", "bring-up 3 VMs 1/2",
                     "bring-up 3 VMs 2/2"]
