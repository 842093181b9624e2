"""Task metrics (SPEC §6), computed directly with scikit-learn, scipy, rouge-score and sacrebleu
(never ``evaluate.load``, which needs the hub).

Scale convention: **every metric is reported on a 0-100 scale**, as in the paper's tables:
accuracy x100, F1 x100, Matthews correlation x100 (so in [-100, 100]), Pearson / Spearman
correlation x100 (in [-100, 100]), ROUGE F-measure x100, BLEU as sacrebleu reports it (already 0-100).
A task's ``score`` is the plain mean of its ``score`` metrics on that scale (MRPC/QQP: mean of F1 and
accuracy; STS-B: mean of Pearson and Spearman), and :func:`glue_average` is the plain mean of task
scores. A correlation that is undefined (constant predictions or references) is reported as 0.0 so
that search means stay finite.

Predictions / references per kind: classification -> class indices (a prediction of -1, e.g. an
undecodable generation, counts as wrong); regression -> floats; generation -> strings.
MNLI: call once per dev split; the caller names the mismatched result (e.g. ``validation_mismatched/accuracy``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from peftds.errors import PeftdsError


def _labels(x: Sequence[Any]) -> np.ndarray:
    return np.asarray([int(v) for v in x], dtype=np.int64)


def accuracy(pred: Sequence[Any], ref: Sequence[Any]) -> float:
    from sklearn.metrics import accuracy_score

    return 100.0 * float(accuracy_score(_labels(ref), _labels(pred)))


def f1(pred: Sequence[Any], ref: Sequence[Any]) -> float:
    """Binary F1 of the positive class 1 (GLUE MRPC/QQP convention)."""
    from sklearn.metrics import f1_score

    return 100.0 * float(f1_score(_labels(ref), _labels(pred), pos_label=1, average="binary", zero_division=0))


def mcc(pred: Sequence[Any], ref: Sequence[Any]) -> float:
    from sklearn.metrics import matthews_corrcoef

    return 100.0 * float(matthews_corrcoef(_labels(ref), _labels(pred)))


def _corr(fn: Callable, pred: Sequence[Any], ref: Sequence[Any]) -> float:
    p = np.asarray(pred, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if len(p) < 2 or np.ptp(p) == 0 or np.ptp(r) == 0:
        return 0.0
    v = float(fn(p, r)[0])
    return 0.0 if math.isnan(v) else 100.0 * v


def pearson(pred: Sequence[Any], ref: Sequence[Any]) -> float:
    from scipy.stats import pearsonr

    return _corr(pearsonr, pred, ref)


def spearman(pred: Sequence[Any], ref: Sequence[Any]) -> float:
    from scipy.stats import spearmanr

    return _corr(spearmanr, pred, ref)


def rouge_per_example(pred: Sequence[str], ref: Sequence[str]) -> dict[str, np.ndarray]:
    """ROUGE-1/2/L F-measure x100 of every example (rouge-score, Porter stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    out = {k: np.empty(len(pred)) for k in ("rouge1", "rouge2", "rougeL")}
    for i, (p, r) in enumerate(zip(pred, ref)):
        s = scorer.score(str(r), str(p))  # score(target, prediction)
        for k, v in out.items():
            v[i] = 100.0 * s[k].fmeasure
    return out


def rouge(pred: Sequence[str], ref: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure x100 (a mean over examples)."""
    return {k: float(v.mean()) if len(v) else 0.0 for k, v in rouge_per_example(pred, ref).items()}


def bleu(pred: Sequence[str], ref: Sequence[str]) -> float:
    """sacrebleu corpus BLEU (default 13a tokenizer, one reference per segment), 0-100."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu([str(p) for p in pred], [[str(r) for r in ref]]).score)


def bleu_statistics(pred: Sequence[str], ref: Sequence[str]) -> np.ndarray:
    """Per segment BLEU's sufficient statistics (n x 10: matched n-grams for n = 1..4, n-grams for n = 1..4,
    hypothesis length, reference length): corpus BLEU is a function of their sums (bleu_from_statistics)."""
    from sacrebleu.metrics import BLEU

    scorer = BLEU(effective_order=True)  # only the score of one segment depends on it, not its counts
    rows = []
    for p, r in zip(pred, ref):
        s = scorer.sentence_score(str(p), [str(r)])
        rows.append([*s.counts, *s.totals, s.sys_len, s.ref_len])
    return np.asarray(rows, dtype=float).reshape(len(rows), 10)


def bleu_from_statistics(sums: Sequence[float]) -> float:
    """Corpus BLEU from summed segment statistics (bleu_statistics): equal to `bleu` on the same segments."""
    from sacrebleu.metrics import BLEU

    x = [round(float(v)) for v in sums]
    return float(BLEU.compute_bleu(x[:4], x[4:8], x[8], x[9], smooth_method="exp").score)


_SIMPLE: dict[str, Callable[[Sequence[Any], Sequence[Any]], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "mcc": mcc,
    "pearson": pearson,
    "spearman": spearman,
    "bleu": bleu,
}
ROUGE = ("rouge1", "rouge2", "rougeL")
METRICS: tuple[str, ...] = tuple(_SIMPLE) + ROUGE


def compute_metrics(task: Any, predictions: Sequence[Any], references: Sequence[Any]) -> dict[str, float]:
    """Every metric of ``task`` (names from its config) plus ``score``, all on the 0-100 scale."""
    predictions = list(predictions)
    references = list(references)
    if len(predictions) != len(references):
        raise PeftdsError(f"task '{task.name}': {len(predictions)} predictions but {len(references)} references")
    if not references:
        raise PeftdsError(f"task '{task.name}': no examples to score")
    out: dict[str, float] = {}
    wanted = list(dict.fromkeys(list(task.metrics) + list(task.score)))
    if any(m in ROUGE for m in wanted):
        out.update({k: v for k, v in rouge(predictions, references).items() if k in wanted})
    for m in wanted:
        if m in ROUGE:
            continue
        if m not in _SIMPLE:
            raise PeftdsError(f"task '{task.name}': unknown metric '{m}' (known: {', '.join(METRICS)})")
        out[m] = _SIMPLE[m](predictions, references)
    out["score"] = float(np.mean([out[m] for m in task.score]))
    return out


def glue_average(scores: Mapping[str, float]) -> float:
    """Plain mean of per-task scores (0-100 scale), e.g. ``{"cola": 55.1, "sst2": 93.0, ...}``."""
    if not scores:
        raise PeftdsError("glue_average: no task scores given")
    vals = [float(v) for v in scores.values()]
    if any(math.isnan(v) for v in vals):
        bad = [k for k, v in scores.items() if math.isnan(float(v))]
        raise PeftdsError(f"glue_average: NaN score for task(s) {bad}")
    return float(np.mean(vals))
