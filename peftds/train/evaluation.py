"""Predictions on an encoded split: head outputs, label-word ranking or generation."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from peftds.data.batching import Collator
from peftds.data.loading import label_word_ids
from peftds.data.tasks import Task, rank_labels

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@torch.no_grad()
def predict(
    model: nn.Module,
    task: Task,
    encoded: Any,
    tokenizer: PreTrainedTokenizerBase,
    seq2seq: bool,
    batch_size: int,
    causal: bool = False,
) -> list[Any]:
    """Predictions on an encoded split: head outputs (encoder), label-word ranking (text-to-text
    classification/regression) or generation (XSum, WMT; ``causal``: a decoder-only LM continues the prompt)."""
    model.eval()
    if causal:
        return _continue_prompts(model, task, encoded, tokenizer, batch_size)
    device = next(model.parameters()).device
    collate = Collator(tokenizer.pad_token_id, seq2seq)
    order = sorted(range(len(encoded)), key=lambda i: encoded[i]["length"])  # length-sorted: little padding
    preds: list[Any] = [None] * len(encoded)
    cand_ids = label_word_ids(task, tokenizer) if seq2seq and task.kind != "generation" else None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate([{k: encoded[i][k] for k in ("input_ids", "attention_mask")} for i in idx])
        batch = {k: v.to(device) for k, v in batch.items()}
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
        with autocast:
            if not seq2seq:
                logits = model(**batch).logits.float()
                out = logits.squeeze(-1).tolist() if task.kind == "regression" else logits.argmax(-1).tolist()
            elif task.kind != "generation":
                ranked = rank_labels(model, batch["input_ids"], batch["attention_mask"], cand_ids)
                out = [task.candidate_to_prediction(int(i)) for i in ranked.tolist()]
            else:
                gen = model.generate(**batch, num_beams=task.num_beams, max_new_tokens=task.max_target_len)
                out = [task.decode(t) for t in tokenizer.batch_decode(gen, skip_special_tokens=True)]
        for i, p in zip(idx, out):
            preds[i] = p
    return preds


def _continue_prompts(
    model: nn.Module, task: Task, encoded: Any, tokenizer: PreTrainedTokenizerBase, batch_size: int
) -> list[str]:
    """Greedy / beam continuation of each prompt (left-padded, so every row generates from its end),
    decoded from the new tokens only."""
    device = next(model.parameters()).device
    prompts = [list(r["input_ids"][: r["prompt_length"]]) for r in encoded]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    preds: list[Any] = [None] * len(prompts)
    pad = tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in idx], device=device)
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx], device=device)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
        with autocast:
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                num_beams=task.num_beams,
                max_new_tokens=task.max_target_len,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
                do_sample=False,
            )
        texts = tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
        for i, t in zip(idx, texts):
            preds[i] = task.decode(t)
    return preds
