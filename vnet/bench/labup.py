"""``vnet bench --measure bringup,vms``: what a lab's bring-up costs, in the bench's report.

The sittings are ``vnet.bench.bringup``'s (N namespace nodes) and ``vnet.bench.vmbringup``'s
(N tiny VMs and a namespace node), each against the plain ``ip`` script doing the same
kernel work in the same sitting; here they are repeated, summarised (median, min..max,
ratio to the script's median) and written as a table beside the switch's figures.
"""

from __future__ import annotations

import os
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from vnet.bench import bringup, vmbringup
from vnet.bench.measure import median_spread
from vnet.bench.vmbringup import MIB

PARTS = ("bringup", "vms")
Log = Callable[[str], None]
# a sitting that fails (vnet up refused, a node never answers, a script error) is reported,
# and the bench goes on with its other parts
FAILURES = (AssertionError, RuntimeError, OSError, subprocess.SubprocessError)


@dataclass(frozen=True)
class Settings:
    nodes: int = 20      # namespace nodes of the ``bringup`` lab
    vms: int = 20        # tiny VMs of the ``vms`` lab (beside one namespace node)

    @classmethod
    def quick(cls) -> Settings:
        return cls(nodes=4, vms=2)


# figure -> (label, the vnet field, the script field it is divided by)
NETNS_ROWS = (("up", "`vnet up`", "vnet_up", "script_up"),
              ("ping", "`vnet up` until every node answers a ping", "vnet_ping",
               "script_ping"),
              ("down", "`vnet down`", "vnet_down", "script_down"))
VM_ROWS = (("up", "`vnet up`", "vnet_up", "script_up"),
           # the script has no guests to ping: divided by its ``up``
           ("ping", "`vnet up` until every VM answers a ping", "vnet_ping", "script_up"),
           ("down", "`vnet down`", "vnet_down", "script_down"))


def summarize(sittings: Sequence[Any], rows: Sequence[tuple[str, str, str, str]]
              ) -> dict[str, Any]:
    """Each row's vnet and script figures over the sittings, and their ratio of medians."""
    out: dict[str, Any] = {"sittings": [{f.name: getattr(s, f.name) for f in fields(s)}
                                        for s in sittings]}
    for key, _label, vnet_field, script_field in rows:
        vnet = median_spread([getattr(s, vnet_field) for s in sittings])
        script = median_spread([getattr(s, script_field) for s in sittings])
        out[key] = {"vnet": vnet, "script": script,
                    "ratio": vnet["median"] / script["median"] if script["median"] else None}
    return out


def memory(sittings: Sequence[vmbringup.VmSitting]) -> dict[str, float]:
    """Per-runner USS and PSS: the median runner's, medians over the sittings (bytes)."""
    return {field: float(statistics.median(statistics.median(getattr(s, field))
                                           for s in sittings))
            for field in ("uss", "pss")}


def run_labup(settings: Settings, parts: Sequence[str], repeat: int, log: Log,
              step: Callable[[str], Any]) -> dict[str, Any]:
    """The sittings of ``parts``, ``repeat`` each; the summary for ``markdown``."""
    result: dict[str, Any] = {"settings": {"nodes": settings.nodes, "vms": settings.vms,
                                           "repeat": repeat}}
    if "bringup" in parts:
        try:
            netns_sittings = [_sitting(step, f"bring-up {settings.nodes} netns", i, repeat,
                                       lambda: bringup.sit(settings.nodes), log)
                              for i in range(repeat)]
            result["netns"] = summarize(netns_sittings, NETNS_ROWS)
        except FAILURES as err:
            log(f"  bring-up of {settings.nodes} netns nodes: failed: {err}")
    if "vms" in parts:
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            log("  bring-up of VMs: skipped, /dev/kvm is not usable here")
            return result
        try:
            vm_sittings = [_sitting(step, f"bring-up {settings.vms} VMs", i, repeat,
                                    lambda: vmbringup.sit(settings.vms), log)
                           for i in range(repeat)]
            result["vms"] = {**summarize(vm_sittings, VM_ROWS), "memory": memory(vm_sittings)}
        except FAILURES as err:
            log(f"  bring-up of {settings.vms} VMs: failed: {err}")
    return result


def _sitting(step: Callable[[str], Any], what: str, i: int, repeat: int,
             sit: Callable[[], Any], log: Log) -> Any:
    with step(f"{what} {i + 1}/{repeat}"):
        sitting = sit()
    figures = ", ".join(f"{f.name} {getattr(sitting, f.name):.2f} s" for f in fields(sitting)
                        if isinstance(getattr(sitting, f.name), float))
    log(f"  {what}: {figures}")
    return sitting


def step_names(parts: Sequence[str], repeat: int, settings: Settings) -> list[str]:
    """The progress line's names of the sittings ``run_labup`` takes, in order."""
    whats = [f"bring-up {settings.nodes} netns" if part == "bringup"
             else f"bring-up {settings.vms} VMs" for part in PARTS if part in parts]
    return [f"{what} {i + 1}/{repeat}" for what in whats for i in range(repeat)]


def _cell(fig: dict[str, float]) -> str:
    text = f"{fig['median']:.2f} s"
    if fig["n"] > 1:
        text += f" ({fig['min']:.2f}..{fig['max']:.2f})"
    return text


def markdown(result: dict[str, Any], machine: dict[str, Any], started: str) -> str:
    lines = ["| lab bring-up | vnet | ip script (same kernel work) | ratio |",
             "|---|---|---|---|"]
    labs = (("netns", f"{result['settings']['nodes']} netns nodes", NETNS_ROWS),
            ("vms", f"{result['settings']['vms']} tiny VMs + 1 netns node", VM_ROWS))
    for key, what, rows in labs:
        if key not in result:
            continue
        for row, label, _v, script_field in rows:
            fig = result[key][row]
            script = _cell(fig["script"]) + (" (its up)" if script_field == "script_up"
                                              and row != "up" else "")
            ratio = f"**x{fig['ratio']:.1f}**" if fig["ratio"] is not None else "n/a"
            lines.append(f"| {what}: {label} | {_cell(fig['vnet'])} | {script} | {ratio} |")
        if key == "vms":
            mem = result[key]["memory"]
            lines.append(f"| {what}: runner memory, USS / PSS (median runner) | "
                         f"{mem['uss'] / MIB:.1f} / {mem['pss'] / MIB:.1f} MiB | | |")
    lines += ["", f"Median of {result['settings']['repeat']} sitting(s) (min..max), **x** "
              "ratio to the `ip` script of the same sittings (the VM lab's script makes the "
              "TAPs and the node but boots no guest, so its `up` is the divisor). Machine: "
              f"{machine['cpu']}, {machine['cores']} cores, kernel {machine['kernel']}; "
              f"{started}."]
    return "\n".join(lines) + "\n"
