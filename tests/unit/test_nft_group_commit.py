"""nft's group commit: scripts given while one runs share the next run (no root, no nft)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from vnet.errors import HostError
from vnet.host.nft import GroupCommit
from vnet.testing import wait_until


class FakeNft:
    """Records each run; the first run waits until the test lets it finish; a script
    containing "bad" is refused."""

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.first_may_finish = threading.Event()

    def __call__(self, script: str) -> None:
        self.runs.append(script)
        if len(self.runs) == 1:
            assert self.first_may_finish.wait(30)
        if "bad" in script:
            raise HostError(f"nft refused {script!r}")


def submit_in_thread(commits: GroupCommit, script: str, errors: dict[str, Exception]
                     ) -> threading.Thread:
    def run() -> None:
        try:
            commits.submit(script)
        except HostError as err:
            errors[script] = err

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def until(condition: Callable[[], bool]) -> None:
    wait_until(condition, 30, "the scripts to be given", interval=0.001)


def test_a_lone_script_runs_at_once() -> None:
    fake = FakeNft()
    fake.first_may_finish.set()
    GroupCommit(fake).submit("a;")
    assert fake.runs == ["a;"]


def given_while_a_runs(scripts: tuple[str, ...]) -> tuple[list[str], dict[str, Exception]]:
    """Submit "a;", then each of ``scripts`` once it waits in the queue while "a;" runs;
    let "a;" finish; the runs nft saw and each caller's error."""
    fake = FakeNft()
    commits = GroupCommit(fake)
    errors: dict[str, Exception] = {}
    threads = [submit_in_thread(commits, "a;", errors)]
    until(lambda: len(fake.runs) == 1)
    for script in scripts:
        threads.append(submit_in_thread(commits, script, errors))
        until(lambda s=script: any(j.script == s for j in commits.queue))  # type: ignore[misc]
    fake.first_may_finish.set()
    for thread in threads:
        thread.join(30)
    return fake.runs, errors


def test_scripts_given_while_one_runs_go_together_in_order() -> None:
    runs, errors = given_while_a_runs(("b;", "c;", "d;"))
    assert runs == ["a;", "b;c;d;"] and errors == {}


def test_a_refused_batch_is_run_script_by_script_and_only_the_bad_one_fails() -> None:
    runs, errors = given_while_a_runs(("b;", "bad;", "d;"))
    assert runs == ["a;", "b;bad;d;", "b;", "bad;", "d;"]
    assert list(errors) == ["bad;"] and "refused 'bad;'" in str(errors["bad;"])


def test_a_bug_in_the_run_reaches_every_caller_of_the_batch() -> None:
    def broken(script: str) -> None:
        raise KeyError("oops")

    with pytest.raises(HostError, match="running nft failed: KeyError"):
        GroupCommit(broken).submit("a;")
