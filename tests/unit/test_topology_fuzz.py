"""Mutation fuzz of the topology and vnetd-config readers: every mutated file must end in a
model or in vnet's own error with well-formed messages, never another exception or a hang.

The seeds are the repository's own files (topologies/, the integration tests' topologies, the
example vnetd config); the mutations are byte flips, deletions, duplications, type swaps,
deep nesting, huge values, alias and merge bombs.  The unit test runs a few hundred cases from
a fixed seed in seconds; a longer run, for hunting::

    python -m tests.unit.test_topology_fuzz --cases 5000 --seed 1

A watchdog turns a case that does not finish into a failure that names it (a net for a hang,
not a measure of speed: its deadline is far above any case's time).
"""

from __future__ import annotations

import argparse
import random
import re
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pytest

from vnet.daemon.config import parse_config
from vnet.errors import VnetError
from vnet.topology import parse_topology

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY_SEEDS = sorted([*ROOT.glob("topologies/*.yaml"),
                         *ROOT.glob("tests/integration/topologies/*.yaml")])
CONFIG_SEEDS = [ROOT / "systemd" / "vnetd.yaml.example"]
WATCHDOG_SECONDS = 60
MAX_PROBLEM_CHARS = 800  # a problem line: FILE:LINE: path: message, values cut to 60 chars
PROBLEM = re.compile(r"[^\n:]+:[0-9]+: .+|[^\n:]+: and [0-9,]+ more problems? after these: "
                     r"fix these first")

TOKENS = ["&a ", "*a", "<<: *a", "<<: [*a, *a, *a]", "[", "]", "{", "}", ", ", ": ", "- ",
          "? ", "!!binary ", "!!python/object:os.system ", "!custom ", "!!set ", "!!str ",
          "!!int ", "!!float ", "!!timestamp ", "'", '"', "\t", "\n", "\n  ", "---\n",
          "...\n", "%YAML 1.1\n", "#", "|\n", ">-\n", "\\", "\x00", "\x07", "\ufeff",
          "\u2028", "\ud800", "é", "~", "null", "true", "on", "yes", "0x1F", "0o17", "1_000",
          "1:20:30", "2024-01-01", ".inf", "-.nan", "1e400", "52:54:00:12:34:56"]
VALUES = ["[]", "{}", "null", "true", "-1", "0", "4095", "1.5", ".nan", "1e400", "'x'",
          "[a, b]", "{a: 1}", "2024-01-01", "!!binary aGVsbG8=", "*a", "52:54:00:12:34:56"]


@dataclass(frozen=True)
class Case:
    seed_file: Path
    mutations: tuple[str, ...]
    text: str


class Hung(Exception):
    pass


@contextmanager
def watchdog(seconds: int) -> Iterator[None]:
    def expire(_signum: int, _frame: FrameType | None) -> None:
        raise Hung

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- mutations -------------------------------------------------------------------------------

def _span(rng: random.Random, text: str) -> tuple[int, int]:
    start = rng.randrange(len(text) + 1)
    return start, min(len(text), start + rng.choice([1, 2, 5, 20, 100]))


def flip_byte(rng: random.Random, text: str) -> str:
    data = bytearray(text.encode("utf-8", "surrogatepass"))
    if data:
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return data.decode("utf-8", errors=rng.choice(["replace", "ignore", "surrogateescape"]))


def delete(rng: random.Random, text: str) -> str:
    start, end = _span(rng, text)
    return text[:start] + text[end:]


def duplicate(rng: random.Random, text: str) -> str:
    start, end = _span(rng, text)
    return text[:end] + text[start:end] * rng.choice([1, 2, 10]) + text[end:]


def duplicate_line(rng: random.Random, text: str) -> str:
    lines = text.splitlines(keepends=True) or [""]
    i = rng.randrange(len(lines))
    return "".join(lines[:i + 1] + [lines[i]] * rng.choice([1, 3]) + lines[i + 1:])


def insert_token(rng: random.Random, text: str) -> str:
    at = rng.randrange(len(text) + 1)
    return text[:at] + rng.choice(TOKENS) + text[at:]


def _values(text: str) -> list[re.Match[str]]:
    """Plain values after ``key: `` (a rough but useful notion of where values are)."""
    return list(re.finditer(r"(?<=: )[^\s{}\[\],#][^,}\]\n#]*", text))


def swap_type(rng: random.Random, text: str) -> str:
    spots = _values(text)
    if not spots:
        return insert_token(rng, text)
    spot = rng.choice(spots)
    return text[:spot.start()] + rng.choice(VALUES) + text[spot.end():]


def huge_value(rng: random.Random, text: str) -> str:
    spots = _values(text)
    value = rng.choice(["x" * 300_000, "9" * rng.choice([4301, 20_000]),
                        "0x" + "f" * 100_000, '"' + "é" * 100_000 + '"', "a-" * 50_000 + "1",
                        "1" + "0" * 400])
    if not spots:
        return text + "\nz: " + value + "\n"
    spot = rng.choice(spots)
    return text[:spot.start()] + value + text[spot.end():]


def deep_nesting(rng: random.Random, text: str) -> str:
    spots = _values(text)
    depth = rng.choice([31, 33, 100, 600, 5000, 100_000])
    opening, closing = rng.choice([("[", "]"), ("{a: ", "}")])
    value = opening * depth + "x" + closing * depth
    if not spots:
        return text + "\nz: " + value + "\n"
    spot = rng.choice(spots)
    return text[:spot.start()] + value + text[spot.end():]


def alias_bomb(rng: random.Random, text: str) -> str:
    copies, levels = rng.choice([(3, 20), (10, 9), (2, 30)])
    if rng.random() < 0.5:
        lines = ["x-m0: &m0 {a: 1, b: 2}"]
        lines += [f"x-m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * copies)}]}}"
                  for i in range(1, levels)]
    else:
        lines = ["x-m0: &m0 [x, x]"]
        lines += [f"x-m{i}: &m{i} [{', '.join([f'*m{i - 1}'] * copies)}]"
                  for i in range(1, levels)]
    return "\n".join(lines) + "\n" + text


def many_nodes(rng: random.Random, text: str) -> str:
    count = rng.choice([50_000, 120_000])
    return text + "\nz: [" + ",".join(["a"] * count) + "]\n"


def shuffle_lines(rng: random.Random, text: str) -> str:
    lines = text.splitlines(keepends=True)
    if len(lines) > 2:
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    return "".join(lines)


def reindent(rng: random.Random, text: str) -> str:
    lines = text.splitlines(keepends=True) or [""]
    i = rng.randrange(len(lines))
    lines[i] = rng.choice(["", " ", "   ", "\t"]) + lines[i].lstrip(" ")
    return "".join(lines)


Mutator = Callable[[random.Random, str], str]
SMALL: list[Mutator] = [flip_byte, delete, duplicate, duplicate_line, insert_token, swap_type,
                        shuffle_lines, reindent]
LARGE: list[Mutator] = [huge_value, deep_nesting, alias_bomb, many_nodes]


def cases(seed: int, count: int, seeds: list[Path]) -> Iterator[Case]:
    rng = random.Random(seed)
    texts = {path: path.read_text() for path in seeds}
    for _ in range(count):
        path = rng.choice(seeds)
        text = texts[path]
        names: list[str] = []
        for _ in range(rng.choice([1, 1, 2, 3, 5])):
            mutator = rng.choice(LARGE) if rng.random() < 0.1 else rng.choice(SMALL)
            text = mutator(rng, text)
            names.append(mutator.__name__)
        yield Case(path, tuple(names), text)


# -- the check --------------------------------------------------------------------------------

def outcome(case: Case, *, config: bool) -> str | None:
    """None if the case ended well; else what went wrong."""
    source = "fuzz.yaml"
    try:
        with watchdog(WATCHDOG_SECONDS):
            if config:
                parse_config(case.text, source, hostname="h1")
            else:
                parse_topology(case.text, source=source)
    except Hung:
        return f"did not finish in {WATCHDOG_SECONDS} s"
    except VnetError as err:
        problems: list[str] = getattr(err, "problems", [str(err)])
        if not problems:
            return "an error without problems"
        for problem in problems:
            if (len(problem) > MAX_PROBLEM_CHARS or not PROBLEM.fullmatch(problem)
                    or not problem.startswith(source) or "Traceback" in problem
                    or "[Errno" in problem):
                return f"a malformed problem: {problem[:300]!r}"
    except Exception as err:
        return f"{type(err).__name__}: {str(err)[:300]}"
    return None


def run(seed: int, count: int) -> list[tuple[Case, str]]:
    found: list[tuple[Case, str]] = []
    for config, seeds in ((False, TOPOLOGY_SEEDS), (True, CONFIG_SEEDS)):
        share = count if not config else max(1, count // 5)
        for case in cases(seed, share, seeds):
            problem = outcome(case, config=config)
            if problem is not None:
                found.append((case, problem))
    return found


def test_the_seeds_are_there() -> None:
    assert len(TOPOLOGY_SEEDS) >= 10 and all(p.exists() for p in CONFIG_SEEDS)
    for path in TOPOLOGY_SEEDS:
        assert outcome(Case(path, (), path.read_text()), config=False) is None, path


@pytest.mark.parametrize("seed", [16, 1609])
def test_mutated_files_end_in_a_model_or_a_clear_error(seed: int) -> None:
    found = run(seed, 150)
    assert not found, "\n".join(f"{c.seed_file.name} {c.mutations}: {p}" for c, p in found[:10])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--save", type=Path, help="write the failing cases to this directory")
    args = parser.parse_args()
    found = run(args.seed, args.cases)
    for i, (case, problem) in enumerate(found):
        print(f"{case.seed_file.name} {case.mutations}: {problem}")
        if args.save is not None:
            args.save.mkdir(parents=True, exist_ok=True)
            (args.save / f"case{i}.yaml").write_text(case.text, errors="surrogatepass")
    print(f"{len(found)} findings in {args.cases + max(1, args.cases // 5)} cases "
          f"(seed {args.seed})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
