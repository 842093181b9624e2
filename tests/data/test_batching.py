"""Length-grouped batching (peftds.data.batching): every example once per epoch, little padding, batches
re-mixed between epochs; the collator's length buckets."""

import random

import pytest
import torch

from peftds.data.batching import (
    Collator,
    LengthGroupedBatchSampler,
    batch_mate_overlap,
    bucket_length,
    default_buckets,
    next_power_of_two,
    padded_tokens,
    random_batches,
)


def skewed_lengths(n=2000, seed=0):
    """Short sentences with a long tail, like SST-2 / CoLA (real data: see test_bench_cli.py)."""
    rng = random.Random(seed)
    return [min(128, 3 + int(rng.expovariate(1 / 12))) for _ in range(n)]


@pytest.mark.parametrize("mega", [None, 1, 4, 32])
@pytest.mark.parametrize("n,bs", [(1, 4), (7, 3), (1000, 32), (1001, 32)])
def test_every_example_exactly_once_per_epoch(n, bs, mega):
    lengths = skewed_lengths(n)
    s = LengthGroupedBatchSampler(lengths, bs, seed=3, mega_batches=mega)
    for _ in range(3):  # three epochs through iter()
        batches = list(s)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(n))
        assert len(batches) == len(s)
        assert all(1 <= len(b) <= bs for b in batches)
        assert sum(len(b) < bs for b in batches) <= 1


def test_grouped_padding_is_far_below_fixed_and_random():
    lengths = skewed_lengths()
    real = sum(lengths)
    grouped = padded_tokens(lengths, LengthGroupedBatchSampler(lengths, 32, seed=0).batches(0))
    rnd = padded_tokens(lengths, random_batches(len(lengths), 32, seed=0))
    fixed = padded_tokens(lengths, random_batches(len(lengths), 32), pad_to=128)
    assert real <= grouped <= 1.15 * real
    assert grouped < rnd < fixed
    assert fixed >= 6 * grouped  # real SST-2 / CoLA: >= 8x (test_bench_cli.py::test_bench_data_real_tasks)
    whole = padded_tokens(lengths, LengthGroupedBatchSampler(lengths, 32, mega_batches=None).batches(0))
    assert whole <= grouped  # the whole-set sort pads least


def test_batches_are_reshuffled_between_epochs_and_reproducible():
    lengths = skewed_lengths(20000)
    s = LengthGroupedBatchSampler(lengths, 32, seed=1)
    e0, e1 = list(s), list(s)
    assert e0 != e1  # new order and composition every epoch
    assert batch_mate_overlap(e0, e1) < 0.2  # few batch-mates come back
    assert batch_mate_overlap(e0, e0) == 1.0
    s.set_epoch(0)
    assert list(s) == e0  # same seed + epoch -> same batches
    assert LengthGroupedBatchSampler(lengths, 32, seed=2).batches(0) != e0
    # within a batch, lengths are close (sorted inside a mega-batch)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in e0) / len(e0)
    assert spread < 6


def test_unshuffled_is_length_sorted():
    lengths = [5, 1, 4, 1, 3, 9, 2]
    batches = LengthGroupedBatchSampler(lengths, 3, shuffle=False).batches(0)
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths)


def test_bucket_helpers():
    assert default_buckets(128) == [16, 32, 64, 128]
    assert default_buckets(100) == [16, 32, 64, 100]
    assert default_buckets(8) == [8]
    assert bucket_length(17, [16, 32]) == 32 and bucket_length(40, [16, 32]) == 40 and bucket_length(5, None) == 5
    assert [next_power_of_two(n) for n in (0, 1, 2, 3, 5, 8)] == [1, 1, 2, 4, 8, 8]
    assert padded_tokens([3, 5, 9], [[0, 1], [2]], buckets=[4, 8, 16]) == 2 * 8 + 16


def rows_seq2seq():
    return [
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [9, 102], "length": 3, "label_index": 1},
        {"input_ids": [5] * 10, "attention_mask": [1] * 10, "labels": [8, 8, 102], "length": 10, "label_index": 0},
    ]


def test_collator_dynamic_and_bucketed_padding():
    plain = Collator(0, seq2seq=True)(rows_seq2seq())
    assert set(plain) == {"input_ids", "attention_mask", "labels"}  # extra columns dropped
    assert plain["input_ids"].shape == (2, 10) and plain["labels"].shape == (2, 3)
    assert plain["attention_mask"][0].tolist() == [1, 1, 1] + [0] * 7
    assert plain["labels"][0].tolist() == [9, 102, -100]
    b = Collator(0, seq2seq=True, buckets=[8, 16, 32])(rows_seq2seq())
    assert b["input_ids"].shape == (2, 16) and b["labels"].shape == (2, 4)  # target: next power of two
    assert b["input_ids"][0, 3:].eq(0).all() and b["attention_mask"][1, 10:].eq(0).all()
    t = Collator(0, seq2seq=True, buckets=[16], target_buckets=[8])(rows_seq2seq())
    assert t["labels"].shape == (2, 8)


def test_collator_encoder_labels():
    rows = [
        {"input_ids": [1, 2], "attention_mask": [1, 1], "token_type_ids": [0, 0], "labels": 1},
        {"input_ids": [1], "attention_mask": [1], "token_type_ids": [0], "labels": 0},
    ]
    out = Collator(0, seq2seq=False, buckets=[4])(rows)
    assert out["input_ids"].shape == (2, 4) and out["token_type_ids"].shape == (2, 4)
    assert out["labels"].dtype == torch.long and out["labels"].tolist() == [1, 0]
    reg = Collator(0, seq2seq=False)([{**rows[0], "labels": 2.5}])
    assert reg["labels"].dtype == torch.float32
