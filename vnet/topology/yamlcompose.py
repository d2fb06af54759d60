"""Composing YAML into a node tree with every kind of work bounded.

Topology files come from users and, through vnetd's API, from anyone allowed to send an
``up``; vnetd's config is YAML too.  PyYAML's own ``compose`` has no bound: its composer
recurses once per level (``RecursionError`` at a few hundred levels) and its pure-Python
scanner takes seconds per megabyte.  So we compose ourselves, from the parser's event stream
(libyaml's when PyYAML has it: ten times faster), in a loop with an explicit stack, counting
as we go: the document's size (checked before parsing), its nodes and its nesting depth.  What
aliases and merge keys expand to is counted by the reader (``yamlsource``), which walks the
tree; the same ``YamlLimits`` bound both.

The nodes are slim (kind, tag, value, line, style): a megabyte of YAML makes a few hundred
thousand of them, and yaml's own node classes with two ``Mark`` objects each take most of
the time in the garbage collector.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import yaml
from yaml import events
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from vnet.topology.report import KeyPath, clip

LIBYAML: bool = yaml.__with_libyaml__
"""Whether this PyYAML has libyaml: then its parser reads (its messages differ in words)."""
EventSource: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = (
    yaml.CSafeLoader if LIBYAML else yaml.SafeLoader)

Kind = Literal["scalar", "seq", "map"]


@dataclass(frozen=True)
class YamlLimits:
    """What vnet reads of one YAML document.  A topology of a thousand nodes is about 100 KB,
    20,000 YAML nodes and 6 levels deep: the bounds are far above any real file, and low
    enough that reading the largest document they allow takes about a second."""

    max_bytes: int = 2**20
    max_nodes: int = 100_000  # keys, values and collections, as written
    max_values: int = 200_000  # values after aliases and merge keys are expanded
    max_depth: int = 32  # levels of collections, also counting what aliases insert


LIMITS = YamlLimits()

HINT = "is this the right file?"


class Refused(Exception):
    """The document is not read: ``message`` says why and how to fix it, at ``line`` (and
    ``path``, the key path being read, when aliases have taken the reader away from it)."""

    def __init__(self, line: int, message: str, path: KeyPath = ()) -> None:
        super().__init__(message)
        self.line, self.message, self.path = line, message, path


class Node:
    """One composed node; ``value`` is the text of a scalar, the items of a sequence, or
    keys and values alternating in a mapping (``key0, value0, key1, ...``)."""

    __slots__ = ("kind", "line", "style", "tag", "value")

    def __init__(self, kind: Kind, tag: str, value: str | list[Node], line: int,
                 style: str | None = None) -> None:
        self.kind, self.tag, self.value, self.line, self.style = kind, tag, value, line, style

    @property
    def items(self) -> list[Node]:
        """The items of a sequence, or the alternating keys and values of a mapping."""
        assert isinstance(self.value, list)
        return self.value

    @property
    def text(self) -> str:
        assert isinstance(self.value, str)
        return self.value

    def pairs(self) -> list[tuple[Node, Node]]:
        """A mapping's (key, value) pairs, in file order."""
        items = self.items
        return list(zip(items[::2], items[1::2], strict=True))


def too_large(size: int, limits: YamlLimits = LIMITS, *, exact: bool = True) -> str | None:
    """The problem with a document of ``size`` bytes (at least, unless ``exact``), or None if
    it may be read."""
    if size <= limits.max_bytes:
        return None
    size_text = f"{size:,} bytes" if exact else f"more than {limits.max_bytes:,} bytes"
    return (f"the file is {size_text}: vnet reads YAML files of at most "
            f"{limits.max_bytes:,} bytes (a topology of a thousand nodes takes about 100 KB); "
            f"{HINT}")


def too_deep(limits: YamlLimits = LIMITS, *, aliases: bool = False) -> str:
    inserted = " with what aliases insert" if aliases else ""
    return (f"nested more than {limits.max_depth} levels deep{inserted}: vnet reads no deeper "
            f"(a topology needs 6 levels); {HINT}")


def compose(data: bytes, limits: YamlLimits = LIMITS) -> Node | None:
    """The root node of the one document in ``data`` (UTF-8), None for an empty stream.

    Raises ``yaml.YAMLError`` for what the parser refuses and ``Refused`` for what we do: a
    limit, an undefined alias, a duplicate anchor, a second document.
    """
    problem = too_large(len(data), limits)
    if problem is not None:
        raise Refused(1, problem)
    parser = EventSource(data)
    try:
        return _Composer(parser, limits).document()
    finally:
        parser.dispose()


class _Composer:
    def __init__(self, parser: yaml.SafeLoader | yaml.CSafeLoader, limits: YamlLimits) -> None:
        self.parser, self.limits = parser, limits
        self.resolve = cast(Callable[[type, str | None, Any], str],
                            yaml.resolver.Resolver().resolve)
        self.anchors: dict[str, Node] = {}
        self.count = 0

    def document(self) -> Node | None:
        root: Node | None = None
        stack: list[Node] = []
        documents = 0
        while True:
            event = self.parser.get_event()
            if event is None or isinstance(event, events.StreamEndEvent):
                return root
            if isinstance(event, events.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    first = root.line if root is not None else 1
                    raise Refused(_line(event), "invalid YAML: expected a single document in "
                                  f"the stream (line {first}), but found another document")
                continue
            if isinstance(event, events.CollectionEndEvent):
                stack.pop()
                continue
            if not isinstance(event, events.NodeEvent):
                continue  # stream start, document end
            node = self.node(event)
            if stack:
                stack[-1].items.append(node)
            else:
                root = node
            if isinstance(event, events.CollectionStartEvent):
                stack.append(node)
                if len(stack) > self.limits.max_depth:
                    raise Refused(node.line, too_deep(self.limits))

    def node(self, event: events.NodeEvent) -> Node:
        line = _line(event)
        self.count += 1
        if self.count > self.limits.max_nodes:
            raise Refused(line, f"more than {self.limits.max_nodes:,} YAML nodes (keys, "
                          "values and collections) by this line: vnet reads no more (a "
                          f"topology of a thousand nodes has about 20,000); {HINT}")
        anchor = event.anchor
        if isinstance(event, events.AliasEvent):
            target = self.anchors.get(anchor or "")
            if target is None:
                raise Refused(line, f"invalid YAML: undefined alias *{clip(anchor or '')}: "
                              "define the anchor (&NAME) before using it")
            return target
        if isinstance(event, events.ScalarEvent):
            tag = event.tag
            if tag is None or tag == "!":
                tag = self.resolve(ScalarNode, event.value, event.implicit)
            node = Node("scalar", tag, event.value, line, event.style or None)  # libyaml: ''
        else:
            assert isinstance(event, events.CollectionStartEvent)
            seq = isinstance(event, events.SequenceStartEvent)
            tag = event.tag
            if tag is None or tag == "!":
                tag = self.resolve(SequenceNode if seq else MappingNode, None, event.implicit)
            node = Node("seq" if seq else "map", tag, [], line)
        if anchor is not None:
            first = self.anchors.get(anchor)
            if first is not None:
                raise Refused(line, f"invalid YAML: duplicate anchor &{clip(anchor)} (first at "
                              f"line {first.line}): give each anchor its own name")
            self.anchors[anchor] = node
        return node


def _line(event: events.Event) -> int:
    mark = event.start_mark
    return mark.line + 1 if mark is not None else 1
