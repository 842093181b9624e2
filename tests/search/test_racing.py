"""Racing (peftds.search.racing): elimination of clearly worse options, the leader never leaving, the
stated error rate with equal options, the Bonferroni correction, resume from a prefix of the scores, and
the batched race agreeing with the one-stage race."""

from __future__ import annotations

import math

import numpy as np
import pytest

from peftds.errors import PeftdsError
from peftds.search.racing import (
    RaceSettings,
    half_width,
    per_test_delta,
    race_batch,
    race_step,
    run_race,
)


def normal_scores(means: dict[str, float], n: int, sd: float = 2.0, seed: int = 0) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    return {o: list(rng.normal(m, sd, size=n)) for o, m in means.items()}


def test_settings_rounds_and_validation():
    s = RaceSettings(round_size=2, min_designs=3)
    assert [s.designs_in_round(r, 10) for r in range(6)] == [3, 5, 7, 9, 10, 10]
    assert s.max_rounds(10) == 5 and s.max_rounds(3) == 1 and s.max_rounds(2) == 1
    assert per_test_delta(s, 4, 10) == pytest.approx(0.05 / 20)
    for bad, key in (
        (dict(delta=0), "delta"),
        (dict(delta=1.5), "delta"),
        (dict(round_size=0), "round_size"),
        (dict(min_designs=1), "min_designs"),
        (dict(method="anova"), "method"),
        (dict(fidelity=0), "fidelity"),
    ):
        with pytest.raises(PeftdsError, match=key):
            RaceSettings(**bad)


@pytest.mark.parametrize("method", ["t", "hoeffding", "bernstein"])
def test_clearly_worse_option_leaves_and_the_leader_stays(method):
    scores = normal_scores({"good": 80, "bad": 40, "close": 79}, n=60, sd=2.0, seed=1)
    res = run_race(scores, 60, RaceSettings(method=method, round_size=2))
    assert res.finished and res.winner == "good"
    gone_at = {e.option: d.round_index for d in res.rounds for e in d.eliminated}
    # t: after the first rounds; the range-based bounds need more designs (bernstein's range term most)
    assert gone_at["bad"] <= {"t": 1, "hoeffding": 12, "bernstein": 27}[method]
    assert res.designs["bad"] < 60
    for d in res.rounds:
        assert "good" in d.survivors
        for e in d.eliminated:
            assert e.leader == "good" and e.upper < e.leader_lower
            assert e.option in e.why and "good" in e.why and f"{e.upper:.2f}" in e.why
    first = res.rounds[gone_at["bad"]]
    assert first.bounds["bad"].upper < first.bounds["good"].lower
    assert first.to_dict()["eliminated"][0]["why"].startswith("bad: upper bound")


def test_nothing_happens_before_min_designs_and_race_ends_at_n():
    scores = normal_scores({"a": 80, "b": 40}, n=4, seed=2)
    d = race_step({o: v[:2] for o, v in scores.items()}, 4, RaceSettings(min_designs=3), 0)
    assert d.survivors == ["a", "b"] and not d.eliminated and d.bounds["b"].upper == 100
    assert d.next_designs == {"a": 4, "b": 4} and not d.finished
    same = normal_scores({"a": 70, "b": 70}, n=4, seed=3)
    res = run_race(same, 4, RaceSettings())
    assert res.finished and res.designs == {"a": 4, "b": 4} and res.survivors == ["a", "b"]


def test_failed_designs_count_as_sampled_not_scored():
    scores = {"a": [70.0, math.nan, 71.0, 72.0], "b": [60.0, 61.0, 59.0, 60.5]}
    d = race_step(scores, 10, RaceSettings(), 0)
    assert d.bounds["a"].n == 3 and d.bounds["a"].sampled == 4
    assert d.bounds["a"].mean == pytest.approx(71.0)


def test_correction_widens_the_bound_with_options_and_rounds():
    for method in ("t", "hoeffding", "bernstein"):
        s = RaceSettings(method=method)
        w = [float(half_width(20, 4.0, 12.0, s, k, 100)) for k in (2, 4, 16)]
        assert w[0] < w[1] < w[2]
        assert float(half_width(20, 4.0, 12.0, s, 4, 20)) < float(half_width(20, 4.0, 12.0, s, 4, 200))
        assert math.isinf(float(half_width(2, 4.0, 12.0, s, 4, 20)))  # below min_designs
    # the race's own K: a third option widens every interval
    two = race_step(normal_scores({"a": 70, "b": 69}, 10), 10, RaceSettings(), 0)
    three = race_step(normal_scores({"a": 70, "b": 69, "c": 69}, 10), 10, RaceSettings(), 0)
    assert three.test_delta < two.test_delta
    assert three.bounds["a"].upper - three.bounds["a"].lower > two.bounds["a"].upper - two.bounds["a"].lower


@pytest.mark.parametrize("method", ["t", "hoeffding", "bernstein"])
def test_equal_options_are_rarely_eliminated(method):
    """Monte Carlo: with K equal options, any elimination is an error; its rate stays below delta."""
    delta, races = 0.2, 3000
    rng = np.random.default_rng(7)
    x = rng.normal(70, 3, size=(races, 4, 30))
    out = race_batch(x, RaceSettings(delta=delta, method=method, round_size=1))
    errors = (out["designs"] < 30).any(-1).mean()
    assert errors <= delta  # the stated rate (the test is conservative: far below it in practice)
    # without the correction for K and R the same data errs more often: the correction matters
    if method == "t":
        loose = race_batch(x, RaceSettings(delta=min(0.99, delta * 4 * 28), method=method, round_size=1))
        assert (loose["designs"] < 30).any(-1).mean() > errors


def test_resume_replays_the_same_decisions():
    scores = normal_scores({"a": 75, "b": 70, "c": 60, "d": 74}, n=40, sd=3.0, seed=4)
    s = RaceSettings(round_size=3)
    full = run_race(scores, 40, s)
    partial = run_race({o: v[:8] for o, v in scores.items()}, 40, s)  # a stage killed mid-race
    assert not partial.finished and partial.winner is None
    k = len(partial.rounds)
    assert [d.to_dict() for d in partial.rounds] == [d.to_dict() for d in full.rounds[:k]]
    assert all(partial.next_designs[o] == 9 for o in partial.survivors)
    assert run_race(scores, 40, s) == full  # deterministic


def test_batched_race_agrees_with_run_race():
    rng = np.random.default_rng(5)
    x = rng.normal([[70.0], [71.5], [66.0]], 3.0, size=(40, 3, 24))
    x[rng.random(x.shape) < 0.05] = np.nan  # some failed designs
    for s in (RaceSettings(), RaceSettings(method="hoeffding", range_floor=4), RaceSettings(round_size=1, delta=0.3)):
        out = race_batch(x, s)
        for b in range(len(x)):
            res = run_race({o: list(x[b, j]) for j, o in enumerate("abc")}, 24, s)
            assert "abc"[out["winner"][b]] == res.winner
            assert list(out["designs"][b]) == [res.designs[o] for o in "abc"]
            assert out["rounds"][b] == len(res.rounds)


def test_race_record_and_markdown():
    import json

    from peftds.search.racing import race_markdown, race_record

    scores = normal_scores({"good": 80, "bad": 40, "close": 79}, n=20, seed=1)
    s = RaceSettings()
    rec = race_record(run_race(scores, 20, s), s, {o: 20 for o in scores}, n_tasks=2, epochs=3)
    json.dumps(rec)  # race.json is plain JSON
    assert rec["full_trial_epochs"] == 3 * 20 * 2 * 3 and rec["trial_epochs"] < rec["full_trial_epochs"]
    md = race_markdown(rec)
    assert "| 1 | 3 | good | good, close | bad: upper bound" in md and "| 2 | 5 | good | good, close | – |" in md


def test_equal_scores_give_no_zero_width_interval_and_eliminate_nothing():
    """An option whose designs all score the same gets an n/a (infinite) t bound: after the first round
    (3 designs) it can neither eliminate a rival nor be eliminated on it."""
    from peftds.search.racing import RaceSettings, race_step

    dec = race_step({"a": [68.75] * 3, "b": [68.0, 68.5, 68.6]}, 10, RaceSettings(), 0)
    assert dec.eliminated == [] and dec.survivors == ["a", "b"]
    assert dec.bounds["a"].lower == 0.0 and dec.bounds["a"].upper == 100.0
