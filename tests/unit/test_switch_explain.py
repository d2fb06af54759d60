"""``Switch.explain`` (``vnet trace``'s core): rule by rule, and against the real decision.

The property test is the point: for random tables, ports and frames, explain's verdict is
what ``receive`` then does, and explain changes nothing (no learning, counting, caching)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_switch_rules import BCAST, IPV4, A, B, C, five_port_switch, frame
from vnet.packet import mac_to_bytes, make_tci
from vnet.switch import Switch
from vnet.switch.explain import Explanation

S_TAG, C_TAG = b"\x88\xa8", b"\x81\x00"


def explained(sw: Switch, port: int, data: bytes, tci: int | None = None,
              now: float = 1.0) -> Explanation:
    before = state(sw)
    e = sw.explain(port, data, tci, now)
    assert state(sw) == before, "explain changed the switch"
    return e


def step(e: Explanation, stage: str) -> tuple[str, str]:
    [found] = [(s.outcome, s.detail) for s in e.steps if s.stage == stage]
    return found


def state(sw: Switch) -> Any:
    fdb = sw.fdb
    return (fdb.state(), sw._misses, set(sw._cache),
            {n: p.counters.snapshot() for n, p in sw._ports.items()})


def test_access_port_takes_untagged_into_its_vlan_and_floods_broadcast() -> None:
    sw = five_port_switch()
    e = explained(sw, 1, frame(BCAST, A))
    assert e.drop is None and e.vid == 10
    assert e.untagged == (2, 5) and e.tagged == (4,)
    outcome, detail = step(e, "ingress")
    assert outcome == "vlan" and "access port of VLAN 10" in detail and "untagged" in detail
    assert step(e, "learning")[0] == "learn"
    assert step(e, "lookup")[0] == "flood"
    assert "a2 (untagged)" in step(e, "egress")[1] and "t1 (tagged VID 10" in step(e, "egress")[1]


def test_trunk_takes_a_tag_of_an_allowed_vlan() -> None:
    e = explained(five_port_switch(), 4, frame(BCAST, C), make_tci(20, pcp=5))
    assert (e.vid, e.untagged, e.tagged) == (20, (3,), (5,))
    assert "from its tag" in step(e, "ingress")[1]
    assert e.tci == make_tci(20, pcp=5)
    assert "PCP 5" in step(e, "egress")[1]


def test_native_vlan_takes_untagged_frames_on_a_trunk() -> None:
    e = explained(five_port_switch(), 5, frame(BCAST, C))
    assert e.vid == 10 and "native VLAN" in step(e, "ingress")[1]
    assert e.untagged == (1, 2) and e.tagged == (4,)


def test_unknown_unicast_floods_and_known_unicast_goes_to_its_port() -> None:
    sw = five_port_switch()
    e = explained(sw, 1, frame(B, A))
    assert step(e, "lookup")[0] == "miss" and e.untagged == (2, 5)
    sw.receive(2, frame(A, B), None, 0.5)  # B learned on port 2
    e = explained(sw, 1, frame(B, A))
    outcome, detail = step(e, "lookup")
    assert outcome == "hit" and "a2" in detail and (e.untagged, e.tagged) == ((2,), ())


def test_an_aged_entry_is_a_miss() -> None:
    sw = five_port_switch()             # VLAN 10 ages entries after 5 s
    sw.receive(2, frame(A, B), None, 0.0)
    e = explained(sw, 1, frame(B, A), now=100.0)
    outcome, detail = step(e, "lookup")
    assert outcome == "miss" and "aged out" in detail


def test_vlan_not_allowed_on_a_trunk_is_dropped() -> None:
    e = explained(five_port_switch(), 5, frame(BCAST, C), make_tci(30))
    assert e.drop == "vlan-not-allowed"
    assert "VLAN 30 is not allowed" in step(e, "ingress")[1]
    assert step(e, "learning")[0] == "skipped" and e.egress == ()


def test_untagged_on_a_trunk_without_native_is_dropped() -> None:
    assert explained(five_port_switch(), 4, frame(BCAST, C)).drop == "untagged-no-native"


def test_s_tag_is_dropped_on_every_port() -> None:
    sw = five_port_switch()
    s_tagged = BCAST + C + S_TAG + b"\x00\x0a" + IPV4 + bytes(46)
    for port in (1, 4, 5):
        e = explained(sw, port, s_tagged)
        assert e.drop == "s-tagged", port
        assert "S-tag" in step(e, "ingress")[1]
    # behind a priority C-tag
    assert explained(sw, 4, s_tagged, make_tci(0)).drop == "s-tagged"


def test_tagged_frame_on_an_access_port_is_dropped() -> None:
    sw = five_port_switch()
    e = explained(sw, 1, frame(BCAST, A), make_tci(10))
    assert e.drop == "tagged-on-access" and "access port" in step(e, "ingress")[1]
    # priority tag with a C-tag behind it: no VLAN hopping
    hidden = BCAST + A + C_TAG + b"\x00\x14" + IPV4 + bytes(46)
    assert explained(sw, 1, hidden, make_tci(0)).drop == "tagged-on-access"
    # a priority tag alone is fine
    assert explained(sw, 1, frame(BCAST, A), make_tci(0, pcp=3)).vid == 10


def test_mac_limit_says_not_learned_but_still_forwarded() -> None:
    sw = five_port_switch(mac_limit=2)
    for i in range(2):
        sw.receive(1, frame(BCAST, mac_to_bytes(f"02:00:00:00:01:0{i}")), None, 0.0)
    e = explained(sw, 1, frame(BCAST, A))
    outcome, detail = step(e, "learning")
    assert outcome == "limited" and "limit of 2" in detail
    assert e.drop is None and e.untagged == (2, 5)


def test_move_and_refresh() -> None:
    sw = five_port_switch()
    sw.receive(1, frame(BCAST, A), None, 0.0)
    assert step(explained(sw, 1, frame(BCAST, A)), "learning")[0] == "refresh"
    outcome, detail = step(explained(sw, 2, frame(BCAST, A)), "learning")
    assert outcome == "move" and "from a1 to a2" in detail


def test_hairpin_is_dropped() -> None:
    sw = five_port_switch()
    sw.receive(1, frame(BCAST, A), None, 0.0)
    sw.receive(1, frame(BCAST, B), None, 0.0)   # A and B both behind port 1
    e = explained(sw, 1, frame(B, A))
    assert e.drop == "hairpin" and step(e, "lookup")[0] == "hit"
    assert step(e, "learning")[0] == "refresh"   # learning comes before the lookup
    # a frame to its own source: learned first, then found on the in-port
    assert explained(sw, 2, frame(C, C)).drop == "hairpin"


def test_multicast_source_and_reserved_group() -> None:
    sw = five_port_switch()
    e = explained(sw, 1, frame(BCAST, mac_to_bytes("01:00:5e:00:00:01")))
    assert e.drop == "bad-src-mac" and step(e, "learning")[0] == "skipped"
    assert explained(sw, 1, frame(mac_to_bytes("01:80:c2:00:00:0e"), A)).drop == \
        "reserved-group"


def test_unknown_port_and_runt() -> None:
    sw = five_port_switch()
    assert explained(sw, 99, frame(BCAST, A)).drop == "unknown-port"
    assert explained(sw, 1, b"\x00" * 10).drop == "runt"


def test_decision_cache_hit_is_reported() -> None:
    sw = five_port_switch(cache_admit_every=1)
    sw.receive(2, frame(A, B), None, 0.0)
    sw.receive(1, frame(B, A), None, 0.1)  # remembered
    e = explained(sw, 1, frame(B, A), now=0.2)
    assert step(e, "cache")[0] == "hit"
    sw.receive(3, frame(BCAST, C), None, 0.3)  # the table changed: stale
    assert "stale" in step(explained(sw, 1, frame(B, A), now=0.4), "cache")[1]


def test_json_names_ports_and_tagging() -> None:
    sw = five_port_switch()
    j = explained(sw, 1, frame(BCAST, A)).to_json()
    assert j["vlan"] == 10 and j["drop"] is None
    assert j["egress"] == [{"port": "a2", "tagging": "untagged"},
                           {"port": "t2", "tagging": "untagged"},
                           {"port": "t1", "tagging": "tagged"}]
    assert [s["stage"] for s in j["steps"]] == ["ingress", "learning", "lookup", "cache",
                                                "egress"]
    j = explained(sw, 1, frame(BCAST, A), make_tci(10)).to_json()
    assert j["drop"] == "tagged-on-access" and j["vlan"] is None and j["drop_reason"]


# ---- explain == receive, for random tables, ports and frames ----------------------------------

MACS = [A, B, C, mac_to_bytes("02:00:00:00:00:04"), BCAST, mac_to_bytes("01:00:5e:00:00:01"),
        mac_to_bytes("01:80:c2:00:00:00"), b"\x00" * 6]
UNICAST = MACS[:4]
TAGS = st.one_of(st.none(), st.none(), st.none(),
                 st.builds(make_tci, st.sampled_from([0, 10, 20, 30]), st.integers(0, 7)))
FRAMES = st.tuples(
    st.integers(1, 6),                                          # in-port (6: none)
    st.sampled_from(UNICAST * 2 + MACS[4:]),                    # destination
    st.sampled_from(UNICAST * 6 + MACS[5:]),                    # source
    st.sampled_from([IPV4] * 6 + [C_TAG, S_TAG]), TAGS,
    st.one_of(st.floats(0, 1), st.floats(0, 20)),               # time step (aging: 5 s)
    st.integers(0, 30).map(lambda n: n == 0))                   # a runt, now and then


def build(spec: tuple[int, bytes, bytes, bytes, int | None, float, bool]
          ) -> tuple[int, bytes, int | None]:
    port, dst, src, ethertype, tci, _dt, runt = spec
    data = dst + src + ethertype + (b"\x00\x14" + IPV4 if ethertype != IPV4 else b"")
    return port, (data[:9] if runt else data + bytes(46)), tci


def verdict(d: Any) -> Any:
    return d.drop if d.drop else (d.vid, d.untagged, d.tagged, d.tci)


@settings(max_examples=400, deadline=None)
@given(st.lists(FRAMES, max_size=30), st.lists(FRAMES, min_size=1, max_size=10),
       st.sampled_from([1, 2, 16]), st.sampled_from([1, 2, 64]),
       st.lists(st.tuples(st.sampled_from([10, 20]), st.sampled_from(MACS[:4]),
                          st.integers(1, 5)), max_size=2))
def test_explain_says_what_receive_does(history: list[Any], probes: list[Any], admit: int,
                                        limit: int, statics: list[Any]) -> None:
    sw = five_port_switch(mac_limit=limit, cache_admit_every=admit)
    for vid, mac, port in statics:
        sw.fdb.add_static(vid, mac, port)
    now = 0.0
    for spec in history:
        now += spec[5]
        sw.receive(*build(spec), now)
    decided: list[int] = []
    real_decide = sw._decide

    def spy(*args: Any) -> Any:
        decided.append(1)
        return real_decide(*args)

    sw._decide = spy  # type: ignore[method-assign,assignment]
    for spec in probes:   # several in a row: cache hits, moves, hairpins after learning
        now += spec[5]
        port, data, tci = build(spec)
        e = explained(sw, port, data, tci, now)
        decided.clear()
        d = sw.receive(port, data, tci, now)
        assert verdict(e) == verdict(d), (e.steps, d)
        cache = [s.outcome for s in e.steps if s.stage == "cache"]
        assert cache == ([] if e.drop and not cache else ["miss" if decided else "hit"])
