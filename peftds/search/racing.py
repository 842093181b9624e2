"""Racing: sequential elimination of a stage's options (stage decisions at a fraction of the cost).

A race samples designs in rounds: round r brings every surviving option to `designs_in_round(r)` designs
(a first batch of max(round_size, min_designs), then round_size more per round, up to N). After each round,
every surviving option gets a two-sided confidence interval on its mean design score, and an option whose
upper bound lies below the leader's lower bound (the leader: the highest mean, ties to the first option)
leaves the race. The race ends when one option is left or every survivor has all its designs; the winner
is the survivor with the highest mean.

Error rate: each interval holds with probability >= 1 - delta / (K * R) (Bonferroni over the K options and
the R rounds a race can have), so with probability >= 1 - delta every interval of the race holds and the
option with the best true mean is never eliminated. The intervals (`method`):

- "hoeffding": mean ± s·sqrt(ln(2/δ')/(2n)), s = the scores' range (Hoeffding 1963). Scores live in
  [0, 100], but that range makes the bound useless at any affordable n; s is the observed range of every
  design score seen so far in the race, floored at `range_floor` (and capped at 100). With the true range
  the stated rate is exact; the observed range makes it an approximation (it grows as the race sees more).
- "bernstein": empirical Bernstein (Maurer & Pontil 2009, Thm 4, two-sided): mean ± (sqrt(2·v·ln(4/δ')/n)
  + 7·s·ln(4/δ')/(3(n-1))), v the sample variance, s as for Hoeffding. Adapts to the variance but its
  range term needs large n.
- "t": Student t interval mean ± t(1-δ'/2, n-1)·sd/sqrt(n) with the same Bonferroni δ' (a "t-race"):
  exact for normal design scores, asymptotically right otherwise. Tightest in practice; the default,
  because it met the replay target on the synthetic stages where the other two needed far more compute
  (see peftds.search.replay and the README's racing section).

Everything here is pure and deterministic (no I/O): the stage runner calls `run_race` on the design scores
stored so far, so a resumed stage replays exactly the decisions it made before. `race_batch` applies the
same rule to many simulated stages at once (peftds.search.replay).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from peftds.errors import PeftdsError

METHODS = ("t", "hoeffding", "bernstein")
SCORE_LOW, SCORE_HIGH = 0.0, 100.0  # design scores are means of 0-100 metrics


@dataclass(frozen=True)
class RaceSettings:
    """How a race runs (see the module docstring for the bounds)."""

    delta: float = 0.05  # error rate of the whole race (before the Bonferroni split)
    round_size: int = 2  # new designs per surviving option and round (a launcher batch)
    min_designs: int = 3  # designs an option has before any interval is finite (the first round's size)
    method: str = "t"
    range_floor: float = 10.0  # floor on the observed score range (hoeffding, bernstein)
    fidelity: int | None = None  # decide on the best score of the first `fidelity` epochs (None: all)

    def __post_init__(self) -> None:
        if not 0 < self.delta < 1:
            raise PeftdsError(f"racing delta must be in (0, 1), got {self.delta}")
        if self.round_size < 1:
            raise PeftdsError(f"racing round_size must be >= 1, got {self.round_size}")
        if self.min_designs < 2:
            raise PeftdsError(
                f"racing min_designs must be >= 2 (an interval needs two designs), got {self.min_designs}"
            )
        if self.method not in METHODS:
            raise PeftdsError(f"racing method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not self.range_floor > 0:
            raise PeftdsError(f"racing range_floor must be > 0, got {self.range_floor}")
        if self.fidelity is not None and self.fidelity < 1:
            raise PeftdsError(f"racing fidelity must be >= 1 epoch, got {self.fidelity}")

    @property
    def first(self) -> int:
        """Designs per option in the first round."""
        return max(self.round_size, self.min_designs)

    def designs_in_round(self, round_index: int, n_max: int) -> int:
        """Designs an option has after round `round_index` (0-based), at most n_max."""
        return min(n_max, self.first + round_index * self.round_size)

    def max_rounds(self, n_max: int) -> int:
        """Rounds a race with up to n_max designs per option can have (R of the correction)."""
        return 1 + max(0, math.ceil((n_max - self.first) / self.round_size))

    def label(self) -> str:
        fid = f", epoch {self.fidelity}" if self.fidelity else ""
        return f"{self.method} δ={self.delta:g} r={self.round_size}{fid}"


def per_test_delta(settings: RaceSettings, n_options: int, n_max: int) -> float:
    """The error rate of one interval: delta / (K * R)."""
    return settings.delta / (max(1, n_options) * settings.max_rounds(n_max))


def half_width(n: Any, var: Any, spread: Any, settings: RaceSettings, n_options: int, n_max: int) -> np.ndarray:
    """Half-width of the interval of an option's mean (elementwise; inf, i.e. n/a, below min_designs designs
    and, for the t interval, when the designs all score the same: an n/a bound eliminates nothing).

    n: scored designs, var: their sample variance (ddof=1), spread: the score range the bound assumes.
    """
    d = per_test_delta(settings, n_options, n_max)
    n = np.asarray(n, dtype=float)
    var = np.maximum(np.asarray(var, dtype=float), 0.0)
    spread = np.clip(np.asarray(spread, dtype=float), settings.range_floor, SCORE_HIGH - SCORE_LOW)
    ok = n >= settings.min_designs
    m = np.where(ok, n, 2.0)  # placeholder where the width is inf anyway (no division by zero)
    if settings.method == "hoeffding":
        w = spread * np.sqrt(math.log(2 / d) / (2 * m))
    elif settings.method == "bernstein":
        lg = math.log(4 / d)
        w = np.sqrt(2 * var * lg / m) + 7 * spread * lg / (3 * (m - 1))
    else:
        from scipy.stats import t as student_t

        uniq, inv = np.unique(m, return_inverse=True)  # few distinct n: one quantile each
        w = student_t.ppf(1 - d / 2, uniq - 1)[inv].reshape(m.shape) * np.sqrt(var / m)
        ok &= var > 0  # designs that all score the same: no zero-width interval, the bound is n/a
    return np.where(ok, w, np.inf)


def eliminate(mean: np.ndarray, lower: np.ndarray, upper: np.ndarray, active: np.ndarray) -> tuple[Any, Any]:
    """(leader index, eliminated mask) over the last axis: the leader is the active option with the
    highest mean (ties: the first); an active option whose upper bound is below its lower bound goes."""
    score = np.where(active & np.isfinite(mean), mean, -np.inf)
    leader = np.argmax(score, axis=-1)
    lead_low = np.take_along_axis(lower, np.expand_dims(leader, -1), axis=-1)
    return leader, active & (upper < lead_low)


@dataclass(frozen=True)
class Bound:
    """An option's interval after a round (n: scored designs; sampled: designs it has, failed ones too)."""

    n: int
    sampled: int
    mean: float
    lower: float
    upper: float


@dataclass(frozen=True)
class Elimination:
    """Why an option left the race."""

    option: str
    upper: float
    mean: float
    n: int
    leader: str
    leader_lower: float

    @property
    def why(self) -> str:
        return (
            f"{self.option}: upper bound {self.upper:.2f} (mean {self.mean:.2f}, {self.n} designs) < "
            f"lower bound {self.leader_lower:.2f} of the leader {self.leader}"
        )


@dataclass(frozen=True)
class RoundDecision:
    """The outcome of one round: bounds, leader, who stays, who leaves and why, what comes next."""

    round_index: int
    bounds: dict[str, Bound]
    leader: str | None
    survivors: list[str]
    eliminated: list[Elimination]
    finished: bool
    next_designs: dict[str, int] = field(default_factory=dict)  # survivor -> designs after the next round
    spread: float = float("nan")
    test_delta: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record (race.json keeps one per round)."""
        out = asdict(self)
        out["eliminated"] = [{**asdict(e), "why": e.why} for e in self.eliminated]
        return out


def option_stats(scores: Sequence[float]) -> tuple[int, float, float]:
    """(n, mean, sample variance) of the finite scores (NaN marks a design that failed)."""
    x = np.asarray([s for s in scores if math.isfinite(s)], dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    var = float(x.var(ddof=1)) if n > 1 else 0.0
    return n, mean, var


def observed_spread(scores_by_option: Mapping[str, Sequence[float]]) -> float:
    """Range of every finite design score seen so far (0 when there is none)."""
    xs = [s for v in scores_by_option.values() for s in v if math.isfinite(s)]
    return max(xs) - min(xs) if xs else 0.0


def race_step(
    scores_by_option: Mapping[str, Sequence[float]],
    n_max: int | Mapping[str, int],
    settings: RaceSettings,
    round_index: int,
    active: Sequence[str] | None = None,
) -> RoundDecision:
    """Decide one round.

    scores_by_option: every option of the race (in config order: ties go to the first) -> its design scores
    in sample order so far, NaN for a design that failed (it counts as sampled, not as scored); options that
    left earlier keep the scores they had. n_max: designs an option can have (N, or per option). active: the
    options still racing before this round (default: all). K of the correction is len(scores_by_option).
    """
    options = list(scores_by_option)
    active_set = set(options if active is None else active)
    caps = {o: int(n_max[o] if isinstance(n_max, Mapping) else n_max) for o in options}
    k, n_top = len(options), max(caps.values(), default=1)
    stats = [option_stats(scores_by_option[o]) for o in options]
    n = np.array([s[0] for s in stats], dtype=float)
    mean = np.array([s[1] for s in stats])
    var = np.array([s[2] for s in stats])
    spread = observed_spread(scores_by_option)
    w = half_width(n, var, spread, settings, k, n_top)
    with np.errstate(invalid="ignore"):
        lower = np.where(np.isfinite(w), np.maximum(mean - w, SCORE_LOW), SCORE_LOW)
        upper = np.where(np.isfinite(w), np.minimum(mean + w, SCORE_HIGH), SCORE_HIGH)
    is_active = np.array([o in active_set for o in options])
    lead, out = eliminate(mean, lower, upper, is_active)
    leader = options[int(lead)] if is_active.any() and np.isfinite(mean[is_active]).any() else None
    bounds = {
        o: Bound(int(n[i]), len(scores_by_option[o]), float(mean[i]), float(lower[i]), float(upper[i]))
        for i, o in enumerate(options)
        if o in active_set
    }
    gone = [
        Elimination(o, float(upper[i]), float(mean[i]), int(n[i]), str(leader), float(lower[int(lead)]))
        for i, o in enumerate(options)
        if out[i]
    ]
    survivors = [o for i, o in enumerate(options) if is_active[i] and not out[i]]
    finished = len(survivors) <= 1 or all(len(scores_by_option[o]) >= caps[o] for o in survivors)
    nxt = {} if finished else {o: settings.designs_in_round(round_index + 1, caps[o]) for o in survivors}
    return RoundDecision(
        round_index, bounds, leader, survivors, gone, finished, nxt, spread, per_test_delta(settings, k, n_top)
    )


@dataclass(frozen=True)
class RaceResult:
    """A race replayed from stored scores: the rounds decided, whether it is over, and its winner."""

    rounds: list[RoundDecision]
    finished: bool
    winner: str | None  # the best survivor by mean once finished
    survivors: list[str]
    designs: dict[str, int]  # designs each option has sampled (the race's cost)
    next_designs: dict[str, int]  # designs each survivor needs for the next round (empty once finished)


def run_race(
    scores_by_option: Mapping[str, Sequence[float]], n_max: int | Mapping[str, int], settings: RaceSettings
) -> RaceResult:
    """Replay a race from each option's design scores in sample order (all that is finished so far).

    Round r uses the first designs_in_round(r) designs of every survivor; when a survivor has fewer
    finished designs than its round needs, the race waits (finished=False, next_designs says what to run).
    """
    options = list(scores_by_option)
    caps = {o: int(n_max[o] if isinstance(n_max, Mapping) else n_max) for o in options}
    active = list(options)
    have: dict[str, list[float]] = {o: [] for o in options}
    rounds: list[RoundDecision] = []
    r = 0
    while True:
        need = {o: settings.designs_in_round(r, caps[o]) for o in active}
        if any(len(scores_by_option[o]) < need[o] for o in active):
            return RaceResult(rounds, False, None, active, {o: len(v) for o, v in have.items()}, need)
        for o in active:
            have[o] = [float(s) for s in scores_by_option[o][: need[o]]]
        dec = race_step(have, caps, settings, r, active)
        rounds.append(dec)
        active = dec.survivors
        if dec.finished:
            means = {o: option_stats(have[o])[1] for o in active}
            ranked = [o for o in active if math.isfinite(means[o])]
            winner = max(ranked, key=lambda o: means[o]) if ranked else None  # max keeps the first of ties
            return RaceResult(rounds, True, winner, active, {o: len(v) for o, v in have.items()}, {})
        r += 1


def prefix_sums(x: np.ndarray) -> dict[str, np.ndarray]:
    """Running counts, sums, squares, max and min of the finite scores along the last axis."""
    ok = np.isfinite(x)
    z = np.where(ok, x, 0.0)
    return {
        "n": np.cumsum(ok, axis=-1),
        "s1": np.cumsum(z, axis=-1),
        "s2": np.cumsum(z * z, axis=-1),
        "max": np.fmax.accumulate(np.where(ok, x, -np.inf), axis=-1),
        "min": np.fmin.accumulate(np.where(ok, x, np.inf), axis=-1),
    }


def race_batch(
    scores: np.ndarray, settings: RaceSettings, early: np.ndarray | None = None, early_rounds: int = 0
) -> dict[str, np.ndarray]:
    """Run the race of `run_race` on B simulated stages at once.

    scores: (B, K, N) design scores in sample order (NaN: failed). early: the same designs scored at a
    lower fidelity, used for the decisions of the first `early_rounds` rounds; the options still racing
    after them have their designs trained on to full fidelity ("promoted"), also when the race ends in
    the early rounds with several survivors (the pick among them is then made at full fidelity).
    Returns winner (B,) option index (-1: nothing scored), designs (B, K) sampled per option,
    early_designs (B, K) designs sampled in the early rounds, promoted (B, K), rounds (B,).
    """
    b, k, n_max = scores.shape
    full = prefix_sums(scores)
    low = prefix_sums(early) if early is not None and early_rounds > 0 else full
    active = np.ones((b, k), dtype=bool)
    done = np.zeros(b, dtype=bool)
    designs = np.zeros((b, k), dtype=int)
    early_designs = np.zeros((b, k), dtype=int)
    promoted = np.zeros((b, k), dtype=bool)
    winner = np.full(b, -1)
    rounds = np.zeros(b, dtype=int)
    for r in range(settings.max_rounds(n_max)):
        p = low if r < early_rounds else full
        if r == early_rounds and early_rounds > 0:
            promoted = active & ~done[:, None]
        going = active & ~done[:, None]
        designs = np.where(going, settings.designs_in_round(r, n_max), designs)
        if r < early_rounds:
            early_designs = designs.copy()
        at = np.maximum(designs - 1, 0)[..., None]
        n = np.take_along_axis(p["n"], at, -1)[..., 0].astype(float)
        s1 = np.take_along_axis(p["s1"], at, -1)[..., 0]
        s2 = np.take_along_axis(p["s2"], at, -1)[..., 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, s1 / n, np.nan)
            var = np.where(n > 1, (s2 - n * mean**2) / (n - 1), 0.0)
        hi = np.take_along_axis(p["max"], at, -1)[..., 0].max(axis=-1)
        lo = np.take_along_axis(p["min"], at, -1)[..., 0].min(axis=-1)
        spread = np.where(np.isfinite(hi - lo), hi - lo, 0.0)[:, None]
        w = half_width(n, var, spread, settings, k, n_max)
        with np.errstate(invalid="ignore"):
            lower = np.where(np.isfinite(w), np.maximum(mean - w, SCORE_LOW), SCORE_LOW)
            upper = np.where(np.isfinite(w), np.minimum(mean + w, SCORE_HIGH), SCORE_HIGH)
        _, out = eliminate(mean, lower, upper, going)
        active = np.where(done[:, None], active, active & ~out)
        left = active & ~done[:, None]
        ends = ~done & ((left.sum(-1) <= 1) | np.all(~left | (designs >= n_max), axis=-1))
        if r < early_rounds:  # a race that ends at low fidelity with several survivors: they are
            # trained on and the pick among them is made at full fidelity
            multi = ends & (left.sum(-1) > 1)
            fn = np.take_along_axis(full["n"], at, -1)[..., 0]
            with np.errstate(invalid="ignore", divide="ignore"):
                fmean = np.where(fn > 0, np.take_along_axis(full["s1"], at, -1)[..., 0] / fn, np.nan)
            mean = np.where(multi[:, None], fmean, mean)
            promoted = np.where(multi[:, None], left, promoted)
        ranked = np.where(active & np.isfinite(mean), mean, -np.inf)
        best = np.where(np.isfinite(ranked).any(-1), np.argmax(ranked, axis=-1), -1)
        winner = np.where(ends, best, winner)
        rounds = np.where(ends, r + 1, rounds)
        done |= ends
        if done.all():
            break
    return {
        "winner": winner,
        "designs": designs,
        "early_designs": early_designs,
        "promoted": promoted,
        "rounds": rounds,
    }


def race_record(
    result: RaceResult, settings: RaceSettings, n_max: Mapping[str, int], n_tasks: int, epochs: int
) -> dict[str, Any]:
    """race.json of a stage: settings, every round's decision, and trial-epochs used vs the full protocol
    (every option's n_max designs x tasks x epochs)."""
    fid = settings.fidelity or epochs  # a race decided on epoch k still trains `epochs` unless trials stop early
    used = sum(result.designs.values()) * n_tasks * epochs
    full = sum(int(v) for v in n_max.values()) * n_tasks * epochs
    return {
        "settings": asdict(settings),
        "decision_epoch": fid,
        "n_max": dict(n_max),
        "finished": result.finished,
        "winner": result.winner,
        "survivors": result.survivors,
        "designs": result.designs,
        "next_designs": result.next_designs,
        "trial_epochs": used,
        "full_trial_epochs": full,
        "compute_fraction": used / full if full else float("nan"),
        "rounds": [d.to_dict() for d in result.rounds],
    }


def race_markdown(record: Mapping[str, Any]) -> str:
    """The race section of a stage report: each round's survivors and why each option left."""
    s = record["settings"]
    lines = [
        f"Racing ({s['method']} intervals, δ={s['delta']:g} over all options and rounds, {s['round_size']} "
        f"design(s) per survivor and round): {record['trial_epochs']} of {record['full_trial_epochs']} "
        f"trial-epochs of the full protocol ({100 * record['compute_fraction']:.1f}%)"
        + ("" if record["finished"] else "; the race is still running"),
        "",
        "| round | designs | leader | survivors | left the race |",
        "|---|---|---|---|---|",
    ]
    for d in record["rounds"]:
        designs = sorted({b["sampled"] for b in d["bounds"].values()})
        left = "; ".join(e["why"] for e in d["eliminated"]) or "–"
        lines.append(
            f"| {d['round_index'] + 1} | {'/'.join(map(str, designs))} | {d['leader'] or '–'} | "
            f"{', '.join(d['survivors'])} | {left} |"
        )
    return "\n".join(lines)
