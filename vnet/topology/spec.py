"""A small language of field specs, from which both the structural checks and the JSON Schema
are derived, so that the two cannot drift apart.

Each spec checks a plain value (reporting problems with their key path) and describes itself
as JSON Schema.  Structure lives here: types, ranges, patterns, allowed keys, required keys and
keys that only make sense for some value of a sibling (``tagged`` only with ``mode:
bridged``).  Meaning (references between networks and nodes, addresses, subnets) is the
loader's business.

``Obj.check`` returns a ``Fields``: the valid values, which keys were present but wrong, and
the defaults, so that the loader neither reports a problem twice nor trips over a bad value.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vnet.topology.report import INVALID, QUOTE_LIMIT, KeyPath, Reporter, clip, quote

JSON = dict[str, Any]


def json_type(value: Any) -> str:
    """The JSON Schema type of a plain value (``other`` for dates, bytes and the like)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "other"


_WORDS = {"boolean": "a boolean", "integer": "an integer", "number": "a number",
          "string": "a string", "null": "nothing (null)", "array": "a list",
          "object": "a mapping", "other": "a value"}


def describe(value: Any) -> str:
    kind = json_type(value)
    if kind in ("array", "object", "null"):
        return _WORDS[kind]
    if kind == "other":
        return f"{type(value).__name__} {quote(value)}"
    return f"{_WORDS[kind]} ({quote(value)})"


class Spec:
    """Base of all specs: ``check`` returns the cleaned value or ``INVALID``."""

    type_set: frozenset[str] = frozenset()
    type_text = "a value"

    def types(self) -> frozenset[str]:
        """The JSON types this spec accepts (an integer is also a number)."""
        return self.type_set

    def expected(self) -> str:
        """What the spec wants, for messages."""
        return self.type_text

    def schema(self) -> JSON:
        raise NotImplementedError

    def check(self, value: Any, path: KeyPath, rep: Reporter) -> Any:
        if value is INVALID:
            return INVALID
        if not _accepts(self, value):
            hint = ""
            raw = rep.raw.get(path)
            if raw is not None and "string" in self.types():
                hint = f': quote it ("{clip(raw)}")'
            elif value is None and self.types() & {"object", "array"}:  # `nodes:` and nothing
                hint = f": write {'{}' if 'object' in self.types() else '[]'} for none"
            rep.error(path, f"expected {self.expected()}, got {describe(value)}{hint}")
            return INVALID
        return self.check_value(value, path, rep)

    def check_value(self, value: Any, path: KeyPath, rep: Reporter) -> Any:
        return value


@dataclass(frozen=True)
class Str(Spec):
    """A string, optionally matching ``pattern`` (anchored); ``why`` explains the pattern."""

    pattern: str | None = None
    why: str = ""
    type_set = frozenset({"string"})
    type_text = "a string"

    def schema(self) -> JSON:
        out: JSON = {"type": "string"}
        if self.pattern:
            out["pattern"] = self.pattern
        return out

    def check_value(self, value: Any, path: KeyPath, rep: Reporter) -> Any:
        if self.pattern and not re.fullmatch(self.pattern, value):
            why = f" ({self.why})" if self.why else ""
            rep.error(path, f"{quote(value)} must match {self.pattern}{why}")
            return INVALID
        return value


@dataclass(frozen=True)
class Int(Spec):
    """An integer (a boolean is not one) within ``[minimum, maximum]``."""

    minimum: int | None = None
    maximum: int | None = None
    type_set = frozenset({"integer"})
    type_text = "an integer"

    def schema(self) -> JSON:
        out: JSON = {"type": "integer"}
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        return out

    def check_value(self, value: Any, path: KeyPath, rep: Reporter) -> Any:
        low = self.minimum is not None and value < self.minimum
        high = self.maximum is not None and value > self.maximum
        if low or high:
            if self.minimum is not None and self.maximum is not None:
                rep.error(path, f"{quote(value)} is out of range {self.minimum}..{self.maximum}")
            elif low:
                rep.error(path, f"{quote(value)} is too small: the minimum is {self.minimum}")
            else:
                rep.error(path, f"{quote(value)} is too large: the maximum is {self.maximum}")
            return INVALID
        return value


@dataclass(frozen=True)
class Number(Spec):
    """A finite number (integer or float) greater than ``above``."""

    above: float | None = None
    type_set = frozenset({"number"})
    type_text = "a number"

    def schema(self) -> JSON:
        out: JSON = {"type": "number"}
        if self.above is not None:
            out["exclusiveMinimum"] = self.above
        return out

    def check_value(self, value: Any, path: KeyPath, rep: Reporter) -> Any:
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            rep.error(path, f"{quote(value)} is too large to be a number vnet uses")
            return INVALID
        if not math.isfinite(number):
            rep.error(path, f"{quote(value)} is not a finite number")
            return INVALID
        if self.above is not None and number <= self.above:
            rep.error(path, f"{quote(value)} is too small: it must be greater than "
                      f"{self.above:g}")
            return INVALID
        return number


@dataclass(frozen=True)
class Bool(Spec):
    type_set = frozenset({"boolean"})
    type_text = "true or false"

    def schema(self) -> JSON:
        return {"type": "boolean"}


@dataclass(frozen=True)
class Null(Spec):
    type_set = frozenset({"null"})
    type_text = "null"

    def schema(self) -> JSON:
        return {"type": "null"}


@dataclass(frozen=True)
class Enum(Spec):
    """One of a few literal values."""

    values: tuple[str | int, ...] = ()

    def types(self) -> frozenset[str]:
        return frozenset(json_type(v) for v in self.values)

    def expected(self) -> str:
        return self.choices

    @property
    def choices(self) -> str:
        return " | ".join(str(v) for v in self.values)

    def schema(self) -> JSON:
        return {"enum": list(self.values)}

    def check_value(self, value: Any, path: KeyPath, rep: Reporter) -> Any:
        if value not in self.values:
            hint = _suggest(value, [str(v) for v in self.values]) if isinstance(
                value, str) else ""
            if len(self.values) == 1:
                rep.error(path, f"{quote(value)} is not supported: the only value is "
                          f"{self.choices}")
            else:
                rep.error(path, f"{quote(value)} is not one of {self.choices}{hint}")
            return INVALID
        return value


@dataclass(frozen=True)
class ListOf(Spec):
    """A list; invalid items stay in place as ``INVALID`` so that indices keep their meaning."""

    item: Spec = field(default_factory=Spec)
    min_items: int = 0
    max_items: int | None = None
    unique: bool = False
    type_set = frozenset({"array"})
    type_text = "a list"

    def schema(self) -> JSON:
        out: JSON = {"type": "array", "items": self.item.schema()}
        if self.min_items:
            out["minItems"] = self.min_items
        if self.max_items is not None:
            out["maxItems"] = self.max_items
        if self.unique:
            out["uniqueItems"] = True
        return out

    def check_value(self, value: Any, path: KeyPath, rep: Reporter) -> Any:
        if len(value) < self.min_items or (
                self.max_items is not None and len(value) > self.max_items):
            if self.min_items == self.max_items:
                count, last = f"exactly {self.min_items}", self.min_items
            elif self.max_items is None:
                count, last = f"at least {self.min_items}", self.min_items
            else:
                count, last = f"{self.min_items} to {self.max_items}", self.max_items
            rep.error(path, f"needs {count} item{'' if last == 1 else 's'}, got {len(value)}")
            return INVALID
        items = [self.item.check(v, (*path, i), rep) for i, v in enumerate(value)]
        if self.unique:
            seen: dict[Any, int] = {}
            for i, item in enumerate(items):
                if item is INVALID or not isinstance(item, (str, int)):
                    continue
                if item in seen:
                    rep.error((*path, i), f"{quote(item)} is listed twice (first at "
                              f"[{seen[item]}])")
                    items[i] = INVALID
                else:
                    seen[item] = i
        return items


@dataclass(frozen=True)
class MapOf(Spec):
    """A mapping from names (checked by ``key``) to values.  A badly named entry is kept
    (with an ``INVALID`` value) so that references to it do not also fail."""

    key: Str = field(default_factory=Str)
    value: Spec = field(default_factory=Spec)
    noun: str = "name"
    type_set = frozenset({"object"})
    type_text = "a mapping"

    def schema(self) -> JSON:
        return {"type": "object", "propertyNames": self.key.schema(),
                "additionalProperties": self.value.schema()}

    def check_value(self, value: Any, path: KeyPath, rep: Reporter) -> Any:
        out: dict[str, Any] = {}
        for name, item in value.items():
            child = (*path, name)
            if self.key.pattern and not re.fullmatch(self.key.pattern, name):
                why = f" ({self.key.why})" if self.key.why else ""
                rep.key_error(child, f"{self.noun} {quote(name)} must match "
                              f"{self.key.pattern}{why}")
                out[name] = INVALID
            else:
                out[name] = self.value.check(item, child, rep)
        return out


@dataclass(frozen=True)
class AnyOf(Spec):
    """One of several specs, chosen by the JSON type of the value (so messages stay precise)."""

    options: tuple[Spec, ...] = ()

    def types(self) -> frozenset[str]:
        return frozenset().union(*(o.types() for o in self.options))

    def expected(self) -> str:
        return " or ".join(o.expected() for o in self.options)

    def schema(self) -> JSON:
        return {"anyOf": [o.schema() for o in self.options]}

    def check_value(self, value: Any, path: KeyPath, rep: Reporter) -> Any:
        for option in self.options:
            if _accepts(option, value):
                return option.check(value, path, rep)
        raise AssertionError("unreachable: Spec.check checked the type")


@dataclass(frozen=True)
class Field:
    """One key of an ``Obj``.

    ``only`` = (sibling, values): the key is allowed only when the sibling has one of the
    values; ``required_with`` = (sibling, values): required when the sibling has one of them;
    ``requires``: another key that must be present too.
    """

    spec: Spec
    description: str
    required: bool = False
    default: Any = None
    only: tuple[str, tuple[str, ...]] | None = None
    required_with: tuple[str, tuple[str, ...]] | None = None
    requires: str | None = None


@dataclass(frozen=True)
class OneOfKeys:
    """Exactly one of ``keys`` must be present; ``message`` says why when none is."""

    keys: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class Obj(Spec):
    """A mapping with a fixed set of keys; ``refused`` keys are unknown too, but get their
    own message (a password where none belongs says where it does belong)."""

    fields: Mapping[str, Field] = field(default_factory=dict)
    description: str = ""
    noun: str = "mapping"
    exactly_one: tuple[OneOfKeys, ...] = ()
    refused: Mapping[str, str] = field(default_factory=dict)
    type_set = frozenset({"object"})
    type_text = "a mapping"

    def schema(self) -> JSON:
        out: JSON = {"type": "object"}
        if self.description:
            out["description"] = self.description
        props: JSON = {}
        for name, f in self.fields.items():
            prop = {**f.spec.schema(), "description": f.description}  # the field's wins
            if f.default is not None:
                prop["default"] = f.default
            props[name] = prop
        out["properties"] = props
        required = [name for name, f in self.fields.items() if f.required]
        if required:
            out["required"] = required
        out["additionalProperties"] = False
        conditions = [c for name, f in self.fields.items() for c in self._conditions(name, f)]
        conditions += [{"oneOf": [{"required": [k]} for k in group.keys]}
                       for group in self.exactly_one]
        if conditions:
            out["allOf"] = conditions
        depends = {name: [f.requires] for name, f in self.fields.items() if f.requires}
        if depends:
            out["dependentRequired"] = depends
        return out

    def _conditions(self, name: str, f: Field) -> list[JSON]:
        out: list[JSON] = []
        if f.only is not None:
            sibling, values = f.only
            test: JSON = {"properties": {sibling: {"not": {"enum": list(values)}}}}
            if self.fields[sibling].default in values:  # absent sibling means its default
                test["required"] = [sibling]
            out.append({"if": test, "then": {"not": {"required": [name]}}})
        if f.required_with is not None:
            sibling, values = f.required_with
            test = {"properties": {sibling: {"enum": list(values)}}}
            if self.fields[sibling].default not in values:
                test["required"] = [sibling]
            out.append({"if": test, "then": {"required": [name]}})
        return out

    def check_value(self, value: Any, path: KeyPath, rep: Reporter) -> Any:
        values: dict[str, Any] = {}
        bad: set[str] = set()
        for key, item in value.items():
            child = (*path, key)
            f = self.fields.get(key)
            if f is None and key in self.refused:
                rep.key_error(child, f"{key} {self.refused[key]}")
                continue
            if f is None:
                rep.key_error(child, f"unknown key {quote(key)}{_suggest(key, list(self.fields))} "
                              f"(allowed: {', '.join(sorted(self.fields))})")
                continue
            checked = f.spec.check(item, child, rep)
            if checked is INVALID:
                bad.add(key)
            else:
                values[key] = checked
        fields = Fields(self, path, values, bad)
        self._check_presence(fields, rep)
        return fields

    def _check_presence(self, fields: Fields, rep: Reporter) -> None:
        path = fields.path
        for name, f in self.fields.items():
            if f.required and name not in fields:
                rep.missing((*path, name), "required key is missing")
            if f.only is not None and name in fields:
                sibling, values = f.only
                actual = fields.get(sibling)
                if actual is not None and actual not in values:
                    rep.key_error((*path, name), f"only allowed with {sibling}: "
                                  f"{' or '.join(values)} (this {self.noun} has "
                                  f"{sibling}: {actual})")
            if f.required_with is not None and name not in fields:
                sibling, values = f.required_with
                actual = fields.get(sibling)
                if actual in values:
                    rep.missing((*path, name), f"required with {sibling}: {actual}")
            if f.requires is not None and name in fields and f.requires not in fields:
                rep.key_error((*path, name), f"only allowed together with {f.requires}")
        for group in self.exactly_one:
            present = [k for k in group.keys if k in fields]
            if not present:
                rep.missing((*path, group.keys[0]), group.message)
            for extra in present[1:]:
                rep.key_error((*path, extra), f"{extra} and {present[0]} exclude each other: "
                              f"{group.message}")


class Fields:
    """The checked keys of one mapping: ``get`` gives the valid value, the default when the
    key is absent, and None when it was present but wrong (already reported)."""

    def __init__(self, spec: Obj, path: KeyPath, values: dict[str, Any], bad: set[str]) -> None:
        self.spec, self.path, self.values, self.bad = spec, path, values, bad

    def __contains__(self, key: object) -> bool:
        return key in self.values or key in self.bad

    def ok(self, key: str) -> bool:
        return key in self.values

    def get(self, key: str) -> Any:
        if key in self.values:
            return self.values[key]
        if key in self.bad:
            return None
        return self.spec.fields[key].default

    def __repr__(self) -> str:
        return f"Fields({self.values!r}, bad={sorted(self.bad)!r})"


def _accepts(spec: Spec, value: Any) -> bool:
    kind, types = json_type(value), spec.types()
    return kind in types or (kind == "integer" and "number" in types)


def _suggest(word: str, choices: list[str]) -> str:
    """``; did you mean 'vlan'?`` for a near miss (case-insensitive), else nothing."""
    if len(word) > QUOTE_LIMIT:  # no name is this long; and difflib's work grows with it
        return ""
    lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(lower), n=1)
    return f"; did you mean {quote(lower[close[0]])}?" if close else ""
