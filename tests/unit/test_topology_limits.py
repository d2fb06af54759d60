"""The bounds on reading YAML (topology files and vnetd's config): size, nodes, depth, what
aliases and merge keys expand to; and values that Python cannot turn into text.

Hostile documents are refused by counting work, so each test asserts the refusal and its
message, never a time.  The limits are checked with both parsers: libyaml's (used when
PyYAML has it) and PyYAML's own (the fallback).
"""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
import yaml

from vnet.daemon.config import ConfigError, load_config, parse_config
from vnet.errors import TopologyError
from vnet.topology import load_topology, parse_topology
from vnet.topology import yamlcompose as yc
from vnet.topology.report import INVALID, Reporter
from vnet.topology.yamlcompose import LIBYAML, LIMITS, YamlLimits
from vnet.topology.yamlsource import read_yaml

PARSERS = ["libyaml", "python"] if LIBYAML else ["python"]


@pytest.fixture(params=PARSERS, autouse=True)
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with each parser that this PyYAML has."""
    name: str = request.param
    monkeypatch.setattr(yc, "EventSource",
                        yaml.CSafeLoader if name == "libyaml" else yaml.SafeLoader)
    return name


def read(text: str, limits: YamlLimits = LIMITS) -> tuple[Any, list[str]]:
    rep = Reporter("t.yaml")
    value = read_yaml(text, rep, limits=limits)
    return value, rep.problems


def problems(text: str) -> list[str]:
    with pytest.raises(TopologyError) as info:
        parse_topology(text, source="t.yaml")
    return info.value.problems


TOO_BIG = ("the file is {size:,} bytes: vnet reads YAML files of at most 1,048,576 bytes (a "
           "topology of a thousand nodes takes about 100 KB); is this the right file?")
TOO_DEEP = ("nested more than 32 levels deep: vnet reads no deeper (a topology needs 6 levels); "
            "is this the right file?")


# -- size -------------------------------------------------------------------------------------

def test_a_document_over_the_size_limit_is_refused_before_parsing() -> None:
    text = "name: x\nnetworks: {}\nnodes: {}\n# " + "x" * LIMITS.max_bytes + "\n"
    assert problems(text) == ["t.yaml:1: " + TOO_BIG.format(size=len(text))]


def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    text = "name: x\nnetworks: {}\nnodes: {}\n# " + "é" * (LIMITS.max_bytes // 2) + "\n"
    assert len(text) < LIMITS.max_bytes
    assert problems(text) == ["t.yaml:1: " + TOO_BIG.format(size=len(text.encode()))]


def test_a_huge_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as out:  # sparse: 5 GiB that take no disk and must not be read
        out.truncate(5 * 2**30)
    with pytest.raises(TopologyError) as info:
        load_topology(big)
    assert info.value.problems == [f"{big}:1: " + TOO_BIG.format(size=5 * 2**30)]
    with pytest.raises(ConfigError) as config_info:
        load_config(big, hostname="h1")
    assert config_info.value.problems == info.value.problems


def test_an_endless_file_is_refused() -> None:
    with pytest.raises(TopologyError) as info:
        load_topology("/dev/zero")
    assert info.value.problems == [
        "/dev/zero:1: the file is more than 1,048,576 bytes: vnet reads YAML files of at most "
        "1,048,576 bytes (a topology of a thousand nodes takes about 100 KB); is this the right "
        "file?"]


def test_vnetd_config_has_the_same_limits() -> None:
    text = "log_level: info\n" + "#" * LIMITS.max_bytes + "\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml", hostname="h1")
    assert info.value.problems == ["c.yaml:1: " + TOO_BIG.format(size=len(text))]
    deep = "access: " + "[" * 40 + "]" * 40 + "\n"
    with pytest.raises(ConfigError) as info:
        parse_config(deep, "c.yaml", hostname="h1")
    assert info.value.problems == ["c.yaml:1: " + TOO_DEEP]


# -- nodes ------------------------------------------------------------------------------------

def test_too_many_nodes_are_refused_at_the_line_that_passes_the_limit() -> None:
    # 5 nodes on the first three lines, then one scalar per line of a block sequence
    lines = ["name: x", "networks: {}", "nodes: {}", "z:"]
    lines += ["- a"] * LIMITS.max_nodes
    value, found = read("\n".join(lines) + "\n")
    assert value is INVALID
    # root map 1, three keys and values 6, z and its list 2: the 100,001st node is item 99,992
    assert found == [f"t.yaml:{4 + 99_992}: more than 100,000 YAML nodes (keys, values and "
                     "collections) by this line: vnet reads no more (a topology of a thousand "
                     "nodes has about 20,000); is this the right file?"]


def test_a_small_file_of_80_thousand_flow_nodes_is_read() -> None:
    value, found = read("z: [" + ", ".join(["a"] * 80_000) + "]\n")
    assert found == [] and len(value["z"]) == 80_000


# -- depth ------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [33, 500, 5000, 200_000])
def test_deep_nesting_is_an_error_at_its_line(depth: int) -> None:
    text = "name: x\nnetworks: {}\nnodes: {}\nz: " + "[" * depth + "]" * depth + "\n"
    assert problems(text) == ["t.yaml:4: " + TOO_DEEP]


def test_deep_block_nesting_is_an_error_at_the_line_of_the_level_too_many() -> None:
    lines = [" " * i + f"k{i}:" for i in range(40)]
    _, found = read("\n".join(lines) + " x\n")
    assert found == ["t.yaml:33: " + TOO_DEEP]  # the 33rd mapping starts with k32


def test_32_levels_are_read() -> None:
    value, found = read("z: " + "[" * 31 + "]" * 31 + "\n")
    assert found == []
    for _ in range(31):
        value = value["z"] if isinstance(value, dict) else value[0]
    assert value == []


def test_depth_that_aliases_build_is_counted() -> None:
    """Each anchor nests the one before: 10 levels written, 160 after expansion."""
    lines = ["a0: &a0 " + "[" * 15 + "]" * 15]
    lines += [f"a{i}: &a{i} " + "[" * 15 + f"*a{i - 1}" + "]" * 15 for i in range(1, 10)]
    value, found = read("\n".join(lines) + "\n")
    assert value is INVALID
    assert len(found) == 1
    assert found[0].startswith("t.yaml:1: a2[0][0]")
    assert found[0].endswith(": nested more than 32 levels deep with what aliases insert: vnet "
                             "reads no deeper (a topology needs 6 levels); is this the right "
                             "file?")


# -- aliases and merge keys -------------------------------------------------------------------

def merge_chain(levels: int, copies: int) -> str:
    """The 561-byte bomb of the issue: each level merges the one before ``copies`` times."""
    lines = ["m0: &m0 {a: 1, b: 2}"]
    lines += [f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * copies)}]}}"
              for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_a_merge_key_bomb_costs_its_length_not_an_exponent() -> None:
    """20 levels of ``<<: [*m, *m, *m]`` in 638 bytes: 3**19 merged keys if expanded naively;
    each merge source is visited once, so the document reads within a budget of a thousand."""
    text = merge_chain(20, 3)
    value, found = read(text, YamlLimits(max_values=1000))
    assert found == []
    assert value["m19"] == {"a": 1, "b": 2}


def test_merge_keys_that_expand_beyond_the_limit_are_refused() -> None:
    """Each level adds a key and merges all earlier levels: n**2 / 2 merged keys."""
    lines = ["m0: &m0 {k0: 0}"]
    lines += [f"m{i}: &m{i} {{k{i}: {i}, <<: *m{i - 1}}}" for i in range(1, 1000)]
    value, found = read("\n".join(lines) + "\n")
    assert value is INVALID
    assert len(found) == 1
    assert found[0].startswith("t.yaml:")
    assert ": aliases and merge keys (<<) expand the document to more than 200,000 values by " \
           "here: vnet reads no more (an alias bomb?); write the values out, or use fewer " \
           "aliases" in found[0]


def test_merged_keys_that_are_all_taken_still_count() -> None:
    """Two anchors per level, each merging both of the level before: every merge source is
    new (no visit-once saving) and brings only the key ``a``, taken already: nothing to
    walk, but 2 * 600**2 sources to visit.  They count."""
    lines = ["m0: &m0 {a: 0}", "w0: &w0 {a: 0}"]
    for i in range(1, 600):
        lines += [f"m{i}: &m{i} {{a: {i}, <<: [*m{i - 1}, *w{i - 1}]}}",
                  f"w{i}: &w{i} {{a: {i}, <<: [*m{i - 1}, *w{i - 1}]}}"]
    value, found = read("\n".join(lines) + "\n")
    assert value is INVALID
    assert len(found) == 1 and "expand the document to more than 200,000 values" in found[0]


def test_a_long_merge_chain_merges_all_of_it() -> None:
    """300 levels: no silent cut at some depth (PyYAML merges the whole chain)."""
    lines = ["m0: &m0 {k0: 0}"]
    lines += [f"m{i}: &m{i} {{<<: *m{i - 1}}}" for i in range(1, 300)]
    lines.append("last: {<<: *m299, own: 1}")
    value, found = read("\n".join(lines) + "\n")
    assert found == []
    assert value["last"] == {"own": 1, "k0": 0}


def test_merge_precedence_survives_the_visit_once_rule() -> None:
    value, found = read(dedent("""
        a: &a {x: a, y: a}
        b: &b {<<: *a, y: b, z: b}
        c: &c {<<: [*b, *a], w: c}
        d: {<<: [*c, *a, *b]}
        """))
    assert found == []
    assert value["d"] == {"w": "c", "y": "b", "z": "b", "x": "a"}


def test_a_merge_that_merges_itself_is_harmless() -> None:
    value, found = read("a: &a {x: 1, <<: *a}\n")
    assert found == [] and value == {"a": {"x": 1}}


def test_a_bad_merge_source_used_many_times_is_reported_once() -> None:
    lines = ["bad: &bad {<<: [1]}"] + [f"u{i}: {{<<: *bad}}" for i in range(50)]
    _, found = read("\n".join(lines) + "\n")
    assert found == ["t.yaml:1: bad: a merge key (<<) takes a mapping or a list of mappings"]


def test_undefined_alias_and_duplicate_anchor() -> None:
    _, found = read("a: *nope\n")
    assert found == ["t.yaml:1: invalid YAML: undefined alias *nope: define the anchor (&NAME) "
                     "before using it"]
    _, found = read("a: &x 1\nb: &x 2\n")
    assert found == ["t.yaml:2: invalid YAML: duplicate anchor &x (first at line 1): give "
                     "each anchor its own name"]


# -- values Python cannot show ----------------------------------------------------------------

def test_an_integer_of_more_than_4300_digits_is_an_error_at_its_line() -> None:
    found = problems("name: x\nnetworks:\n  a: {vlan: " + "9" * 5000 + "}\nnodes: {}\n")
    assert found == ["t.yaml:3: networks.a.vlan: a number of 5,000 digits is too long to read "
                     "(at most 4,300), and far larger than any setting takes"]


def test_a_huge_hexadecimal_integer_is_quoted_by_its_size() -> None:
    found = problems("name: x\nnetworks:\n  a: {vlan: 0x" + "f" * 100_000 + "}\nnodes: {}\n")
    assert found == ["t.yaml:3: networks.a.vlan: an integer of about 120,412 digits is out of "
                     "range 1..4094"]


def test_an_integer_beyond_any_float_is_an_error() -> None:
    found = problems("name: x\nnetworks:\n  a: {vlan: 1, mac_aging: 1" + "0" * 400
                     + "}\nnodes: {}\n")
    assert found == ["t.yaml:3: networks.a.mac_aging: 100000000000000000000000000000000000000000"
                     "000000000000000000… (401 digits) is too large to be a number vnet uses"]


def test_a_memory_size_of_thousands_of_digits_is_an_error() -> None:
    found = problems(dedent("""
        name: x
        networks: {}
        nodes:
          v: {kind: vm, memory: 1%sM}
        """) % ("0" * 5000))
    assert found == ["t.yaml:5: nodes.v.memory: '10000000000000000000000000000000000000000000000"
                     "0000000000000'… (5,002 characters) is far too large a size"]


def test_a_lone_surrogate_is_an_error_not_a_traceback() -> None:
    # a JSON request can carry one ("\ud800"); a file cannot (it is not UTF-8)
    assert problems("name: x\nnetworks: {}\nnodes: {}\nz: \ud800\n") == [
        "t.yaml:4: not UTF-8 text: a lone surrogate (U+D800) at column 4"]


def test_a_control_character_is_reported_at_its_line() -> None:
    assert problems("name: x\nnetworks: {}\nnodes: {a: \x07}\n") == [
        "t.yaml:3: invalid YAML: character U+0007 is not allowed (a control character): "
        "remove it"]


@pytest.mark.parametrize("value,kind", [("!!timestamp x", "timestamp"), ("!!float nics", "float"),
                                        ("!!bool maybe", "bool"), ("!!int abc", "int")])
def test_a_tag_forced_on_a_value_it_cannot_read_is_an_error(value: str, kind: str) -> None:
    value_text = value.split(" ", 1)[1].strip("'")
    assert problems(f"name: x\nnetworks: {{a: {{vlan: {value}}}}}\nnodes: {{}}\n") == [
        f"t.yaml:2: networks.a.vlan: cannot read this value: '{value_text}' is not a valid "
        f"{kind}"]


def test_a_huge_integer_where_a_small_one_belongs() -> None:
    assert problems("version: 0x" + "f" * 5000 + "\nname: x\nnetworks: {}\nnodes: {}\n") == [
        "t.yaml:1: version: an integer of about 6,021 digits is not supported: the only value "
        "is 1"]


def test_a_path_with_a_nul_character_is_refused() -> None:
    assert problems('name: x\nnetworks: {}\nnodes:\n  v: {kind: vm, kernel: "/boot/a\\0b"}\n') == [
        r"t.yaml:4: nodes.v.kernel: '/boot/a\x00b' holds a NUL character, which no file name can"]
    with pytest.raises(ConfigError) as info:
        parse_config('socket: "/run/a\\0b"\n', "c.yaml", hostname="h1")
    assert info.value.problems == [
        r"c.yaml:1: socket: '/run/a\x00b' must match ^[^\s\x00]([^\n\x00]*[^\s\x00])?$ (a file "
        "path without leading or trailing spaces, or NUL characters; relative to this file's "
        "directory)"]
