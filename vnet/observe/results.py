"""The outcomes of ``vnet test`` and their reports: a table, JSON and JUnit XML.  Pure."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vnet.topology.model import Expectation


@dataclass(frozen=True)
class Outcome:
    """What one check found: ``reply`` (did the thing the expectation is about happen?),
    ``passed`` (is that what was expected?), the seconds it took and what it saw.
    ``error`` is set when the check could not run at all (it then fails)."""

    expectation: Expectation
    reply: bool
    seconds: float
    evidence: str
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.reply == self.expectation.want

    @property
    def result(self) -> str:
        return "ERROR" if self.error is not None else "PASS" if self.passed else "FAIL"


def judged(expectation: Expectation, reply: bool, seconds: float, evidence: str) -> Outcome:
    return Outcome(expectation, reply, seconds, evidence)


def failed_to_run(expectation: Expectation, why: str) -> Outcome:
    return Outcome(expectation, False, 0.0, why, error=why)


def summary(outcomes: Sequence[Outcome]) -> str:
    passed = sum(o.passed for o in outcomes)
    errors = sum(o.error is not None for o in outcomes)
    failed = len(outcomes) - passed - errors
    text = f"{passed} passed, {failed} failed"
    return text + (f", {errors} could not run" if errors else "")


def exit_code(outcomes: Sequence[Outcome]) -> int:
    """0 when every expectation held (and there was at least one), else 1."""
    return 0 if outcomes and all(o.passed for o in outcomes) else 1


def table_rows(outcomes: Sequence[Outcome]) -> list[list[str]]:
    return [[o.expectation.describe(), o.result, f"{o.seconds:.2f}s", o.evidence]
            for o in outcomes]


TABLE_HEADER = ["EXPECTATION", "RESULT", "TIME", "EVIDENCE"]


def to_json(lab: str, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    return {"lab": lab, "passed": exit_code(outcomes) == 0, "summary": summary(outcomes),
            "results": [{"expectation": o.expectation.describe(), "from": o.expectation.source,
                         "to": o.expectation.target, "check": o.expectation.check,
                         "port": o.expectation.port, "vlan": o.expectation.vlan,
                         "want": o.expectation.want, "window": o.expectation.window,
                         "result": o.result.lower(), "reply": o.reply,
                         "seconds": round(o.seconds, 4), "evidence": o.evidence}
                        for o in outcomes]}


def junit_xml(lab: str, outcomes: Sequence[Outcome], timestamp: str) -> str:
    """A JUnit XML report (one testsuite, one testcase per expectation) as CI systems read
    it; ``timestamp`` is ISO 8601 (the caller's clock)."""
    failures = sum(o.error is None and not o.passed for o in outcomes)
    errors = sum(o.error is not None for o in outcomes)
    suite = ET.Element("testsuite", name=f"vnet test {lab}", tests=str(len(outcomes)),
                       failures=str(failures), errors=str(errors), skipped="0",
                       time=f"{sum(o.seconds for o in outcomes):.3f}", timestamp=timestamp)
    for o in outcomes:
        case = ET.SubElement(suite, "testcase", classname=f"vnet.{lab}",
                             name=o.expectation.describe(), time=f"{o.seconds:.3f}")
        if o.error is not None:
            ET.SubElement(case, "error", message=o.error).text = o.evidence
        elif not o.passed:
            wanted = "a reply" if o.expectation.want else "no reply"
            ET.SubElement(case, "failure", message=f"expected {wanted}: {o.evidence}"
                          ).text = o.evidence
        ET.SubElement(case, "system-out").text = o.evidence
    root = ET.Element("testsuites", name="vnet test", tests=str(len(outcomes)),
                      failures=str(failures), errors=str(errors))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
