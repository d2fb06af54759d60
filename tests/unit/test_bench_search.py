"""The rate search brackets before it bisects, and says whether it measured or only bounded."""

from __future__ import annotations

import pytest

from vnet.bench import search


def run(plan: search.Plan, limit: float, generator: float = float("inf")
        ) -> tuple[search.Answer, list[float]]:
    """A switch that passes every rate up to ``limit``; a generator that offers at most
    ``generator``."""
    trials: list[search.Trial] = []
    while (rate := search.next_rate(plan, trials)) is not None:
        offered = min(rate, generator)
        trials.append(search.Trial(rate, offered, offered <= limit))
    return search.conclude(plan, trials), [t.asked for t in trials]


def test_a_failing_first_step_goes_down_until_a_pass_then_bisects() -> None:
    plan = search.Plan(start=200e3, ceiling=800e3, floor=200e3 / 16, steps=8)
    answer, asked = run(plan, limit=60e3)
    assert asked[:3] == [200e3, 100e3, 50e3]          # down by halves until one passes
    assert answer.kind == "measured"
    assert answer.rate <= 60e3 < answer.bound
    assert answer.bound - answer.rate <= 100e3 / 2 ** (8 - 3)


def test_a_passing_first_step_goes_up_until_a_failure() -> None:
    plan = search.Plan(start=200e3, ceiling=800e3, floor=12.5e3, steps=6)
    answer, asked = run(plan, limit=500e3)
    assert asked[:3] == [200e3, 400e3, 800e3]
    assert answer.kind == "measured" and answer.rate <= 500e3 < answer.bound


def test_passing_at_the_ceiling_is_a_lower_bound_after_one_trial() -> None:
    plan = search.Plan(start=200e3, ceiling=200e3, floor=200e3 / 64, steps=7)
    answer, asked = run(plan, limit=1e9)
    assert asked == [200e3]
    assert answer.kind == "at least" and answer.rate == 200e3
    assert answer.text().startswith(">= 200 k/s")


def test_the_generator_s_limit_stops_the_climb_and_is_said() -> None:
    plan = search.Plan(start=200e3, ceiling=800e3, floor=12.5e3, steps=7)
    answer, asked = run(plan, limit=1e9, generator=350e3)
    assert asked == [200e3, 400e3]                    # offered 350 of 400: no point in 800
    assert answer.kind == "at least" and answer.limited_by_generator
    assert answer.rate == 350e3 and "generator" in answer.text()


def test_failing_down_to_the_floor_is_an_upper_bound() -> None:
    plan = search.Plan(start=200e3, ceiling=800e3, floor=200e3 / 16, steps=10)
    answer, asked = run(plan, limit=1e3)
    assert asked == [200e3, 100e3, 50e3, 25e3, 12.5e3]
    assert answer.kind == "below" and answer.rate == 0 and answer.bound == 12.5e3
    assert answer.text().startswith("< 12 k/s")


def test_the_steps_bound_the_trials() -> None:
    plan = search.Plan(start=200e3, ceiling=200e3, floor=1e3, steps=3)
    _, asked = run(plan, limit=10e3)
    assert len(asked) == 3


def test_the_answer_is_in_offered_rates() -> None:
    plan = search.Plan(start=100e3, ceiling=100e3, floor=1e3, steps=4)
    trials = [search.Trial(100e3, 93e3, False), search.Trial(50e3, 49e3, True)]
    answer = search.conclude(plan, trials)
    assert (answer.kind, answer.rate, answer.bound) == ("measured", 49e3, 93e3)
    assert answer.text() == "49 k/s (fails at 93 k/s)"
    # a noisy switch: the failure above offered less than the pass below; said, not hidden
    noisy = search.conclude(plan, [search.Trial(150e3, 146e3, False),
                                   search.Trial(148e3, 148e3, True)])
    assert noisy.kind == "measured" and "noise" in noisy.text()


@pytest.mark.parametrize("kwargs", [dict(start=0.0, ceiling=1.0, floor=0.0, steps=1),
                                    dict(start=2.0, ceiling=1.0, floor=1.0, steps=1),
                                    dict(start=1.0, ceiling=1.0, floor=1.0, steps=0)])
def test_a_bad_plan_is_refused_clearly(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="rate search needs"):
        search.Plan(**kwargs)  # type: ignore[arg-type]


def test_the_table_says_which_search_figures_are_bounds() -> None:
    from vnet.bench import run as bench

    runs: list[dict[str, dict[str, float]]] = []
    for answer in (search.Answer("at least", 200e3, 200e3),
                   search.Answer("below", 0.0, 12e3)):
        out: dict[str, float] = {}
        bench._bracket(out, "zero_loss", answer)
        runs.append({"bridge" if answer.kind == "at least" else "vnet": out})
    assert "zero_loss_fail_fps" not in runs[0]["bridge"]
    assert runs[1]["vnet"]["zero_loss_fail_fps"] == 12e3
    notes = bench.bound_notes(runs)
    assert any("Linux bridge: a lower bound in 1 of 1" in n for n in notes)
    assert any("vnet datapath: an upper bound in 1 of 1" in n for n in notes)


def test_a_lower_bound_is_the_most_any_passing_trial_offered() -> None:
    plan = search.Plan(start=200e3, ceiling=800e3, floor=1e3, steps=5)
    trials = [search.Trial(200e3, 184e3, True), search.Trial(400e3, 173e3, True)]
    assert search.next_rate(plan, trials) is None     # the generator's limit
    answer = search.conclude(plan, trials)
    assert (answer.kind, answer.rate, answer.limited_by_generator) == ("at least", 184e3, True)
