"""``python -m vnet.bench``: the Linux bridge, OVS userspace and vnet's datapath, one run.

For each repeat and each system a fresh testbed is built (namespaces, veths, the switch),
measured and removed; the systems take turns within a repeat so that the machine's noise
falls on all of them alike.  Every figure is reported as the median over the repeats, its
spread (min..max) and its ratio to the Linux bridge's median of the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from vnet.bench import frames64, labup, measure, multihost, search
from vnet.bench.testbed import (
    BenchError,
    Bridge,
    Ovs,
    System,
    Testbed,
    Vnet,
    VnetPypy,
    VnetPython,
)
from vnet.cli_progress import ProgressLine

SYSTEMS: dict[str, type[System]] = {"bridge": Bridge, "ovs": Ovs, "vnet": Vnet,
                                     "vnet-python": VnetPython, "vnet-pypy": VnetPypy}

# metric -> (label, unit, higher is better)
METRICS: dict[str, tuple[str, str, bool]] = {
    "frames_offered_fps": ("64 B frames/s offered (paced generator, same rate asked of all)",
                           "kfps", True),
    "frames_delivered_fps": ("64 B frames/s delivered at that offered rate", "kfps", True),
    "frames_gen_cpu": ("64 B generator CPU (pinned to one core)", "%", False),
    "frames_gen_peak": ("64 B generator: most frames in any 1 ms / target", "x", False),
    "zero_loss_fps": ("64 B zero-loss rate (RFC 2544 search, paced generator)", "kfps", True),
    "zero_loss_fail_fps": ("64 B lowest offered rate that lost frames", "kfps", True),
    "tcp_multi_gbps": ("TCP, several streams", "Gbit/s", True),
    "tcp_1_gbps": ("TCP, one stream", "Gbit/s", True),
    "rtt_idle_p50_us": ("round trip idle p50", "µs", False),
    "rtt_idle_p99_us": ("round trip idle p99", "µs", False),
    "rtt_load_p50_us": ("round trip under TCP load p50", "µs", False),
    "rtt_load_p99_us": ("round trip under TCP load p99", "µs", False),
    "cpu_idle_pct": ("forwarding process CPU, no traffic", "% core", False),
    "cpu_ping_pct": ("forwarding process CPU, during the idle pings", "% core", False),
    "scale_entries": ("MAC entries learned (of the N sent)", "entries", True),
    "scale_learned_share": ("MAC sweep learned at a fixed offered rate (RFC 2889)", "%", True),
    "scale_learn_offered_fps": ("that sweep's offered rate (measured)", "kfps", True),
    "scale_learn_rate_fps": ("highest offered rate with >= 95 % of a sweep learned", "kfps",
                             True),
    "scale_learn_fail_fps": ("lowest offered rate with < 95 % learned", "kfps", True),
    "scale_lookup_fps": ("frames/s to N learned MACs (lookup rate)", "kfps", True),
    "scale_bytes_per_entry": ("resident memory per MAC entry", "bytes", False),
}


class Steps:
    """Which measurement the bench is at, on stderr: ``bench: vnet tcp ... 3/12`` updating on
    a terminal, ``bench: vnet tcp done 3/12 (21 s)`` as a line per finished one otherwise.
    ``log`` writes the bench's own report (stdout) around the updating line."""

    def __init__(self, total: int, stream: TextIO, now: Callable[[], float]) -> None:
        self.total, self.done, self.now = total, 0, now
        self.line = ProgressLine(stream, "bench")

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        """One measurement: shown while it runs, counted when it ends (or fails)."""
        since = self.now()
        self.line.show(started_text(what, self.done + 1, self.total))
        try:
            yield
        finally:
            self.done += 1
            self.line.show(finished_text(what, self.done, self.total, self.now() - since),
                           plain=True)

    def log(self, message: str) -> None:
        with self.line.cleared():
            print(message, flush=True)

    def close(self) -> None:
        self.line.close()


def started_text(what: str, number: int, total: int) -> str:
    return f"{what} ... {number}/{total}"


def finished_text(what: str, done: int, total: int, seconds: float) -> str:
    return f"{what} done {done}/{total} ({seconds:.0f} s)"


def measurements(repeat: int, systems: Sequence[str], what: set[str]) -> list[str]:
    """Every measurement a run takes, in order, as the progress line names them: each
    repeat's systems' single-host parts, then the multi-host parts."""
    run = [part for part in PARTS if part in what]
    names = [measurement(rep, repeat, name, part)
             for rep in range(repeat if systems and run else 0) for name in systems
             for part in run]
    return names + [f"multihost {part}" for part in multihost.PARTS if part in what]


def labup_settings(args: argparse.Namespace) -> labup.Settings:
    base = labup.Settings.quick() if args.quick else labup.Settings()
    return labup.Settings(nodes=args.bringup_nodes or base.nodes,
                          vms=args.bringup_vms if args.bringup_vms is not None else base.vms)


def measured(steps: Steps, rep: int, repeat: int, system: str, part: str
             ) -> AbstractContextManager[None]:
    return steps.step(measurement(rep, repeat, system, part))


def measurement(rep: int, repeat: int, system: str, part: str) -> str:
    """``vnet tcp``, or ``run 2/3 vnet tcp`` when there are repeats."""
    return f"{'' if repeat == 1 else f'run {rep + 1}/{repeat} '}{system} {part}"


def measure_system(bed: Testbed, system: System, s: measure.Settings, what: set[str],
                   log: Any, step: Callable[[str], AbstractContextManager[Any]] = nullcontext
                   ) -> dict[str, float]:
    """Every part of ``what`` on one system, each inside ``step(part)`` (progress)."""
    out: dict[str, float] = {}
    measure.warm_up(bed)
    for part in ("frames", "tcp", "latency", "scale"):
        if part not in what:
            continue
        with step(part):
            if part == "scale" and not measure.have_trafgen():
                log(f"  {part}: skipped, trafgen is not installed (apt-get install "
                    f"netsniff-ng)")
                continue
            try:
                PARTS[part](bed, system, s, out, log)
            except (BenchError, subprocess.TimeoutExpired, OSError, ValueError) as err:
                log(f"  {part}: failed: {err}")
    return out


def _frames(bed: Testbed, system: System, s: measure.Settings, out: dict[str, float],
            log: Any) -> None:
    cpu = frames64.generator_cpu()
    with frames64.switch_off_cpu(bed, cpu):
        _frames_pinned(bed, s, out, log, cpu)


def _frames_pinned(bed: Testbed, s: measure.Settings, out: dict[str, float], log: Any,
                   cpu: int) -> None:
    pace, missed = frames64.verify(bed, s.frame_rate, s.verify_seconds, cpu)
    out["frames_gen_peak"] = pace.peak_ratio
    log(f"  64 B generator (CPU {cpu}), {s.frame_rate / 1e3:.0f} k/s asked: at the switch's "
        f"port {pace.rate / 1e3:.0f} k/s, at most {pace.max_per_ms} frames in 1 ms "
        f"(target {pace.target_per_ms:.0f}, x{pace.peak_ratio:.2f}), longest pause "
        f"{pace.longest_gap_us / 1e3:.1f} ms" + (f", capture missed {missed}" if missed else ""))
    o = frames64.offer(bed, s.frame_rate, s.frame_seconds, cpu)
    out["frames_offered_fps"] = o.offered_fps
    out["frames_delivered_fps"] = o.delivered_fps
    out["frames_gen_cpu"] = o.sent.cpu_share * 100
    log(f"  64 B frames: offered {o.offered_fps / 1e3:.0f} k/s (generator CPU "
        f"{o.sent.cpu_share:.0%}), delivered {o.delivered_fps / 1e3:.0f} k/s, lost {o.lost}")
    if s.search_steps > 0:
        answer, trials = frames64.zero_loss(bed, s.frame_rate, s.search_seconds,
                                            s.search_steps, cpu)
        _bracket(out, "zero_loss", answer)
        tried = ", ".join(f"{t.offered / 1e3:.0f} k/s {'ok' if t.passed else 'lost'}"
                          for t in trials)
        log(f"  zero-loss rate ({s.search_seconds:g} s trials, no frame lost): "
            f"{answer.text()} ({tried})")


def _bracket(out: dict[str, float], name: str, answer: search.Answer) -> None:
    """A search's answer as figures: the rate (0 if nothing passed), the lowest failing rate
    (absent if everything passed), and which kind of answer it is (``NAME_kind``: 0
    measured, 1 at least, -1 below) for the table's notes."""
    out[f"{name}_fps"] = answer.rate
    if answer.kind in ("measured", "below"):
        out[f"{name}_fail_fps"] = answer.bound
    out[f"{name}_kind"] = {"measured": 0.0, "at least": 1.0, "below": -1.0}.get(answer.kind,
                                                                                 float("nan"))


def _tcp(bed: Testbed, system: System, s: measure.Settings, out: dict[str, float],
         log: Any) -> None:
    out["tcp_multi_gbps"] = measure.tcp(bed, s.tcp_seconds, s.tcp_streams)
    out["tcp_1_gbps"] = measure.tcp(bed, s.tcp_seconds, 1)
    log(f"  TCP {s.tcp_streams} streams {out['tcp_multi_gbps']:.2f} Gbit/s, "
        f"1 stream {out['tcp_1_gbps']:.2f} Gbit/s")


def _latency(bed: Testbed, system: System, s: measure.Settings, out: dict[str, float],
             log: Any) -> None:
    pid = measure.forwarding_pid(system)
    if pid:   # the bridge has no process to measure: no figure
        time.sleep(IDLE_SETTLE)   # what came before (warm-up pings, an earlier part) is over
        out["cpu_idle_pct"] = measure.idle_cpu(pid, IDLE_SECONDS)
    for name, load in (("idle", False), ("load", True)):
        lat = measure.latency(bed, s, load, pid)
        out[f"rtt_{name}_p50_us"] = lat["p50_us"]
        out[f"rtt_{name}_p99_us"] = lat["p99_us"]
        if name == "idle" and pid:
            out["cpu_ping_pct"] = lat["cpu_pct"]
        lost = f", {lat['loss']:.1%} lost" if lat["loss"] else ""
        log(f"  RTT {name}: p50 {lat['p50_us']:.0f} µs, p99 {lat['p99_us']:.0f} µs{lost}"
            + (f", forwarding process {lat['cpu_pct']:.1f} % of a core" if pid else ""))
    log(f"  forwarding process with no traffic: {out['cpu_idle_pct']:.1f} % of a core"
        if pid else "  CPU: the bridge forwards in softirqs, not attributable to a process")


def _scale(bed: Testbed, system: System, s: measure.Settings, out: dict[str, float],
           log: Any) -> None:
    sc = measure.scale(bed, system, s)
    out["scale_entries"] = sc["entries"]
    out["scale_learned_share"] = sc["learned_share"] * 100
    out["scale_learn_offered_fps"] = sc["learn_offered_fps"]
    out["scale_lookup_fps"] = sc["lookup_fps"]
    out["scale_bytes_per_entry"] = sc["bytes_per_entry"]
    log(f"  scale: {sc['entries']:.0f} entries ({sc['learned_share']:.1%} of the sweep "
        f"offered at {sc['learn_offered_fps'] / 1e3:.0f} k/s), lookups "
        f"{sc['lookup_fps'] / 1e3:.0f} k/s, {sc['bytes_per_entry']:.0f} B/entry")
    log("  the fill sweep: " + ", ".join(f"{k[5:]} {v:.0f}" for k, v in sc.items()
                                         if k.startswith("fill_") and k != "fill_offered_fps"))
    if s.scale_search_steps > 0:
        answer, trials = measure.learning_rate(bed, system, s)
        _bracket(out, "scale_learn_rate", answer)
        if "scale_learn_rate_fail_fps" in out:
            out["scale_learn_fail_fps"] = out.pop("scale_learn_rate_fail_fps")
        tried = ", ".join(f"{off / 1e3:.0f} k/s: {share:.0%}" for _, off, share in trials)
        log(f"  learning rate (>= {measure.LEARN_TARGET:.0%} of "
            f"{s.scale_search_entries} MACs): {answer.text()} ({tried})")


PARTS = {"frames": _frames, "tcp": _tcp, "latency": _latency, "scale": _scale}
SINGLE_HOST = set(PARTS)
IDLE_SETTLE = 1.0    # seconds after the last frame before the idle CPU share is measured
IDLE_SECONDS = 2.0   # ... and over how long


def summarize(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    systems = sorted({name for r in runs for name in r}, key=list(SYSTEMS).index)
    summary: dict[str, dict[str, Any]] = {}
    for name in systems:
        summary[name] = {}
        for metric in METRICS:
            values = [r[name][metric] for r in runs if name in r and metric in r[name]]
            if values:
                summary[name][metric] = measure.median_spread(values)
    base = summary.get("bridge", {})
    for figures in summary.values():
        for metric, fig in figures.items():
            ref = base.get(metric, {}).get("median")
            fig["ratio"] = (fig["median"] / ref if ref and not math.isnan(ref)
                            and not math.isnan(fig["median"]) else None)
    return summary


def _fmt(metric: str, value: float) -> str:
    unit = METRICS[metric][1]
    if math.isnan(value):
        return "n/a"
    if unit == "kfps":
        return f"{value / 1e3:.0f} k"
    if unit == "Gbit/s":
        return f"{value:.2f}"
    if unit in ("%", "% core"):
        return f"{value:.1f}"
    if unit == "x":
        return f"{value:.2f}"
    return f"{value:.0f}"


NOT_RATIOS = {"frames_gen_cpu", "frames_gen_peak"}  # about the generator, not the switch
SEARCHES = {"zero_loss": "64 B zero-loss rate", "scale_learn_rate": "learning rate"}


def bound_notes(runs: list[dict[str, dict[str, float]]]) -> list[str]:
    """Which searches gave a bound rather than a measured rate, per system (``_bracket``)."""
    notes = []
    for key, what in SEARCHES.items():
        for name in SYSTEMS:
            kinds = [r[name][f"{key}_kind"] for r in runs if f"{key}_kind" in r.get(name, {})]
            at_least, below = kinds.count(1.0), kinds.count(-1.0)
            if at_least:
                notes.append(f"{what}, {SYSTEMS[name].label}: a lower bound in {at_least} of "
                             f"{len(kinds)} run(s) (no rate tried failed: the generator's "
                             f"rate or the search's ceiling).")
            if below:
                notes.append(f"{what}, {SYSTEMS[name].label}: an upper bound in {below} of "
                             f"{len(kinds)} run(s) (every rate tried failed; 0 counted).")
    return notes


def markdown(result: dict[str, Any]) -> str:
    summary = result["summary"]
    systems = list(summary)
    labels = {name: SYSTEMS[name].label for name in systems}
    lines = ["| figure | unit | " + " | ".join(labels[n] for n in systems) + " |",
             "|---|---|" + "---|" * len(systems)]
    for metric, (label, unit, _) in METRICS.items():
        if not any(metric in summary[n] for n in systems):
            continue
        cells = []
        for name in systems:
            fig = summary[name].get(metric)
            if fig is None:
                cells.append("—")
                continue
            cell = _fmt(metric, fig["median"])
            if fig["n"] > 1:
                cell += f" ({_fmt(metric, fig['min'])}..{_fmt(metric, fig['max'])})"
            if (name != "bridge" and fig.get("ratio") is not None
                    and metric not in NOT_RATIOS):
                cell += f" **x{fig['ratio']:.2f}**"
            cells.append(cell)
        lines.append(f"| {label} | {unit} | " + " | ".join(cells) + " |")
    m = result["machine"]
    mode = "quick" if result["settings"]["quick"] else "full"
    lines += ["", f"Median of {result['settings']['repeat']} run(s) (min..max in brackets), "
              f"**x ratio** to the Linux bridge of the same run. Machine: {m['cpu']}, "
              f"{m['cores']} cores, {m['memory_gib']} GiB, kernel {m['kernel']}; "
              f"{result['started']}; settings: {mode}, "
              f"MAC table N = {result['settings']['scale_entries']}, filled by a sweep "
              f"offered at {result['settings']['scale_learn_rate'] / 1e3:.0f} k/s; "
              f"learning-rate search over sweeps of "
              f"{result['settings']['scale_search_entries']} MACs; 64 B: "
              f"{result['settings']['frame_rate'] / 1e3:.0f} k/s asked of the paced generator, "
              f"zero-loss trials of {result['settings']['search_seconds']:g} s."]
    lines += bound_notes(result.get("runs", []))
    if any("cpu_idle_pct" in summary[n] for n in systems):
        lines.append("CPU: the forwarding process's share of one core (vnet's datapath, "
                     "ovs-vswitchd), from /proc/PID/task/*/schedstat; the Linux bridge "
                     "forwards in the kernel's softirqs, charged to whatever runs: not "
                     "attributable (—).")
    for name, why in result.get("skipped", {}).items():
        lines.append(f"{SYSTEMS[name].label} skipped: {why}.")
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any], path: Path) -> str | None:
    """A PNG of every figure as a ratio to the Linux bridge; None, or why it was not drawn."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no chart"
    summary = result["summary"]
    metrics = [m for m in METRICS if m not in ("frames_offered_fps", "scale_entries",
                                               *NOT_RATIOS)
               and any(m in summary[n] for n in summary)]
    systems = list(summary)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.1 * len(metrics)), 4.8))
    width = 0.8 / max(len(systems), 1)
    for i, name in enumerate(systems):
        ratios, lows, highs = [], [], []
        for m in metrics:
            f = summary[name].get(m)
            ref = summary.get("bridge", {}).get(m, {}).get("median")
            if f is None or not ref or ref < 0:
                ratios.append(0.0)
                lows.append(0.0)
                highs.append(0.0)
                continue
            ratios.append(f["median"] / ref)
            lows.append(max(f["median"] - f["min"], 0) / ref)
            highs.append(max(f["max"] - f["median"], 0) / ref)
        xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(metrics))]
        ax.bar(xs, ratios, width, yerr=[lows, highs], capsize=2,
               label=SYSTEMS[name].label)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels([METRICS[m][0].replace(" (", "\n(") + ("\n(lower is better)"
                        if not METRICS[m][2] else "") for m in metrics],
                       rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("ratio to the Linux bridge (same run)")
    ax.set_title(f"vnet bench — {result['machine']['cpu']}, {result['machine']['cores']} cores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vnet bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short trials and a small MAC table")
    p.add_argument("--repeat", type=int, default=1, help="runs of every system (median, spread)")
    p.add_argument("--systems", default="bridge,ovs,vnet,vnet-python,vnet-pypy",
                   help="comma-separated subset of bridge,ovs,vnet (kernel flows on, the "
                   "default), vnet-python (every frame in Python), vnet-pypy")
    p.add_argument("--measure", default="frames,tcp,latency,scale,bringup,vms",
                   help="comma-separated subset of frames,tcp,latency,scale (the switch), "
                   "bringup,vms (a lab of --bringup-nodes netns nodes, of --bringup-vms tiny "
                   "VMs, against an ip script) and the multi-host figures "
                   "reach,steady,macs,overlay (multihost: all four; a lab across --hosts "
                   "vnetds and a broker; opt-in: it takes minutes)")
    p.add_argument("--bringup-nodes", type=int,
                   help="namespace nodes of --measure bringup's lab (default 20)")
    p.add_argument("--bringup-vms", type=int,
                   help="tiny VMs of --measure vms' lab (default 20)")
    p.add_argument("--hosts", type=int, default=16,
                   help="host namespaces (one vnetd each) for --measure multihost")
    p.add_argument("--macs", type=int, help="MACs advertised for --measure multihost's "
                   "convergence figure (default 10000)")
    p.add_argument("--out", default="bench-results", help="directory for results.json, .png, .md")
    p.add_argument("--vnet-python", help="interpreter for vnet's datapath (e.g. pypy3)")
    p.add_argument("--seconds", type=float, help="override every trial's duration")
    p.add_argument("--scale-entries", type=int, help="MAC table size N (default 1000000)")
    p.add_argument("--frame-rate", type=int, help="64 B frames/s asked of the paced "
                   "generator, the same for every system (default 200000)")
    p.add_argument("--learn-rate", type=int, help="frames/s of the MAC sweep that fills the "
                   "table, the same for every system (default 100000)")
    p.add_argument("--learn-steps", type=int, help="sweeps of the search for the highest "
                   "rate with >= 95 %% learned (default 5; 0: no search)")
    args = p.parse_args(argv)
    args.systems = [x for x in args.systems.split(",") if x]
    for name in args.systems:
        if name not in SYSTEMS:
            p.error(f"unknown system {name!r}: choose from {', '.join(SYSTEMS)}")
    args.measure = {x for x in args.measure.split(",") if x}
    if "multihost" in args.measure:
        args.measure = (args.measure - {"multihost"}) | set(multihost.PARTS)
    unknown = args.measure - SINGLE_HOST - set(labup.PARTS) - set(multihost.PARTS)
    if unknown:
        p.error(f"unknown measurement {sorted(unknown)}: choose from frames,tcp,latency,"
                f"scale,{','.join(labup.PARTS)},{','.join(multihost.PARTS)},multihost")
    if args.bringup_nodes is not None and not 2 <= args.bringup_nodes <= 4000:
        p.error("--bringup-nodes must be 2..4000")
    if args.bringup_vms is not None and not 1 <= args.bringup_vms <= 250:
        p.error("--bringup-vms must be 1..250")
    if not 2 <= args.hosts <= 200:
        p.error("--hosts must be 2..200")
    if args.learn_rate is not None and args.learn_rate < 1:
        p.error(f"--learn-rate must be a positive number of frames/s, not {args.learn_rate}")
    if args.frame_rate is not None and args.frame_rate < 1:
        p.error(f"--frame-rate must be a positive number of frames/s, not {args.frame_rate}")
    if args.learn_steps is not None and args.learn_steps < 0:
        p.error(f"--learn-steps must be 0 (no search) or more, not {args.learn_steps}")
    if args.macs is not None and not 1 <= args.macs <= 100_000:
        p.error("--macs must be 1..100000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = measure.Settings.quick() if args.quick else measure.Settings()
    if args.seconds:
        s = replace(s, frame_seconds=args.seconds, search_seconds=args.seconds,
                    tcp_seconds=max(1.0, args.seconds), scale_seconds=args.seconds)
    if args.scale_entries:
        s = replace(s, scale_entries=args.scale_entries,
                    scale_search_entries=min(args.scale_entries, s.scale_search_entries))
    if args.learn_rate is not None:
        s = replace(s, scale_learn_rate=args.learn_rate)
    if args.frame_rate is not None:
        s = replace(s, frame_rate=args.frame_rate)
    if args.learn_steps is not None:
        s = replace(s, scale_search_steps=args.learn_steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    skipped: dict[str, str] = {}
    systems = []
    for name in args.systems:
        why = SYSTEMS[name].available()
        if why:
            print(f"{SYSTEMS[name].label}: skipped, {why}", flush=True)
            skipped[name] = why
        else:
            systems.append(name)
    if not args.measure & SINGLE_HOST:
        systems = []
    lab_parts = [part for part in labup.PARTS if part in args.measure]
    lab_settings = labup_settings(args)
    steps = Steps(len(measurements(args.repeat, systems, args.measure))
                  + len(labup.step_names(lab_parts, args.repeat, lab_settings)), sys.stderr,
                  time.monotonic)
    log = steps.log

    def interrupted(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous_handler = signal.signal(signal.SIGTERM, interrupted)
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    runs: list[dict[str, dict[str, float]]] = []
    multihost_result: dict[str, Any] | None = None
    labup_result: dict[str, Any] | None = None
    try:
        for rep in range(args.repeat if systems else 0):
            figures: dict[str, dict[str, float]] = {}
            for name in systems:
                log(f"[run {rep + 1}/{args.repeat}] {SYSTEMS[name].label}")
                bed = Testbed()
                try:
                    bed.build()
                    system = (Vnet(bed, args.vnet_python) if name == "vnet"
                              else SYSTEMS[name](bed))
                    system.start(s.scale_entries + 64)
                    t0 = time.monotonic()
                    figures[name] = measure_system(
                        bed, system, s, args.measure, log,
                        partial(measured, steps, rep, args.repeat, name))
                    log(f"  ({time.monotonic() - t0:.0f} s)")
                    system.stop()
                finally:
                    bed.close()
            runs.append(figures)
        if lab_parts:
            log(f"[bring-up] {', '.join(lab_parts)}, {args.repeat} sitting(s) each")
            labup_result = labup.run_labup(lab_settings, lab_parts, args.repeat, log,
                                           steps.step)
        parts = [part for part in multihost.PARTS if part in args.measure]
        if parts:
            mh = multihost.Settings.quick(args.hosts) if args.quick else multihost.Settings(
                hosts=args.hosts)
            if args.macs:
                mh = replace(mh, macs=args.macs)
            if args.seconds:
                mh = replace(mh, tcp_seconds=max(1.0, args.seconds),
                             frame_seconds=args.seconds)
            log(f"[multihost] {mh.hosts} hosts, one vnetd each, one mosquitto")
            multihost_result = multihost.run_multihost(
                mh, log, parts, lambda part: steps.step(f"multihost {part}"))
    except KeyboardInterrupt:
        log("interrupted: everything the benchmark created has been removed")
        return 130
    except BenchError as err:
        log(f"vnet bench: {err}")
        return 1
    finally:
        steps.close()
        # Put the caller's handler back: a process forked later (pyroute2 forks helpers that
        # it stops with SIGTERM) must not inherit ours and raise KeyboardInterrupt.
        signal.signal(signal.SIGTERM, previous_handler)
    settings = {**s.__dict__, "quick": args.quick, "repeat": args.repeat,
                "vnet_python": args.vnet_python or sys.executable}
    result: dict[str, Any] = {"started": started, "machine": measure.machine(),
                              "settings": settings, "skipped": skipped, "runs": runs,
                              "summary": summarize(runs)}
    if labup_result is not None:
        result["bringup"] = labup_result
    if multihost_result is not None:
        result["multihost"] = multihost_result
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    table = markdown(result) if runs else ""
    if labup_result is not None:
        table += ("\n" if table else "") + labup.markdown(labup_result, result["machine"],
                                                          started)
    if multihost_result is not None:
        table += ("\n" if table else "") + multihost.markdown(
            multihost_result, result["machine"], started)
    (out / "results.md").write_text(table)
    why = chart(result, out / "results.png") if runs else "no single-host figures: no chart"
    log("")
    log(table)
    log(f"results: {out / 'results.json'}, {out / 'results.md'}"
        + (f", {out / 'results.png'}" if why is None else f" ({why})"))
    return 0
