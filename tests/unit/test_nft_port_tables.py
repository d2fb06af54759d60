"""A wave's port tables: the nft text, and one transaction for all (no root, no nft)."""

from __future__ import annotations

import pytest

from vnet.errors import HostError
from vnet.host import nft


def test_the_port_tables_of_several_ports_are_one_script_each_table_replaced_whole() -> None:
    script = nft.port_tables_script(["vna", "vnb"])
    assert script == (
        "add table netdev vnet-port-vna\ndelete table netdev vnet-port-vna\n"
        "table netdev vnet-port-vna {\n  chain ingress {\n"
        '    type filter hook ingress device "vna" priority -500; policy drop;\n  }\n}\n'
        "add table netdev vnet-port-vnb\ndelete table netdev vnet-port-vnb\n"
        "table netdev vnet-port-vnb {\n  chain ingress {\n"
        '    type filter hook ingress device "vnb" priority -500; policy drop;\n  }\n}\n')


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """nft replaced by a recorder that refuses any script naming vnbad."""
    seen: list[str] = []

    def fake(script: str) -> None:
        seen.append(script)
        if "vnbad" in script:
            raise HostError("nft refused vnbad")

    monkeypatch.setattr(nft, "_commits", nft.GroupCommit(fake))
    return seen


def test_a_waves_port_tables_go_in_one_transaction(runs: list[str]) -> None:
    assert nft.keep_host_stacks_off([["vna"], ["vnb", "vnc"]]) == [None, None]
    assert runs == [nft.port_tables_script(["vna", "vnb", "vnc"])]


def test_a_refused_wave_is_tried_node_by_node_so_only_the_bad_node_fails(
        runs: list[str]) -> None:
    outcomes = nft.keep_host_stacks_off([["vna"], ["vnbad", "vnc"], ["vnd"]])
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], HostError) and "vnbad" in str(outcomes[1])
    assert runs[1:] == [nft.port_tables_script(g) for g in (["vna"], ["vnbad", "vnc"], ["vnd"])]


def test_no_ports_no_nft_run(runs: list[str]) -> None:
    assert nft.keep_host_stacks_off([]) == [] and runs == []
