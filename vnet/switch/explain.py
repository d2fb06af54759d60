"""Why the switch does what it does with a frame: ``vnet trace``'s core, pure.

``explain`` walks the steps of ``Switch._decide`` (ingress classification, source learning,
the FDB lookup, egress) and says what each would do, with the decision cache beside them,
on the live tables and changing nothing: no learning, no counting, no caching, no aging.

It calls the switch's own rules (``Switch._classify``, ``Fdb.would_learn`` over
``Fdb._learn_outcome``, ``Fdb.lookup``, ``Switch._outputs``, ``cacheable``), never a copy
of them, so its verdict is the decision's; a property test holds the two together on random
frames, ports and tables.  What it adds is only words: which tag it saw, which entry it hit,
why a port learns no more.

(This module runs in the datapath, which may be PyPy 3.9: annotations stay strings.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vnet.packet.ethernet import BROADCAST, C_TAG, S_TAG, mac_to_str
from vnet.switch.bridge import cacheable
from vnet.switch.fdb import LearnResult

if TYPE_CHECKING:
    from vnet.switch.bridge import Switch, _Port

DROP_REASONS = {
    "unknown-port": "the switch has no such port",
    "runt": "shorter than an Ethernet header (14 bytes)",
    "bad-src-mac": "the source MAC is a group or all-zero address: such a frame is dropped "
                   "and its source never learned",
    "tagged-on-access": "a tagged frame on an access port, which takes untagged and "
                        "priority-tagged frames only (no VLAN hopping)",
    "s-tagged": "an 802.1ad S-tag (TPID 0x88a8): this is a C-VLAN bridge, it drops S-tagged "
                "frames on every port",
    "untagged-no-native": "an untagged frame on a trunk without a native VLAN",
    "vlan-not-allowed": "a VLAN this trunk does not carry",
    "reserved-group": "to a reserved IEEE 802.1 group address (01:80:c2:00:00:00-0f: STP, "
                      "LACP, LLDP, 802.1X, ...), which a bridge never forwards",
    "hairpin": "the destination is behind the port the frame came in on: never sent back out",
}


@dataclass(frozen=True)
class Step:
    """One stage of the decision: ``stage`` (ingress, learning, lookup, cache, egress), a
    short machine-readable ``outcome`` and the ``detail`` in words."""

    stage: str
    outcome: str
    detail: str


@dataclass(frozen=True)
class Egress:
    number: int
    port: str
    tagged: bool


@dataclass(frozen=True)
class Explanation:
    """What ``Switch.receive`` would return (``drop``, or ``vid``, the ports and ``tci``)
    and the steps that lead there."""

    in_port: int
    port: str
    vid: int
    egress: tuple[Egress, ...]
    tci: int
    drop: str | None
    steps: tuple[Step, ...]

    @property
    def untagged(self) -> tuple[int, ...]:
        return tuple(e.number for e in self.egress if not e.tagged)

    @property
    def tagged(self) -> tuple[int, ...]:
        return tuple(e.number for e in self.egress if e.tagged)

    def to_json(self) -> dict[str, Any]:
        return {"port": self.port, "vlan": self.vid if self.drop is None else None,
                "drop": self.drop, "drop_reason": DROP_REASONS.get(self.drop or ""),
                "egress": [{"port": e.port, "tagging": "tagged" if e.tagged else "untagged"}
                           for e in self.egress],
                "tci": self.tci if self.drop is None else None,
                "steps": [{"stage": s.stage, "outcome": s.outcome, "detail": s.detail}
                          for s in self.steps]}


def explain(switch: Switch, in_port: int, frame: bytes, tci: int | None,
            now: float) -> Explanation:
    """What ``switch.receive(in_port, frame, tci, now)`` would do, changing nothing."""
    steps: list[Step] = []
    port = switch._ports.get(in_port)
    if port is None:
        steps.append(Step("ingress", "drop", f"port {in_port}: {DROP_REASONS['unknown-port']}"))
        return _dropped(in_port, "", "unknown-port", steps)
    name = port.config.name
    verdict = switch._classify(port, frame, tci)
    if isinstance(verdict, str):
        steps.append(Step("ingress", "drop", f"{_port_words(port)}; {_tag_words(frame, tci)}: "
                          f"dropped ({verdict}): {_drop_words(verdict, port, tci)}"))
        steps.append(Step("learning", "skipped", "dropped before learning: nothing learned"))
        return _dropped(in_port, name, verdict, steps)
    vid = verdict
    steps.append(Step("ingress", "vlan", f"{_port_words(port)}; {_tag_words(frame, tci)}: "
                      f"VLAN {vid} ({_vlan_why(port, tci)})"))

    fdb = switch.fdb
    src, dst = frame[6:12], frame[0:6]
    entry = fdb.entry(vid, src)
    learned, src_after = fdb.would_learn(vid, src, in_port)
    steps.append(Step("learning", _LEARN_OUTCOME[learned],
                      _learn_words(switch, learned, vid, src, entry, in_port, now)))

    group = bool(dst[0] & 1)
    if group:
        out = None
    elif dst == src:
        out = src_after   # the lookup follows the learning of the same MAC
    else:
        out = fdb.lookup(vid, dst, now)
    outputs = switch._outputs(vid, in_port, out)
    steps.append(Step("lookup", *_lookup_words(switch, vid, dst, src, out, outputs, in_port,
                                               src_after, now)))
    dst_known = (src_after is not None) if dst == src else fdb.entry(vid, dst) is not None
    steps.append(_cache_step(switch, in_port, frame, tci, now, outputs is not None,
                             cacheable(src_after is not None, out, not group and dst_known)))
    if outputs is None:
        steps.append(Step("egress", "drop", f"dropped (hairpin): {DROP_REASONS['hairpin']}"))
        return _dropped(in_port, name, "hairpin", steps)
    untagged, tagged = outputs
    egress = tuple(Egress(n, _name(switch, n), False) for n in untagged) + tuple(
        Egress(n, _name(switch, n), True) for n in tagged)
    pcp = 0 if tci is None else tci >> 13
    if egress:
        tag = f"tagged VID {vid} PCP {pcp}"
        shown = ", ".join(f"{e.port} ({tag if e.tagged else 'untagged'})" for e in egress)
        steps.append(Step("egress", "forward", f"out of {len(egress)} port"
                          f"{'s' if len(egress) > 1 else ''}: {shown}"))
    else:
        steps.append(Step("egress", "nowhere", f"VLAN {vid} has no other port: the frame "
                          f"goes nowhere (not a drop)"))
    return Explanation(in_port, name, vid, egress, pcp << 13 | vid, None, tuple(steps))


_LEARN_OUTCOME = {LearnResult.REFRESHED: "refresh", LearnResult.LEARNED: "learn",
                  LearnResult.MOVED: "move", LearnResult.LIMITED: "limited"}


def _dropped(in_port: int, name: str, reason: str, steps: list[Step]) -> Explanation:
    return Explanation(in_port, name, 0, (), 0, reason, tuple(steps))


def _name(switch: Switch, number: int) -> str:
    port = switch._ports.get(number)
    return port.config.name if port is not None else str(number)


def _vlans(vids: frozenset[int]) -> str:
    return ",".join(str(v) for v in sorted(vids)) or "none"


def _port_words(port: _Port) -> str:
    config = port.config
    if config.mode == "access":
        return f"in-port {config.name}: access port of VLAN {config.vlan}"
    native = f"native VLAN {config.native}" if config.native else "no native VLAN"
    return f"in-port {config.name}: trunk of VLANs {_vlans(config.allowed)} ({native})"


def _tag_words(frame: bytes, tci: int | None) -> str:
    """The tags as the switch sees them: the outer C-tag beside the frame, others in band."""
    if tci is None:
        outer = "untagged"
    elif tci & 0xFFF == 0:
        outer = f"priority-tagged (802.1Q VID 0, PCP {tci >> 13})"
    else:
        outer = f"802.1Q tag VID {tci & 0xFFF} PCP {tci >> 13}"
    inner = frame[12:14]
    if len(frame) >= 16 and inner in (C_TAG, S_TAG):
        kind = "802.1ad S-tag (0x88a8)" if inner == S_TAG else "802.1Q C-tag"
        vid = int.from_bytes(frame[14:16], "big") & 0xFFF
        where = "behind it" if tci is not None else "in band"
        outer = f"{outer}, an {kind} VID {vid} {where}" if tci is not None else (
            f"an {kind} VID {vid} {where}")
    return outer


def _vlan_why(port: _Port, tci: int | None) -> str:
    if port.access_vid is not None:
        return "the access port's VLAN"
    if tci is None or tci & 0xFFF == 0:
        return "the trunk's native VLAN"
    return "from its tag, allowed on this trunk"


def _drop_words(reason: str, port: _Port, tci: int | None) -> str:
    words = DROP_REASONS.get(reason, reason)
    if reason == "vlan-not-allowed" and tci is not None:
        return (f"VLAN {tci & 0xFFF} is not allowed on this trunk "
                f"(it carries {_vlans(port.members)})")
    return words


def _learn_words(switch: Switch, learned: int, vid: int, src: bytes, entry: Any,
                 in_port: int, now: float) -> str:
    mac = mac_to_str(src)
    here = _name(switch, in_port)
    fdb = switch.fdb
    if learned == LearnResult.REFRESHED:
        if entry.static:
            return f"{mac} is static on {_name(switch, entry.port)} in VLAN {vid}: kept there"
        return (f"{mac} already on {here} in VLAN {vid} (last seen {now - entry.seen:.1f} s "
                f"ago): refreshed")
    limit = fdb._vlans[vid].limit if vid in fdb._vlans else None
    count = fdb.learned_count(in_port, vid)
    if learned == LearnResult.LEARNED:
        return (f"would learn {mac} on {here} in VLAN {vid} ({count} of its limit of "
                f"{limit} learned there)")
    if learned == LearnResult.MOVED:
        return (f"would move {mac} in VLAN {vid} from {_name(switch, entry.port)} to {here} "
                f"(a MAC move)")
    forgotten = (f"; its entry on {_name(switch, entry.port)} would be forgotten"
                 if entry is not None else "")
    return (f"not learned: {here} has learned its limit of {limit} MACs in VLAN {vid} "
            f"(mac_limit; counted as learn_limited){forgotten}; the frame is still forwarded")


def _lookup_words(switch: Switch, vid: int, dst: bytes, src: bytes, out: int | None,
                  outputs: Any, in_port: int, src_after: int | None,
                  now: float) -> tuple[str, str]:
    mac = mac_to_str(dst)
    if dst[0] & 1:
        kind = "broadcast" if dst == BROADCAST else "a group address"
        return "flood", f"{mac} is {kind}: flooded in VLAN {vid}, no lookup"
    if out is None:
        entry = switch.fdb.entry(vid, dst)
        if dst == src and src_after is None:
            why = "its own source, which is not learned"
        elif entry is None:
            why = f"not in VLAN {vid}'s table"
        else:
            why = (f"its entry on {_name(switch, entry.port)} has aged out (idle "
                   f"{now - entry.seen:.1f} s > {switch.fdb.aging(vid):g} s)")
        return "miss", f"{mac} {why}: unknown unicast, flooded in VLAN {vid}"
    where = _name(switch, out)
    entry = switch.fdb.entry(vid, dst)
    how = "static" if entry is not None and entry.static else "learned"
    if out == in_port:
        return "hit", f"{mac} is on {where} ({how}), the in-port itself"
    if outputs is not None and out not in outputs[0] + outputs[1]:
        return "hit", (f"{mac} was learned on {where}, which is no longer in VLAN {vid}: "
                       f"flooded instead")
    return "hit", f"{mac} is on {where} in VLAN {vid} ({how})"


def _cache_step(switch: Switch, in_port: int, frame: bytes, tci: int | None, now: float,
                forwards: bool, may_cache: bool) -> Step:
    key = (in_port, frame[:14], tci)
    hit = switch._cache_hit(in_port, frame, tci, now) if len(frame) >= 14 else None
    if hit is not None:
        return Step("cache", "hit", "a remembered decision for this flow is valid: the "
                    "datapath applies it without the checks (the same decision as the full "
                    "one above) and only refreshes the source")
    stale = key in switch._cache
    said = ("a remembered decision for this flow is stale (the table changed since, or its "
            "destination aged): the full decision is taken" if stale else
            "no remembered decision for this flow: the full decision is taken")
    if not forwards:
        return Step("cache", "miss", f"{said}; drops are never remembered")
    if not may_cache:
        return Step("cache", "miss", f"{said}; this one would not be remembered (its source "
                    f"is not learned, or its destination is in the table but aged)")
    every = switch.cache_admit_every
    if (switch._misses + 1) % every == 0:
        return Step("cache", "miss", f"{said}; this one would be remembered")
    return Step("cache", "miss", f"{said}; one full decision in {every} is remembered, "
                f"this one would not be")
