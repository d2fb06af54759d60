"""``vnet graph`` and ``vnet test``: the picture of a lab, and its expectations checked live.

Registered by ``vnet.cli.build_parser`` (``add_commands``); kept apart so that the CLI module
stays readable.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vnet.cli_progress import ProgressLine, counted
from vnet.errors import DaemonError, VnetError

# The topology's and the probes' modules are imported by the commands that use them: the
# parser is built by every vnet command (``vnet up`` included), and they are ~0.1 s of imports.
if TYPE_CHECKING:
    from vnet.cli import Client
    from vnet.observe import graph

DOT_TIMEOUT = 60.0
SERVE_ADDRESS = "127.0.0.1:8470"   # for --help; vnet.observe.live.DEFAULT_ADDRESS is it


def cmd_test(client: Client, args: argparse.Namespace) -> int:
    """Check every expectation of FILE against its live lab: a table (or --json), JUnit XML
    with --junit; exit 1 when any fails."""
    from vnet.cli import format_table
    from vnet.observe import results
    from vnet.observe.plan import plan
    from vnet.observe.probes import live_ipv4, run_all
    from vnet.topology import load_topology

    topology = load_topology(args.file)
    if not topology.expect:
        raise VnetError(f"{args.file} has no expect: block: nothing to test (see the "
                        f"topology format's expect section)")
    lab = _live_lab(client, topology.name, args.file)
    probes = [plan(e, topology, lab, live_ipv4) for e in topology.expect]
    progress = ProgressLine(sys.stderr, f"test {topology.name}")   # a terminal's only
    try:
        outcomes = run_all(probes, lambda done, total: progress.show(
            counted("expectations checked", done, total)))
    finally:
        progress.close()
    if args.junit:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        _write(args.junit, results.junit_xml(topology.name, outcomes, stamp))
    if args.json:
        print(json.dumps(results.to_json(topology.name, outcomes), indent=2))
    else:
        print(format_table(results.TABLE_HEADER, results.table_rows(outcomes)))
        print(f"\nlab {topology.name}: {results.summary(outcomes)}")
    return results.exit_code(outcomes)


def _live_lab(client: Client, name: str, file: str) -> dict[str, Any]:
    labs = [lab for lab in client.call("status")["labs"] if lab["name"] == name]
    if not labs:
        raise DaemonError(f"lab {name} is not up: bring it up with 'vnet up {file}'")
    lab: dict[str, Any] = labs[0]
    return lab


def _write(path: str, text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as err:
        raise VnetError(f"cannot write {path}: {err.strerror or err}") from None


def cmd_graph(client: Client, args: argparse.Namespace) -> int:
    """The picture of a topology file or of a live lab (with node states): DOT text, SVG or
    PNG by ``-o``'s suffix; DOT on stdout without ``-o``; --json: the graph's parts;
    --serve: a live page of it."""
    from vnet.observe import graph

    args.source, args.serve = _source_and_address(args.source, args.serve)
    if args.serve is not None:
        return _serve(client, args)
    picture = _picture(client, args.source)
    if args.json:
        print(json.dumps(graph.to_json(picture), indent=2))
        return 0
    dot = graph.to_dot(picture)
    if args.output is None:
        print(dot, end="")
        return 0
    suffix = Path(args.output).suffix.lower().lstrip(".")
    if suffix == "dot":
        _write(args.output, dot)
    elif suffix in ("svg", "png"):
        _write_bytes(args.output, render(dot, suffix))
    else:
        raise VnetError(f"cannot tell the format of {args.output}: name it .svg, .png or .dot")
    print(f"{args.output}: {picture.name} ({len(picture.nodes)} nodes, "
          f"{len(picture.networks)} networks)")
    return 0


def _source_and_address(source: str | None, serve: str | None) -> tuple[str, str | None]:
    """``vnet graph --serve LAB``: argparse hands LAB to --serve, whose ADDR is optional; a
    value that is not an address is the FILE|LAB the command was missing."""
    if source is not None:
        return source, serve
    if serve:
        from vnet.observe import live

        try:
            live.parse_address(serve)
        except VnetError:
            return serve, ""
    raise VnetError("vnet graph needs a topology FILE or a LAB name: e.g. vnet graph demo "
                    "--serve, or vnet graph topologies/demo.yaml -o demo.svg")


def _serve(client: Client, args: argparse.Namespace) -> int:
    """``vnet graph FILE|LAB --serve [ADDR]``: the picture as a page with live node states
    and port counters, until Ctrl-C (``vnet.observe.live``, ``vnet.observe.server``)."""
    if args.output is not None or args.json:
        raise VnetError("--serve shows the picture on a web page: leave out -o and --json "
                        "(or --serve, to write the picture to a file)")
    from vnet.observe import graph, live, server  # only for --serve: the CLI starts faster

    bound = live.parse_address(args.serve or live.DEFAULT_ADDRESS)
    first = _picture(client, args.source)    # the lab or file must be there to begin with
    render(graph.to_dot(first), "svg")       # and graphviz too
    lab_name = first.name
    if first.live:

        def picture(lab: Mapping[str, Any] | None) -> graph.LabGraph | None:
            return graph.from_status(lab) if lab is not None else None
    else:

        def picture(lab: Mapping[str, Any] | None) -> graph.LabGraph | None:
            return live.with_states(first, lab)

    poller = server.Poller(lambda: dict(client.call("status")))
    content = server.LivePage(lab_name, poller, picture,
                              lambda dot: render(dot, "svg").decode())

    def announce(url: str) -> None:
        print(f"serving lab {lab_name} on {url} (read-only; Ctrl-C stops)", flush=True)

    server.serve(bound, content, announce)
    print("stopped", flush=True)
    return 0


def _picture(client: Client, source: str) -> graph.LabGraph:
    """A file if SOURCE names one (or looks like a path), else a lab that vnetd runs."""
    from vnet.observe import graph
    from vnet.topology import load_topology

    if Path(source).exists() or "/" in source or source.endswith((".yaml", ".yml")):
        return graph.from_topology(load_topology(source))
    labs = [lab for lab in client.call("status")["labs"] if lab["name"] == source]
    if not labs:
        raise DaemonError(f"no file {source} and no lab {source} is up (vnet status lists "
                          f"the labs that are)")
    return graph.from_status(labs[0])


def render(dot: str, fmt: str) -> bytes:
    """DOT text through graphviz's ``dot`` into SVG or PNG bytes."""
    if shutil.which("dot") is None:
        raise VnetError("graphviz's dot is not installed: install it (apt-get install "
                        "graphviz), or write DOT text with -o FILE.dot")
    try:
        done = subprocess.run(["dot", f"-T{fmt}"], input=dot.encode(), capture_output=True,
                              timeout=DOT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise VnetError(f"dot did not finish within {DOT_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        raise VnetError(f"dot failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def _write_bytes(path: str, data: bytes) -> None:
    try:
        Path(path).write_bytes(data)
    except OSError as err:
        raise VnetError(f"cannot write {path}: {err.strerror or err}") from None


def add_commands(sub: Any) -> None:
    """Add ``graph`` and ``test`` to the CLI's subcommands."""
    p = sub.add_parser("graph", help="a picture of a topology file or a live lab (graphviz)")
    p.add_argument("source", metavar="FILE|LAB", nargs="?")
    p.add_argument("-o", "--output", metavar="OUT", help="write OUT.svg, OUT.png or OUT.dot "
                   "(default: DOT text on stdout)")
    p.add_argument("--json", action="store_true", help="the graph's parts as JSON")
    p.add_argument("--serve", nargs="?", const="", metavar="ADDR",
                   help="serve the picture as a web page with live node states and port "
                   f"counters, read-only, on ADDR (HOST:PORT, default {SERVE_ADDRESS})")
    p.set_defaults(func=cmd_graph)
    p = sub.add_parser("test", help="check a file's expect: block against its live lab")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--junit", metavar="XML", help="also write a JUnit XML report")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_test)

