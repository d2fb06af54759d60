"""Reading YAML into plain values while remembering the line of every key path.

``yaml.safe_load`` forgets where values came from and silently keeps the last of two equal
keys.  A user deserves ``file:line`` in every message and an error for a duplicate key, so we
compose the node tree (``yamlcompose``: bounded, safe tags only) and build the plain values
ourselves: dicts, lists and scalars, plus an index ``key path -> line`` for the reporter.

Merge keys (``<<: *base``) work as in PyYAML: explicit keys win over merged ones, earlier
merge sources over later ones.  Aliases are followed; a recursive alias is an error.  What
aliases and merges expand to is counted, every value and every merged key, against
``YamlLimits.max_values`` (a "billion laughs" stops there), and so is the depth they reach.
Topology files and vnetd's config are both read here, under the same limits.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import ScalarNode

from vnet.topology.report import INVALID, KeyPath, Reporter, clip, quote
from vnet.topology.yamlcompose import (
    LIMITS,
    Node,
    Refused,
    YamlLimits,
    compose,
    too_deep,
    too_large,
)

MAP_TAG = "tag:yaml.org,2002:map"
SEQ_TAG = "tag:yaml.org,2002:seq"
INT_TAG = "tag:yaml.org,2002:int"
MERGE_TAG = "tag:yaml.org,2002:merge"


class FileTooLarge(ValueError):
    """A file longer than ``YamlLimits.max_bytes``: not read past the limit."""


def read_file(file: Path, limits: YamlLimits = LIMITS) -> str:
    """The UTF-8 text of ``file``, reading no more than the limit allows (a huge file, or
    /dev/zero, must not fill the memory before it is refused).  Raises ``OSError``,
    ``UnicodeDecodeError`` or ``FileTooLarge`` (its message is for the user)."""
    with file.open("rb") as stream:
        data = stream.read(limits.max_bytes + 1)
        info = os.fstat(stream.fileno())
    regular = stat.S_ISREG(info.st_mode)  # else its size is unknown: a pipe, /dev/zero
    problem = too_large(max(len(data), info.st_size if regular else 0), limits, exact=regular)
    if problem is not None:
        raise FileTooLarge(problem)
    return data.decode("utf-8")


def read_yaml(text: str, rep: Reporter, *, empty_ok: bool = False,
              limits: YamlLimits = LIMITS) -> Any:
    """Parse ``text``; return its plain value (``INVALID`` if it cannot be read at all).

    Fills ``rep.lines`` (value lines), ``rep.key_lines`` and ``rep.raw`` and reports YAML
    problems to ``rep``.  An empty document (nothing but comments) is a problem, unless
    ``empty_ok``: then it reads as an empty mapping (a config file whose defaults all hold).
    """
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate, from a JSON request say
        line = text.count("\n", 0, err.start) + 1
        column = err.start - text.rfind("\n", 0, err.start)
        rep.at(line, (), f"not UTF-8 text: a lone surrogate (U+{ord(text[err.start]):04X}) at "
               f"column {column}")
        return INVALID
    try:
        root = compose(data, limits)
    except Refused as err:
        rep.at(err.line, (), err.message)
        return INVALID
    except yaml.YAMLError as err:
        line, message = _parse_error(err, text)
        rep.at(line, (), f"invalid YAML: {message}" if message else too_deep(limits))
        return INVALID
    if root is None:
        if empty_ok:
            return {}
        rep.at(1, (), "the file is empty: expected a mapping with name, networks and nodes")
        return INVALID
    walker = _Walker(rep, limits)
    try:
        return walker.value(root, (), root.line)
    except Refused as err:
        rep.at(err.line, err.path, err.message)
        return INVALID


def _parse_error(err: yaml.YAMLError, text: str) -> tuple[int, str | None]:
    """The line and the words of a parser's error (libyaml's or PyYAML's); None for words
    that are no YAML problem but one of our limits."""
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else 1
        if err.problem and "maximum nesting depth" in err.problem:  # libyaml's own limit
            return line, None
        message = err.problem or "cannot parse"
        if err.context and err.context_mark is not None:
            where = f"line {err.context_mark.line + 1}"
            message += f" ({err.context} at {where})"
        return line, message
    if isinstance(err, yaml.reader.ReaderError):  # a control character
        bad = yaml.reader.Reader.NON_PRINTABLE.search(text)
        line = text.count("\n", 0, bad.start()) + 1 if bad is not None else 1
        if isinstance(err.character, int):
            return line, (f"character U+{err.character:04X} is not allowed (a control "
                          "character): remove it")
    return 1, clip(str(err))


class _Walker:
    """Turns composed nodes into plain values, recording lines in the reporter and counting
    the work that aliases and merge keys multiply."""

    def __init__(self, rep: Reporter, limits: YamlLimits) -> None:
        self.rep, self.limits = rep, limits
        self.lines: dict[KeyPath, int] = {}
        self.key_lines: dict[KeyPath, int] = {}
        self.raw: dict[KeyPath, str] = {}
        rep.lines, rep.key_lines, rep.raw = self.lines, self.key_lines, self.raw
        self.constructor = SafeConstructor()
        self.stack: set[int] = set()  # ids of the collections being walked: alias cycles
        self.merges_checked: set[int] = set()  # mappings whose << values were checked
        self.work = 0

    def spend(self, line: int, path: KeyPath) -> None:
        """One more value or merged key; refuse the document past the limit."""
        self.work += 1
        if self.work > self.limits.max_values:
            raise Refused(line, f"aliases and merge keys (<<) expand the document to more than "
                          f"{self.limits.max_values:,} values by here: vnet reads no more (an "
                          "alias bomb?); write the values out, or use fewer aliases", path)

    def value(self, node: Node, path: KeyPath, line: int) -> Any:
        self.spend(node.line, path)
        self.lines.setdefault(path, line)
        if node.kind == "scalar":
            return self.scalar(node, path)
        if len(path) >= self.limits.max_depth:  # only aliases take a walk this deep
            raise Refused(node.line, too_deep(self.limits, aliases=True), path)
        if id(node) in self.stack:
            self.rep.at(node.line, path, "recursive alias: a value contains itself")
            return INVALID
        self.stack.add(id(node))
        try:
            if node.kind == "map" and node.tag == MAP_TAG:
                return self.mapping(node, path)
            if node.kind == "seq" and node.tag == SEQ_TAG:
                return [self.value(item, (*path, i), item.line)
                        for i, item in enumerate(node.items)]
            self.rep.at(node.line, path, f"unsupported YAML tag {clip(node.tag)}")
            return INVALID
        finally:
            self.stack.discard(id(node))

    def scalar(self, node: Node, path: KeyPath) -> Any:
        yaml_node = ScalarNode(node.tag, node.value, style=node.style)
        try:
            value = self.constructor.construct_object(yaml_node)
        except (yaml.YAMLError, ValueError, TypeError, AttributeError, KeyError, OverflowError):
            # an unknown tag; a value that its tag (!!float x) forces on a constructor that
            # fails on it, in any of these ways; int() of more than 4,300 digits
            self.rep.at(node.line, path, self.unreadable(node))
            return INVALID
        finally:
            self.constructor.constructed_objects.clear()  # one node each: nothing to share
        if node.style is None and not isinstance(value, str):
            self.raw[path] = node.text  # for "quote it" hints: YAML 1.1 reads 52:54:.. as int
        return value

    @staticmethod
    def unreadable(node: Node) -> str:
        digits = sum(c.isdigit() for c in node.text)
        if node.tag == INT_TAG and digits > sys.get_int_max_str_digits():
            return (f"a number of {digits:,} digits is too long to read (at most "
                    f"{sys.get_int_max_str_digits():,}), and far larger than any setting takes")
        if node.tag not in SafeConstructor.yaml_constructors:
            return ("cannot read this value: could not determine a constructor for the tag "
                    f"{quote(node.tag)}")
        kind = node.tag.removeprefix("tag:yaml.org,2002:")
        return f"cannot read this value: {quote(node.text)} is not a valid {kind}"

    def mapping(self, node: Node, path: KeyPath) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.pairs():
            if key_node.tag == MERGE_TAG:
                continue
            key = self.key(key_node, path)
            if key is None:
                continue
            if key in first_line:
                self.rep.at(key_node.line, (*path, key),
                            f"duplicate key {quote(key)} (first at line {first_line[key]}): "
                            "YAML would silently keep only the last one; remove one")
                continue
            first_line[key] = key_node.line
            result[key] = self.entry(key, key_node.line, value_node, path)
        for key_node, value_node in self.merged(node, path):
            key = self.key(key_node, path)
            if key is not None and key not in result:
                result[key] = self.entry(key, key_node.line, value_node, path)
        return result

    def entry(self, key: str, key_line: int, value_node: Node, path: KeyPath) -> Any:
        child = (*path, key)
        self.key_lines[child] = key_line
        # A block collection starts on the line after its key: point at the key instead.
        line = key_line if value_node.kind != "scalar" else value_node.line
        return self.value(value_node, child, line)

    def key(self, key_node: Node, path: KeyPath) -> str | None:
        if key_node.kind != "scalar":
            self.rep.at(key_node.line, path, "a key must be a plain string, not a list or "
                        "mapping")
            return None
        key = self.scalar(key_node, (*path, key_node.text))
        if key is INVALID:
            return None
        if not isinstance(key, str):
            self.rep.at(key_node.line, (*path, key_node.text),
                        f"key {quote(key_node.text)} is read as {type(key).__name__}, not as "
                        f"a name: quote it (\"{clip(key_node.text)}\")")
            return None
        return key

    def merged(self, node: Node, path: KeyPath) -> list[tuple[Node, Node]]:
        """The (key, value) pairs that ``node``'s merge keys bring, in precedence order: its
        sources depth first, each source's own keys before its sources'.  A source met again
        brings nothing new (its keys are all taken by then), so each is visited once: a chain
        of ``<<: [*m, *m]`` costs its length, not two to the power of it."""
        pairs: list[tuple[Node, Node]] = []
        visited: set[int] = {id(node)}
        pending = list(reversed(self.merge_sources(node, path)))
        while pending:
            source = pending.pop()
            if id(source) in visited:
                continue
            visited.add(id(source))
            for key_node, value_node in source.pairs():
                self.spend(key_node.line, path)
                if key_node.tag != MERGE_TAG:
                    pairs.append((key_node, value_node))
            pending.extend(reversed(self.merge_sources(source, ())))
        return pairs

    def merge_sources(self, node: Node, path: KeyPath) -> list[Node]:
        """The mappings that ``node``'s ``<<`` keys name; a wrong one is reported once."""
        sources: list[Node] = []
        report = id(node) not in self.merges_checked
        self.merges_checked.add(id(node))
        for key_node, value_node in node.pairs():
            if key_node.tag != MERGE_TAG:
                continue
            items = value_node.items if value_node.kind == "seq" else [value_node]
            for item in items:
                self.spend(item.line, path)
                if item.kind == "map" and item.tag == MAP_TAG:
                    sources.append(item)
                elif report:
                    self.rep.at(item.line, path, "a merge key (<<) takes a mapping or a list "
                                "of mappings")
        return sources
