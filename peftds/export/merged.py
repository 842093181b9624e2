"""`format=merged`: LoRA and BitFit folded into the backbone, saved as a plain transformers checkpoint.

Every ungated LoRA update is added to its base weight (``W + alpha/r · B A``) and the wrapper is replaced
by the base Linear, so the model is the family's own transformers class again; ``save_pretrained`` writes
it (safetensors, config with the task head) beside the tokenizer. Adapters, prefixes and UniPELT gates
depend on the input and have no weights to fold into: those stop in one line naming their layers, and so
does a trained tensor the plain architecture has no place for (T5's Linears have no bias for BitFit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftds.errors import PeftdsError
from peftds.export.source import TrainedRun
from peftds.model.backbones import build_model
from peftds.train.setup import load_tokenizer


def check_merged(run: TrainedRun) -> None:
    """PeftdsError naming what a plain checkpoint cannot hold."""
    unheld = run.input_dependent_parts()
    if unheld:
        raise PeftdsError(
            f"format=merged cannot hold {', '.join(unheld)}: they act on each input and have no weights to fold "
            "into the backbone"
        )
    plan = run.built.plan
    fresh = build_model(plan.model, num_labels=run.num_labels, device="meta")
    known = set(fresh.state_dict())
    homeless = sorted(n for n in run.trained_tensors() if n not in known)
    if homeless:
        arch = fresh.config.model_type
        raise PeftdsError(
            f"format=merged: a plain {arch} checkpoint has no {homeless[0]} ({len(homeless)} trained tensors "
            "the architecture lacks, e.g. biases BitFit added)"
        )


def fold_lora(run: TrainedRun) -> int:
    """Add each LoRA update to its base weight and put the base Linear back; returns the modules folded."""
    model = run.built.model
    loras = run.lora_modules()
    with torch.no_grad():
        for name, chain in loras.items():
            base = chain[-1].base_layer
            delta = sum(lora.delta_weight() for lora in chain)  # (d_out, d_in); windows never overlap
            # GPT-2's Conv1D keeps its weight as [in, out]
            base.weight += (delta if isinstance(base, nn.Linear) else delta.T).to(base.weight.dtype)
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, base)
    return len(loras)


def write_merged(run: TrainedRun, out: Path) -> dict[str, Any]:
    """Write the merged checkpoint and tokenizer into `out` (an empty folder)."""
    check_merged(run)
    folded = fold_lora(run)
    model = run.built.model
    for p in model.parameters():
        p.requires_grad_(False)
    model.save_pretrained(str(out))
    load_tokenizer(run.built.plan.model, run.built.backbone.seq2seq).save_pretrained(str(out))
    return {"folded_lora_modules": folded, "architecture": type(model).__name__}
