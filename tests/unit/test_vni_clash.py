"""VNIs across labs on one host: a second lab whose network has a VNI that another lab's
network already uses here is refused before anything is made, naming both; and a lab's VNIs
are computed once, not once per network asked."""

from __future__ import annotations

from textwrap import dedent

import pytest

from vnet.daemon.preflight import refuse_vni_clashes, vni_clashes
from vnet.daemon.resources import OverlayResource, desired_resources
from vnet.daemon.state import LabRecord
from vnet.errors import HostError
from vnet.topology import Topology, parse_topology
from vnet.topology import model as topology_model
from vnet.topology.values import assign_vnis


def lab(name: str, vnis: dict[str, int | None], address: str = "10.90.0.1") -> Topology:
    """A lab on h1 (at ``address``) and h2 whose networks all span both hosts."""
    networks = "\n".join(f"  {n}: {{vlan: {i + 10}" + (f", vni: {v}" if v else "") + "}"
                         for i, (n, v) in enumerate(vnis.items()))
    nics = ", ".join(f"{{name: eth{i}, network: {n}}}" for i, n in enumerate(vnis))
    return parse_topology(dedent(f"""\
        name: {name}
        hosts: {{h1: {{address: {address}}}, h2: {{address: 10.90.0.2}}}}
        bus: {{broker: "mqtt://10.90.0.254"}}
        networks:
        """) + networks + dedent(f"""
        nodes:
          a: {{kind: netns, host: h1, nics: [{nics}]}}
          b: {{kind: netns, host: h2, nics: [{nics}]}}
        """))


def overlays(topology: Topology) -> list[OverlayResource]:
    return [r for r in desired_resources(topology, "h1") if isinstance(r, OverlayResource)]


def record(topology: Topology) -> LabRecord:
    return LabRecord(topology.name, "", dict.fromkeys(desired_resources(topology, "h1"),
                                                     "ready"))


def test_a_vni_another_lab_uses_on_this_host_is_named_with_both_labs_and_the_fix() -> None:
    first = lab("alpha", {"red": 100, "blue": None})
    second = lab("beta", {"green": None, "wan": 100})
    problems = vni_clashes("beta", overlays(second), overlays(first))
    assert len(problems) == 1
    assert problems[0].startswith(
        "network wan of lab beta has VNI 100, which network red of lab alpha already uses on "
        "this host")
    assert "set vni: on network wan in beta's file (or on red in alpha's)" in problems[0]
    assert "below 1048576" in problems[0]
    with pytest.raises(HostError, match="network red of lab alpha"):
        refuse_vni_clashes("beta", desired_resources(second, "h1"), [record(first)])


def test_a_clash_counts_whatever_the_underlay_address() -> None:
    # The kernel has one VXLAN socket per namespace and port: another local address does
    # not make the same VNI a different tunnel.
    first = lab("alpha", {"red": 7})
    second = lab("beta", {"red": 7}, address="10.91.0.1")
    assert len(vni_clashes("beta", overlays(second), overlays(first))) == 1


def test_derived_vnis_clash_too() -> None:
    first = lab("alpha", {"red": None})
    taken = first.vni_of("red")
    second = lab("beta", {"blue": taken})
    assert "network red of lab alpha" in vni_clashes("beta", overlays(second),
                                                     overlays(first))[0]


def test_no_clash_with_other_vnis_or_with_the_lab_itself() -> None:
    first = lab("alpha", {"red": 100})
    assert vni_clashes("alpha", overlays(first), overlays(first)) == []   # its own re-up
    assert vni_clashes("beta", overlays(lab("beta", {"red": 101})), overlays(first)) == []
    refuse_vni_clashes("alpha", desired_resources(first, "h1"), [record(first)])
    # a pending overlay (an up that was cut short) is as taken as a ready one
    pending = LabRecord("alpha", "", dict.fromkeys(desired_resources(first, "h1"), "pending"))
    with pytest.raises(HostError):
        refuse_vni_clashes("beta", desired_resources(lab("beta", {"x": 100}), "h1"), [pending])


def test_a_labs_vnis_are_assigned_once(monkeypatch: pytest.MonkeyPatch) -> None:
    t = lab("alpha", {f"n{i}": None for i in range(20)})
    calls = []

    def counting(*args: object) -> dict[str, int]:
        calls.append(args)
        return assign_vnis(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(topology_model, "assign_vnis", counting)
    vnis = [t.vni_of(n.name) for n in t.networks]
    assert len(set(vnis)) == 20 and len(calls) == 1
    with pytest.raises(KeyError, match="has no network"):
        t.vni_of("nowhere")
