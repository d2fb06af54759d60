"""Reading YAML into plain values while remembering the line of every key path.

``yaml.safe_load`` forgets where values came from and silently keeps the last of two equal
keys.  A user deserves ``file:line`` in every message and an error for a duplicate key, so we
compose the node tree (``yaml.compose``, safe tags only) and build the plain values ourselves:
dicts, lists and scalars, plus an index ``key path -> line`` for the reporter.

Merge keys (``<<: *base``) work as in PyYAML: explicit keys win over merged ones, earlier
merge sources over later ones.  Aliases are followed; a recursive alias is an error.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from vnet.topology.report import INVALID, KeyPath, Reporter

MAP_TAG = "tag:yaml.org,2002:map"
SEQ_TAG = "tag:yaml.org,2002:seq"
STR_TAG = "tag:yaml.org,2002:str"
MERGE_TAG = "tag:yaml.org,2002:merge"
MAX_NODES = 200_000  # after alias expansion: a "billion laughs" file stops here


class _TooLarge(Exception):
    pass


def read_yaml(text: str, rep: Reporter, *, empty_ok: bool = False) -> Any:
    """Parse ``text``; return its plain value (``INVALID`` if it cannot be read at all).

    Fills ``rep.lines`` (value lines), ``rep.key_lines`` and ``rep.raw`` and reports YAML
    problems to ``rep``.  An empty document (nothing but comments) is a problem, unless
    ``empty_ok``: then it reads as an empty mapping (a config file whose defaults all hold).
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else 1
        message = err.problem or "cannot parse"
        if err.context and err.context_mark is not None:
            where = f"line {err.context_mark.line + 1}"
            if err.context.startswith("while"):  # "while parsing a flow mapping"
                message += f" ({err.context} at {where})"
            else:  # "expected a single document in the stream"
                message = f"{err.context} ({where}), {message}"
        rep.at(line, (), f"invalid YAML: {message}")
        return INVALID
    except yaml.YAMLError as err:
        rep.at(1, (), f"invalid YAML: {err}")
        return INVALID
    if root is None:
        if empty_ok:
            return {}
        rep.at(1, (), "the file is empty: expected a mapping with name, networks and nodes")
        return INVALID
    walker = _Walker(rep)
    try:
        return walker.value(root, (), root.start_mark.line + 1)
    except _TooLarge:
        rep.at(1, (), f"the document has more than {MAX_NODES} values after expanding "
               "aliases: refusing to read it")
        return INVALID


class _Walker:
    """Turns composed nodes into plain values, recording lines in the reporter."""

    def __init__(self, rep: Reporter) -> None:
        self.rep = rep
        self.lines: dict[KeyPath, int] = {}
        self.key_lines: dict[KeyPath, int] = {}
        self.raw: dict[KeyPath, str] = {}
        rep.lines, rep.key_lines, rep.raw = self.lines, self.key_lines, self.raw
        self.constructor = SafeConstructor()
        self.stack: set[int] = set()  # ids of the collections being walked: alias cycles
        self.count = 0

    def value(self, node: Node, path: KeyPath, line: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooLarge
        self.lines.setdefault(path, line)
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if id(node) in self.stack:
            self.rep.at(node.start_mark.line + 1, path, "recursive alias: a value contains itself")
            return INVALID
        self.stack.add(id(node))
        try:
            if isinstance(node, MappingNode) and node.tag == MAP_TAG:
                return self.mapping(node, path)
            if isinstance(node, SequenceNode) and node.tag == SEQ_TAG:
                return [self.value(item, (*path, i), item.start_mark.line + 1)
                        for i, item in enumerate(node.value)]
            self.rep.at(node.start_mark.line + 1, path, f"unsupported YAML tag {node.tag}")
            return INVALID
        finally:
            self.stack.discard(id(node))

    def scalar(self, node: ScalarNode, path: KeyPath) -> Any:
        try:
            value = self.constructor.construct_object(node)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err)
            self.rep.at(node.start_mark.line + 1, path, f"cannot read this value: {problem}")
            return INVALID
        if node.style is None and not isinstance(value, str):
            self.raw[path] = node.value  # for "quote it" hints: YAML 1.1 reads 52:54:.. as int
        return value

    def mapping(self, node: MappingNode, path: KeyPath) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.key(key_node, path)
            if key is None:
                continue
            key_line = key_node.start_mark.line + 1
            if key in first_line:
                self.rep.at(key_line, (*path, key),
                            f"duplicate key '{key}' (first at line {first_line[key]}): "
                            "YAML would silently keep only the last one; remove one")
                continue
            first_line[key] = key_line
            result[key] = self.entry(key, key_line, value_node, path)
        for source in self.merge_sources(node, path):
            for key_node, value_node in self.flatten(source):
                key = self.key(key_node, path)
                if key is not None and key not in result:
                    result[key] = self.entry(key, key_node.start_mark.line + 1, value_node, path)
        return result

    def entry(self, key: str, key_line: int, value_node: Node, path: KeyPath) -> Any:
        child = (*path, key)
        self.key_lines[child] = key_line
        # A block collection starts on the line after its key: point at the key instead.
        line = key_line if not isinstance(value_node, ScalarNode) else (
            value_node.start_mark.line + 1)
        return self.value(value_node, child, line)

    def key(self, key_node: Node, path: KeyPath) -> str | None:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, ScalarNode):
            self.rep.at(line, path, "a key must be a plain string, not a list or mapping")
            return None
        key = self.scalar(key_node, (*path, key_node.value))
        if key is INVALID:
            return None
        if not isinstance(key, str):
            self.rep.at(line, (*path, key_node.value),
                        f"key {key_node.value!r} is read as {type(key).__name__}, not as a "
                        f"name: quote it (\"{key_node.value}\")")
            return None
        return key

    def merge_sources(self, node: MappingNode, path: KeyPath) -> list[MappingNode]:
        sources: list[MappingNode] = []
        for key_node, value_node in node.value:
            if key_node.tag != MERGE_TAG:
                continue
            items = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for item in items:
                if isinstance(item, MappingNode) and item.tag == MAP_TAG:
                    sources.append(item)
                else:
                    self.rep.at(item.start_mark.line + 1, path,
                                "a merge key (<<) takes a mapping or a list of mappings")
        return sources

    def flatten(self, node: MappingNode, depth: int = 0) -> list[tuple[Node, Node]]:
        """The effective (key, value) pairs of a merge source, its own merges included."""
        pairs = [(k, v) for k, v in node.value if k.tag != MERGE_TAG]
        if depth < 32:  # deeper chains are cycles in practice
            for source in self.merge_sources(node, ()):
                pairs.extend(self.flatten(source, depth + 1))
        return pairs
