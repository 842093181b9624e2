"""`peftds bench-eval`: label-word ranking vs free (greedy) generation for text-to-text classification,
both through the evaluation's own :func:`peftds.train.evaluation.predict` (examples/s and agreement)."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from peftds.bench.loop import make_optimizer, train_step, trainable
from peftds.bench.settings import model_name
from peftds.config.sections import BenchEvalConfig
from peftds.data.batching import Collator, LengthGroupedBatchSampler
from peftds.data.loading import encode, load_splits
from peftds.data.tasks import Task
from peftds.design.apply import load_trained
from peftds.errors import PeftdsError
from peftds.model.backbones import build_model, hf_config, model_kind
from peftds.run_config import RunConfig
from peftds.train.evaluation import predict
from peftds.train.setup import load_tokenizer, quiet_libraries


def quick_train(
    model: nn.Module,
    rows: Sequence[Mapping[str, Any]],
    seq2seq: bool,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    pad_id: int,
) -> float:
    """A few full fine-tuning steps on CPU (so a random-init text-to-text model emits label words);
    returns the last loss."""
    model.train()
    opt = make_optimizer(trainable(model), lr, torch.device("cpu"))
    sampler = LengthGroupedBatchSampler([len(r["input_ids"]) for r in rows], batch_size, seed=seed)
    collate = Collator(pad_id, seq2seq)
    # Epoch after epoch (each a new length-grouped order) until `steps` steps are done.
    batches = (collate([rows[i] for i in b]) for _ in itertools.count() for b in sampler) if rows else iter(())
    loss = float("nan")
    for batch in itertools.islice(batches, steps):
        loss = float(train_step(model, opt, batch))
    model.eval()
    return loss


def timed_predict(
    model: nn.Module, task: Task, encoded: Any, tokenizer: Any, batch_size: int
) -> tuple[list[Any], float]:
    """:func:`predict` after one warm-up batch (the shortest examples); predictions and seconds."""
    order = sorted(range(len(encoded)), key=lambda i: encoded[i]["length"])
    predict(model, task, encoded.select(order[:batch_size]), tokenizer, True, batch_size)
    t0 = time.perf_counter()
    preds = predict(model, task, encoded, tokenizer, True, batch_size)
    return preds, time.perf_counter() - t0


def run_bench_eval(run: RunConfig, ev: BenchEvalConfig) -> dict[str, Any]:
    """Label-word ranking vs free (greedy) generation on a text-to-text classification task."""
    quiet_libraries(load_bars=False)
    task = run.task
    if task is None:
        raise PeftdsError("bench-eval needs a task (task=<name>)")
    if task.kind != "classification":
        raise PeftdsError(
            f"bench-eval compares ranking and generation on classification tasks ('{task.name}' is {task.kind})"
        )
    hf_cfg, _ = hf_config(run.model, allow_fallback=False)
    if model_kind(hf_cfg.model_type) != "seq2seq":
        raise PeftdsError("bench-eval needs a text-to-text model (T5, BART), e.g. model=tiny_t5")
    tokenizer = load_tokenizer(run.model, True)
    splits = load_splits(task, run.data)
    src_len, tgt_len = task.max_source_len, task.max_target_len
    evals = splits["validation"]
    if ev.samples and len(evals) > ev.samples:
        evals = evals.select(range(ev.samples))
    enc = encode(task, tokenizer, evals, "seq2seq", src_len, tgt_len)
    refs = [int(x) for x in evals[task.label_column]]
    train_loss = None
    if ev.run:
        model = load_trained(ev.run, run.model).model
        source = f"trained design from {ev.run}"
    else:
        torch.manual_seed(run.seed)
        model = build_model(run.model)
        source = "backbone as built"
        if ev.train_steps > 0:
            train = splits["train"]
            train = train.select(range(min(len(train), ev.train_steps * ev.train_batch_size)))
            tr = encode(task, tokenizer, train, "seq2seq", src_len, tgt_len)
            rows = [{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in tr]
            train_loss = quick_train(
                model,
                rows,
                True,
                ev.train_steps,
                ev.train_batch_size,
                ev.train_lr,
                run.seed,
                tokenizer.pad_token_id,
            )
            source = f"backbone + {ev.train_steps} full fine-tuning steps (loss {train_loss:.3f})"
    model.eval()
    n = len(enc)
    rank_preds, rank_s = timed_predict(model, task, enc, tokenizer, ev.batch_size)
    # Greedy generation of the label word: predict() generates for generation tasks, so the task is
    # presented as one (one beam, its text returned) and the text is mapped back to a class here.
    as_generation = dataclasses.replace(task, kind="generation", generation={**task.generation, "num_beams": 1})
    texts, gen_s = timed_predict(model, as_generation, enc, tokenizer, ev.batch_size)
    gen_preds = [task.decode(t) for t in texts]
    valid = [i for i in range(n) if gen_preds[i] != -1]
    same = {i for i in valid if gen_preds[i] == rank_preds[i]}

    def accuracy(preds: Sequence[Any]) -> float:
        return float(np.mean([p == r for p, r in zip(preds, refs)])) if refs else float("nan")

    return {
        "model": model_name(run),
        "task": task.name,
        "examples": n,
        "batch_size": ev.batch_size,
        "weights": source,
        "train_loss": train_loss,
        "label_words": list(task.label_words),
        "rank": {"seconds": rank_s, "examples_per_s": n / rank_s, "accuracy": accuracy(rank_preds)},
        "generate": {
            "seconds": gen_s,
            "examples_per_s": n / gen_s,
            "accuracy": accuracy(gen_preds),
            "max_new_tokens": tgt_len,
            "valid": len(valid),
        },
        "speedup_rank_vs_generate": gen_s / rank_s,
        "distinct_predictions": {"rank": len(set(rank_preds)), "generate": len(set(gen_preds))},
        "valid_generations": len(valid),
        "identical_where_valid": len(same),
        "all_identical_where_valid": len(same) == len(valid),
        "mismatches": [{"index": i, "rank": rank_preds[i], "generate": gen_preds[i]} for i in valid if i not in same][
            :10
        ],
    }


def eval_table(rec: Mapping[str, Any]) -> str:
    """The human-readable bench-eval table."""
    r, g = rec["rank"], rec["generate"]
    return "\n".join(
        [
            f"peftds bench-eval  model {rec['model']}  task {rec['task']}  {rec['examples']} dev examples, batch "
            f"{rec['batch_size']}  ({rec['weights']})",
            f"label-word ranking   {r['examples_per_s']:>9.1f} examples/s  accuracy {r['accuracy']:.3f}",
            f"greedy generation    {g['examples_per_s']:>9.1f} examples/s  accuracy {g['accuracy']:.3f}  "
            f"(max_new_tokens {g['max_new_tokens']}; valid label word in {g['valid']}/{rec['examples']})",
            f"ranking is {rec['speedup_rank_vs_generate']:.2f}x faster; identical predictions where generation is "
            f"valid: {rec['identical_where_valid']}/{rec['valid_generations']} (classes predicted: "
            f"{rec['distinct_predictions']['rank']} by ranking, "
            f"{rec['distinct_predictions']['generate']} by generation)",
        ]
    )
