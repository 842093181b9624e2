"""Metrics against values computed by hand (0-100 scale, see peftds/metrics.py)."""

from __future__ import annotations

import math

import pytest

from peftds.data.metrics import (
    METRICS,
    accuracy,
    bleu,
    compute_metrics,
    f1,
    glue_average,
    mcc,
    pearson,
    rouge,
    spearman,
)
from peftds.data.tasks import load_task
from peftds.errors import PeftdsError


def test_accuracy():
    assert accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == pytest.approx(75.0)


# pred vs ref: TP=2 (i0, i3), FP=1 (i1), FN=1 (i4), TN=1 (i2)
PRED = [1, 1, 0, 1, 0]
REF = [1, 0, 0, 1, 1]


def test_f1_positive_class():
    # precision 2/3, recall 2/3 -> F1 2/3
    assert f1(PRED, REF) == pytest.approx(200 / 3)


def test_mcc():
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2 - 1) / sqrt(3*3*2*2) = 1/6
    assert mcc(PRED, REF) == pytest.approx(100 / 6)
    assert mcc([1, 1, 1], [0, 1, 0]) == 0.0  # constant prediction: 0 (sklearn convention)


def test_pearson_by_hand():
    # centred x = [-1.5,-0.5,0.5,1.5], y = [-3.25,-1.25,0.75,3.75]: cov sum 11.5, Sxx 5, Syy 26.75
    assert pearson([1, 2, 3, 4], [2, 4, 6, 9]) == pytest.approx(100 * 11.5 / math.sqrt(5 * 26.75))


def test_spearman_by_hand():
    # rank differences d = [0, 1, -1, 0]: 1 - 6*2 / (4*(16-1)) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(80.0)
    assert spearman([1, 2, 3, 4], [2, 4, 6, 9]) == pytest.approx(100.0)


def test_undefined_correlation_is_zero():
    assert pearson([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0
    assert spearman([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0


def test_rouge_by_hand():
    # unigrams: 5 of 6 match (the x2, cat, on, mat) -> P = R = F = 5/6
    # bigrams: "the cat", "on the", "the mat" of 5 -> 3/5
    # LCS: "the cat on the mat" = 5 of 6 -> 5/6
    r = rouge(["the cat sat on the mat"], ["the cat lay on the mat"])
    assert r["rouge1"] == pytest.approx(500 / 6)
    assert r["rouge2"] == pytest.approx(60.0)
    assert r["rougeL"] == pytest.approx(500 / 6)


def test_rouge_uses_stemming_and_averages_examples():
    # Porter stemming: cats->cat, running->run, runs->run: a perfect match (100) ...
    # ... averaged with a disjoint pair (0) -> 50
    r = rouge(["cats running", "alpha beta"], ["cat runs", "gamma delta"])
    assert r["rouge1"] == pytest.approx(50.0)
    assert r["rougeL"] == pytest.approx(50.0)


def test_bleu_sacrebleu_behaviour():
    sents = ["the quick brown fox jumps over the lazy dog", "a second sentence here"]
    assert bleu(sents, sents) == pytest.approx(100.0)  # identical corpus -> 100
    assert bleu(["x y z w"], ["a b c d"]) == pytest.approx(0.0)  # no n-gram match -> 0
    # all n-gram precisions 1, hypothesis 6 tokens vs reference 7: brevity penalty exp(1 - 7/6)
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat today"]) == pytest.approx(
        100 * math.exp(1 - 7 / 6), abs=1e-6
    )


def test_compute_metrics_scores(conf_dir):
    mrpc = load_task("mrpc", conf_dir)
    m = compute_metrics(mrpc, PRED, REF)
    assert m["f1"] == pytest.approx(200 / 3) and m["accuracy"] == pytest.approx(60.0)
    assert m["score"] == pytest.approx((200 / 3 + 60.0) / 2)

    cola = compute_metrics(load_task("cola", conf_dir), PRED, REF)
    assert cola["score"] == pytest.approx(cola["mcc"]) == pytest.approx(100 / 6)

    stsb = compute_metrics(load_task("stsb", conf_dir), [1, 2, 3, 4], [1, 3, 2, 4])
    assert stsb["spearman"] == pytest.approx(80.0)
    assert stsb["score"] == pytest.approx((stsb["pearson"] + 80.0) / 2)

    for name in ("sst2", "rte", "qnli", "wnli", "mnli"):
        m = compute_metrics(load_task(name, conf_dir), [0, 1, 1, -1], [0, 1, 0, 0])  # -1 (undecodable) is wrong
        assert m == {"accuracy": pytest.approx(50.0), "score": pytest.approx(50.0)}

    xs = compute_metrics(load_task("xsum", conf_dir), ["the cat sat on the mat"], ["the cat lay on the mat"])
    assert set(xs) == {"rouge1", "rouge2", "rougeL", "score"}
    assert xs["score"] == pytest.approx(xs["rouge1"]) == pytest.approx(500 / 6)

    wmt = compute_metrics(
        load_task("wmt16_en_ro", conf_dir), ["aceasta este o propoziție scurtă"], ["aceasta este o propoziție scurtă"]
    )
    assert wmt == {"bleu": pytest.approx(100.0), "score": pytest.approx(100.0)}


def test_compute_metrics_errors(conf_dir):
    sst2 = load_task("sst2", conf_dir)
    with pytest.raises(PeftdsError, match="2 predictions but 3 references"):
        compute_metrics(sst2, [0, 1], [0, 1, 1])
    with pytest.raises(PeftdsError, match="no examples"):
        compute_metrics(sst2, [], [])


def test_glue_average():
    assert glue_average({"cola": 50.0, "sst2": 90.0, "rte": 70.0}) == pytest.approx(70.0)
    with pytest.raises(PeftdsError):
        glue_average({})
    with pytest.raises(PeftdsError, match="rte"):
        glue_average({"cola": 1.0, "rte": float("nan")})


def test_metric_names_cover_configs(conf_dir):
    from peftds.data.tasks import known_tasks

    for name in known_tasks(conf_dir):
        t = load_task(name, conf_dir)
        assert set(t.metrics) <= set(METRICS)
