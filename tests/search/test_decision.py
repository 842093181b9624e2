"""The stage decision (peftds.search.decision): verdicts on paired differences, and its guarantee tested
by Monte Carlo on synthetic paired stages."""

from __future__ import annotations

import math

import numpy as np
import pytest

from peftds.errors import PeftdsError
from peftds.search.decision import VERDICTS, DecisionSettings, decide, decide_batch


def paired_stages(means, b, n, design_sd=3.0, noise_sd=1.0, heavy=False, seed=0):
    """(B, K, N) scores: a design effect shared by design i of every option (what pairing cancels), the
    option's mean, and each trial's own noise (normal, or Student t with 3 degrees of freedom scaled to
    the same sd when `heavy`)."""
    rng = np.random.default_rng(seed)
    k = len(means)
    shared = rng.normal(0, design_sd, size=(b, 1, n))
    if heavy:
        own = rng.standard_t(3, size=(b, k, n)) * noise_sd / math.sqrt(3.0)
    else:
        own = rng.normal(0, noise_sd, size=(b, k, n))
    return 80.0 + np.asarray(means, dtype=float)[None, :, None] + shared + own


CONFIGS = {
    "all tied": dict(means=[0, 0, 0, 0, 0]),
    "one exactly δ* better": dict(means=[0, 0, 0.5, 0, 0]),
    "spread": dict(means=[-2.0, -1.2, 0, -0.4, -0.8]),
    "heavy-tailed": dict(means=[-1.5, -0.2, 0, -0.6, -1.0], heavy=True),
    "spread, small N": dict(means=[-2.0, -1.2, 0, -0.4, -0.8], n=12, noise_sd=1.0),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_bad_selections_and_false_claims_stay_below_alpha(name):
    """Stated test: on 2000 synthetic paired stages per configuration (K=5, N=100 unless said, shared
    design sd 3, trial noise sd 1), the default decision (δ*=0.5, α=0.05, sequential) picks an option more
    than δ* below the best in at most α of them, and a `decided` / `equivalent` verdict is false (decided
    on a non-best option; equivalent with the pick more than δ* below the best) in at most α of them."""
    cfg = dict(CONFIGS[name])
    means = np.asarray(cfg.pop("means"), dtype=float)
    n = cfg.pop("n", 100)
    settings = DecisionSettings()
    x = paired_stages(means, 2000, n, seed=list(CONFIGS).index(name), **cfg)
    res = decide_batch(x, settings)
    best = means.max()
    picked = means[res["pick"]]
    bad = picked < best - settings.tolerance - 1e-12
    decided = res["verdict"] == VERDICTS.index("decided")
    equivalent = res["verdict"] == VERDICTS.index("equivalent")
    false_claim = (decided & (picked < best)) | (equivalent & bad)
    assert bad.mean() <= settings.alpha, f"{name}: bad selections {bad.mean():.3f}"
    assert false_claim.mean() <= settings.alpha, f"{name}: false verdicts {false_claim.mean():.3f}"
    # the best option is never found worse than another (it is "out" only when an interval failed)
    best_out = res["out"][:, means == best].any(-1)
    assert best_out.mean() <= settings.alpha


def test_a_clear_stage_is_decided_early_and_a_tied_one_equivalent():
    settings = DecisionSettings()
    clear = paired_stages([0, -3, -3, -4, -5], 500, 100, seed=1)
    res = decide_batch(clear, settings)
    # decided, or equivalent first (every other option within δ* of the leader's lower bound): both stop
    assert (res["verdict"] != 2).mean() > 0.99 and (res["pick"] == 0).mean() > 0.99
    assert res["designs"].sum(-1).mean() < 0.25 * 5 * 100  # stops long before N
    tied = paired_stages([0, 0, 0, 0, 0], 500, 100, noise_sd=0.5, seed=2)
    res = decide_batch(tied, settings)
    assert (res["verdict"] == 1).mean() > 0.9  # equivalent: every option within δ* of the pick
    # unpaired (no shared design effect cancels) the same stage needs many more designs
    alone = paired_stages([0, 0, 0, 0, 0], 500, 100, design_sd=0.0, noise_sd=math.sqrt(9 + 0.25), seed=3)
    unpaired = decide_batch(alone, settings)
    assert unpaired["designs"].sum(-1).mean() > 2 * res["designs"].sum(-1).mean()


def test_one_stage_decision_by_name_and_in_progress():
    rng = np.random.default_rng(4)
    shared = rng.normal(0, 3, 12)
    scores = {o: list(80 + mu + shared + rng.normal(0, 0.3, 12)) for o, mu in (("a", 0), ("b", -9), ("c", -10))}
    d = decide(scores, 12, DecisionSettings())
    assert d.verdict == "decided" and d.pick == "a" and d.finished and set(d.out) == {"b", "c"} and d.out["b"] == 1
    assert d.designs == {"a": 3, "b": 3, "c": 3} and d.looks == 1
    assert "a beats every other option" in d.line()
    # too few designs for the first look: not finished, every option needs the first look's designs
    early = decide({o: v[:2] for o, v in scores.items()}, 12, DecisionSettings())
    assert not early.finished and early.pick is None and early.designs == {"a": 3, "b": 3, "c": 3}
    # a failed design (NaN) drops its pair
    scores["b"][0] = math.nan
    assert decide(scores, 12, DecisionSettings()).pick == "a"


def test_schedule_and_the_cost_of_looking_often():
    s = DecisionSettings()
    assert s.schedule(12) == [3, 5, 7, 11, 12] and s.schedule(100)[-1] == 100 and len(s.schedule(100)) == 10
    assert DecisionSettings(sequential=False).schedule(100) == [100]
    assert s.test_alpha(5, 100) == pytest.approx(0.05 / (10 * 10))
    with pytest.raises(PeftdsError, match="tolerance"):
        DecisionSettings(tolerance=-1)
    with pytest.raises(PeftdsError, match="growth"):
        DecisionSettings(growth=1.0)


def test_multi_fidelity_control_variate_keeps_the_guarantee_and_saves_full_trainings():
    """Stated test: 2000 synthetic paired stages (K=5, N=100, spread means) whose epoch-k scores are the
    final ones 3 points lower plus noise of sd 0.7 (a cheap score that tracks the final one); each look trains
    every design to epoch k and continues a random half to full fidelity (control-variate estimates). Bad
    selections and false verdicts stay <= α, and fewer designs reach full fidelity than the plain decision
    trains."""
    means = np.array([-2.0, -1.2, 0, -0.4, -0.8])
    full = paired_stages(means, 2000, 100, seed=7)
    rng = np.random.default_rng(8)
    cheap = full - 3.0 + rng.normal(0, 0.7, size=full.shape)
    settings = DecisionSettings()
    res = decide_batch(full, settings, cheap=cheap, share=0.5)
    picked = means[res["pick"]]
    bad = picked < means.max() - settings.tolerance
    claimed = res["verdict"] != VERDICTS.index("unresolved")
    assert bad.mean() <= settings.alpha and (claimed & bad).mean() <= settings.alpha
    assert (res["full"] <= np.maximum(np.ceil(0.5 * res["designs"]), 4)).all()
    plain = decide_batch(full, settings)
    assert res["full"].sum(-1).mean() < plain["designs"].sum(-1).mean()


def test_looks_go_on_over_the_options_still_in():
    """An option found worse at a look needs no more designs: the next looks are taken once the options
    still in have their designs (its shorter prefix does not hold the decision at that look)."""
    rng = np.random.default_rng(5)
    shared = rng.normal(0, 3, 12)
    scores = {o: list(80 + mu + shared + rng.normal(0, 1.0, 12)) for o, mu in (("a", 0), ("b", -40), ("c", 0))}
    scores["b"] = scores["b"][:3]  # found worse at the first look: never given more
    d = decide({o: v[:5] for o, v in scores.items()}, 12, DecisionSettings())
    assert d.out == {"b": 1} and d.looks == 2 and not d.finished and d.designs == {"a": 7, "b": 3, "c": 7}
    d = decide(scores, 12, DecisionSettings())
    assert d.looks == 5 and d.finished and d.designs == {"a": 12, "b": 3, "c": 12}
    assert d.lower["b"] > 0 and d.out == {"b": 1}  # its bound is the one of the look that found it worse


def test_a_multi_fidelity_look_needs_cheap_scores_of_all_and_full_ones_of_the_first():
    from peftds.search.decision import Fidelity, continued

    fid = Fidelity(cheap_epochs=1, epochs=3, share=0.5)
    rng = np.random.default_rng(6)
    shared = rng.normal(0, 3, 12)
    full = {o: list(80 + mu + shared + rng.normal(0, 0.2, 12)) for o, mu in (("a", 0), ("b", -0.1))}
    cheap = {o: [x - 5 + rng.normal(0, 0.3) for x in v] for o, v in full.items()}
    assert [continued(n, 0.5) for n in (3, 5, 7, 11, 12)] == [3, 4, 4, 6, 6]
    d = decide({o: v[:3] for o, v in full.items()}, 12, DecisionSettings(), cheap=cheap, fidelity=fid)
    assert d.looks == 1 and d.designs == {"a": 5, "b": 5} and d.full == {"a": 4, "b": 4}
    # cheap scores of every design without the full ones of the look's first designs: no look is taken
    d = decide({o: v[:2] for o, v in full.items()}, 12, DecisionSettings(), cheap=cheap, fidelity=fid)
    assert d.looks == 0 and d.pick is None and d.designs == {"a": 3, "b": 3} and d.full == {"a": 3, "b": 3}
    d = decide({o: v[:6] for o, v in full.items()}, 12, DecisionSettings(), cheap=cheap, fidelity=fid)
    assert d.finished and d.verdict == "equivalent" and d.pick == "a"
    assert all(d.full[o] == continued(d.designs[o], 0.5) < d.designs[o] for o in d.full)
