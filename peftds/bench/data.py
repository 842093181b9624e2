"""`peftds bench-data`: per task, the tokens a training epoch processes with fixed padding, random batches
with dynamic padding and length-grouped batches (both the whole-set sort and the default mega-batches),
how much batches re-mix between epochs, and the measured epoch time of each scheme on a sample.
(`peftds bench bench.epoch=true` appends this report to the bench.)"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from peftds.bench.device import cpu_threads, resolve_device, sync, use_bf16
from peftds.bench.loop import make_optimizer, train_step, trainable
from peftds.bench.settings import model_name, tokenizer_name
from peftds.config.sections import BenchConfig
from peftds.data.batching import (
    DEFAULT_MEGA_BATCHES,
    Collator,
    LengthGroupedBatchSampler,
    batch_mate_overlap,
    padded_tokens,
    random_batches,
)
from peftds.data.loading import encode, load_splits
from peftds.data.tasks import Task, load_task
from peftds.design.apply import build
from peftds.model.backbones import hf_config, model_kind
from peftds.run_config import RunConfig
from peftds.train.setup import load_tokenizer, quiet_libraries


def padding_figures(
    lengths: Sequence[int], batch_size: int, max_len: int, seed: int = 0, mega_batches: int | None = None
) -> dict[str, Any]:
    """Processed / real tokens of one epoch for fixed padding, random batches and length-grouped batches."""
    lengths = [int(x) for x in lengths]
    n, real = len(lengths), sum(lengths)
    rnd = [random_batches(n, batch_size, seed, e) for e in (0, 1)]
    mega = mega_batches if mega_batches is not None else DEFAULT_MEGA_BATCHES
    whole = LengthGroupedBatchSampler(lengths, batch_size, seed=seed, mega_batches=None)
    grouped = LengthGroupedBatchSampler(lengths, batch_size, seed=seed, mega_batches=mega)
    w = [whole.batches(e) for e in (0, 1)]
    g = [grouped.batches(e) for e in (0, 1)]
    once = all(sorted(i for b in bs for i in b) == list(range(n)) for bs in (*w, *g))
    return {
        "examples": n,
        "real_tokens": real,
        "batch_size": batch_size,
        "max_len": max_len,
        "fixed": n * max_len / real,
        "random_dynamic": padded_tokens(lengths, rnd[0]) / real,
        "grouped_whole_sort": padded_tokens(lengths, w[0]) / real,
        "grouped": padded_tokens(lengths, g[0]) / real,
        "mega_batches": mega,
        "batch_mate_overlap": {
            "random_dynamic": batch_mate_overlap(*rnd),
            "grouped_whole_sort": batch_mate_overlap(*w),
            "grouped": batch_mate_overlap(*g),
        },
        "every_example_once": once,
        "batches_differ_between_epochs": g[0] != g[1],
    }


def epoch_timing(
    run: RunConfig,
    task: Task,
    encoded: Any,
    seq2seq: bool,
    sample: int,
    batch_size: int,
    max_len: int,
    seed: int,
    lr: float,
    device: torch.device,
    bf16: bool,
) -> dict[str, Any]:
    """Train ``run``'s design one epoch over a sample of ``encoded`` with each batching scheme; wall time
    of the steps (collation included: it is part of an epoch's cost)."""
    n = min(int(sample), len(encoded))
    idx = np.sort(np.random.default_rng([seed, 7]).permutation(len(encoded))[:n])
    rows = [encoded[int(i)] for i in idx]
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids", "labels") if k in rows[0]]
    rows = [{k: r[k] for k in keys} for r in rows]
    lengths = [len(r["input_ids"]) for r in rows]
    num_labels = None if seq2seq else task.num_labels
    torch.manual_seed(seed)
    built = build(run.model, run.design_config, run.budget.fraction, num_labels=num_labels, seed=run.seed)
    model = built.model.to(device).train()
    opt = make_optimizer(trainable(model), lr, device)
    pad_id = getattr(model.config, "pad_token_id", 0) or 0
    schemes = {
        "fixed": (random_batches(n, batch_size, seed), Collator(pad_id, seq2seq, buckets=[max_len])),
        "random_dynamic": (random_batches(n, batch_size, seed), Collator(pad_id, seq2seq)),
        "grouped": (LengthGroupedBatchSampler(lengths, batch_size, seed=seed).batches(0), Collator(pad_id, seq2seq)),
    }

    def step(b: Mapping[str, torch.Tensor]) -> None:
        train_step(model, opt, {k: v.to(device) for k, v in b.items()}, device, bf16)

    warm = schemes["random_dynamic"][1]([rows[i] for i in schemes["random_dynamic"][0][0]])
    for _ in range(2):
        step(warm)
    out: dict[str, Any] = {"examples": n, "real_tokens": sum(lengths), "design": built.plan.design}
    spent = {name: 0.0 for name in schemes}
    tokens = {name: 0 for name in schemes}
    # Interleaved: batch k of every scheme, then batch k+1, ... so a busy phase of the machine hits all alike.
    for k in range(max(len(b) for b, _ in schemes.values())):
        for name, (batches, collate) in schemes.items():
            if k >= len(batches):
                continue
            sync(device)
            t0 = time.perf_counter()
            coll = collate([rows[i] for i in batches[k]])
            tokens[name] += coll["input_ids"].numel()
            step(coll)
            sync(device)
            spent[name] += time.perf_counter() - t0
    for name in schemes:
        out[name] = {
            "epoch_s": spent[name],
            "processed_tokens": tokens[name],
            "tokens_ratio": tokens[name] / out["real_tokens"],
            "real_tokens_per_s": out["real_tokens"] / spent[name],
        }
    out["speedup_grouped_vs_fixed"] = out["fixed"]["epoch_s"] / out["grouped"]["epoch_s"]
    out["speedup_grouped_vs_random"] = out["random_dynamic"]["epoch_s"] / out["grouped"]["epoch_s"]
    return out


def run_bench_data(run: RunConfig, bench: BenchConfig) -> dict[str, Any]:
    """Padding figures of every task in ``bench.data.tasks`` (full training sets); epoch timing on its
    ``time_tasks``."""
    quiet_libraries(load_bars=False)
    hf_cfg, _ = hf_config(run.model, allow_fallback=False)
    seq2seq = model_kind(hf_cfg.model_type) == "seq2seq"
    tokenizer = load_tokenizer(run.model, seq2seq)
    device = resolve_device(bench.device)
    bf16 = use_bf16(bench.bf16, device)
    rec: dict[str, Any] = {
        "model": model_name(run),
        "tokenizer": tokenizer_name(run),
        "design": run.design_config.get("name"),
        "device": str(device),
        "tasks": {},
    }
    # Whole training sets: no held-out carve-out, no subsample.
    data_cfg = {**run.data.to_dict(), "heldout": 0, "max_train_samples": None}
    data = bench.data
    for name in data.tasks:
        task = load_task(name)
        max_len = data.max_len or task.max_source_len
        t0 = time.time()
        splits = load_splits(task, data_cfg)
        kind = "seq2seq" if seq2seq else "encoder"
        enc = encode(task, tokenizer, splits["train"], kind, max_len, task.max_target_len)
        entry = padding_figures(enc["length"], data.batch_size, max_len, data.seed, data.mega_batches)
        entry["tokenize_s"] = time.time() - t0
        if name in data.time_tasks and data.time_samples > 0:
            with cpu_threads(bench.threads if device.type == "cpu" else None):
                entry["timing"] = epoch_timing(
                    run,
                    task,
                    enc,
                    seq2seq,
                    data.time_samples,
                    data.batch_size,
                    max_len,
                    data.seed,
                    bench.lr,
                    device,
                    bf16,
                )
        rec["tasks"][name] = entry
    return rec


def data_table(rec: Mapping[str, Any]) -> str:
    """The human-readable bench-data table."""
    rows = [
        f"peftds bench-data  tokenizer {rec['tokenizer']}  (processed tokens / real tokens, one epoch)",
        "",
        f"{'task':<6} {'examples':>9} {'batch':>5} {'fixed':>7} {'random':>7} {'sorted':>7} {'grouped':>8} "
        f"{'mates kept (random/sorted/grouped)':>36}",
    ]
    for name, e in rec["tasks"].items():
        o = e["batch_mate_overlap"]
        rows.append(
            f"{name:<6} {e['examples']:>9,} {e['batch_size']:>5} {e['fixed']:>6.2f}x {e['random_dynamic']:>6.2f}x "
            f"{e['grouped_whole_sort']:>6.2f}x {e['grouped']:>7.2f}x "
            f"{o['random_dynamic']:>14.1%} / {o['grouped_whole_sort']:.1%} / {o['grouped']:.1%}"
        )
    mega = next(iter(rec["tasks"].values()))["mega_batches"] if rec["tasks"] else "?"
    rows.append(
        f"fixed: every batch padded to max_len; random: shuffled batches padded to their longest; sorted: "
        f"whole-set length sort; grouped: the training sampler (mega-batches of {mega} batches). "
        f"'mates kept': share of an example's batch-mates that are batch-mates again next epoch."
    )
    timed = {k: e["timing"] for k, e in rec["tasks"].items() if "timing" in e}
    if timed:
        rows += [
            "",
            f"epoch time on a sample, design {rec['design']} on {rec['model']} ({rec['device']}):",
            f"{'task':<6} {'examples':>8} {'fixed s':>8} {'random s':>9} {'grouped s':>10} {'tokens f/r/g':>20} "
            f"{'speed-up vs fixed':>18}",
        ]
        for name, t in timed.items():
            toks = (
                f"{t['fixed']['tokens_ratio']:.2f}/{t['random_dynamic']['tokens_ratio']:.2f}/"
                f"{t['grouped']['tokens_ratio']:.2f}"
            )
            rows.append(
                f"{name:<6} {t['examples']:>8} {t['fixed']['epoch_s']:>8.1f} {t['random_dynamic']['epoch_s']:>9.1f} "
                f"{t['grouped']['epoch_s']:>10.1f} {toks:>20} {t['speedup_grouped_vs_fixed']:>17.2f}x"
            )
    return "\n".join(rows)
