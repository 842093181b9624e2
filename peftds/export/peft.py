"""`format=peft`: a trained LoRA design as a peft adapter (adapter_config.json + adapter_model.safetensors).

The adapter is written by peft itself (``get_peft_model`` on a fresh base, the trained tensors copied in,
``save_pretrained``), so its layout is whatever the installed peft reads back. Modules are named in full
(``target_modules``), per-module ranks go into ``rank_pattern``; every module's scaling alpha/r is folded
into ``lora_B`` and alpha = r is written per module (``lora_alpha`` = the common rank, ``alpha_pattern`` =
the others), so peft's scaling is exactly 1 everywhere and a loader that scales by the config's global
``lora_alpha / r`` gets 1 too. The task head goes into ``modules_to_save``; BitFit only where peft's
``bias`` setting holds exactly the trained biases. Everything else stops in one line naming it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch

from peftds.errors import PeftdsError
from peftds.export.source import TrainedRun, auto_class, layer_ranges
from peftds.model.backbones import build_model, linear_dims
from peftds.model.strategies.lora import LoRALinear

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def peft_bias_mode(trained: set[str], all_biases: set[str], lora_biases: set[str]) -> str | None:
    """peft's ``bias`` setting that trains exactly the `trained` biases, or None when none does."""
    if not trained:
        return "none"
    if trained == all_biases:
        return "all"
    if trained == lora_biases:
        return "lora_only"
    return None


def head_modules(run: TrainedRun) -> list[str]:
    """The task head's top modules (what peft's ``modules_to_save`` names)."""
    backbone = run.built.backbone
    names = [n for n, _ in backbone.head_parameters()]
    return sorted({p.rstrip(".") for p in backbone.family.head_prefixes if any(n.startswith(p) for n in names)})


TASK_TYPES = {
    "AutoModelForSequenceClassification": "SEQ_CLS",
    "AutoModelForSeq2SeqLM": "SEQ_2_SEQ_LM",
    "AutoModelForCausalLM": "CAUSAL_LM",
}  # what picks the PeftModel subclass on load


def check_peft(run: TrainedRun) -> str:
    """The peft ``bias`` setting of the export; PeftdsError naming what peft cannot hold."""
    plan = run.built.plan
    if plan.full:
        raise PeftdsError("format=peft holds a LoRA adapter, not a full fine-tune: format=merged holds it")
    unheld = run.input_dependent_parts()
    if unheld:
        raise PeftdsError(
            f"format=peft cannot hold {', '.join(unheld)}: peft's LoRA has no such modules, and format=merged "
            "cannot fold them into weights either"
        )
    if not run.lora_modules():
        raise PeftdsError(f"format=peft holds LoRA, and design '{plan.design}' has none: format=merged holds it")
    backbone = run.built.backbone
    trained = {n for n in run.trained_tensors() if n.endswith("bias") and not backbone.is_head(n)}
    base = build_model(plan.model, num_labels=run.num_labels, device="meta")
    all_biases = {n for n, _ in base.named_parameters() if "bias" in n and not backbone.is_head(n)}
    lora_biases = {f"{n}.bias" for n, chain in run.lora_modules().items() if chain[0].bias is not None}
    mode = peft_bias_mode(trained, all_biases, lora_biases)
    if mode is None:
        bitfit = layer_ranges(run.layers_with("bitfit"))
        added = sorted(trained - all_biases)
        why = (
            f"the base model has no {added[0]} (BitFit added it)"
            if added
            else "peft trains every bias (bias=all) or the LoRA modules' biases only (bias=lora_only), not this set"
        )
        raise PeftdsError(f"format=peft cannot hold BitFit on layers {bitfit}: {why}; format=merged holds it")
    return mode


def peft_config(run: TrainedRun, bias: str, base_model: str | None) -> Any:
    """The LoraConfig of the export: every module by full name, its rank, alpha = rank (scaling 1)."""
    from peft import LoraConfig

    loras = run.lora_modules()
    ranks = {n: sum(m.rank for m in chain) for n, chain in loras.items()}
    common = Counter(ranks.values()).most_common(1)[0][0]
    others = {n: r for n, r in sorted(ranks.items()) if r != common}
    hp = run.built.plan.hparams.get("lora", {})
    conv1d = any(not isinstance(chain[-1].base_layer, torch.nn.Linear) for chain in loras.values())
    return LoraConfig(
        r=common,
        lora_alpha=common,
        rank_pattern=others,
        alpha_pattern=dict(others),
        target_modules=sorted(loras),
        lora_dropout=float(hp.get("dropout", 0.0)),
        bias=bias,
        fan_in_fan_out=conv1d,  # GPT-2's Conv1D stores its weight as [in, out]
        modules_to_save=head_modules(run) or None,
        task_type=TASK_TYPES.get(auto_class(run.built.model)),
        base_model_name_or_path=base_model,
    )


def stacked_lora(chain: list[LoRALinear]) -> tuple[torch.Tensor, torch.Tensor]:
    """One peft LoRA (A, B with scaling 1) equal to a chain of peftds LoRAs on one projection: the A's
    stacked, each B scaled by its alpha/r and placed on its own output window and its own rank columns (a
    fused projection's q and v are one LoRA of rank r_q + r_v whose B is block-structured)."""
    a = torch.cat([lora.lora_A for lora in chain])
    d_out = linear_dims(chain[-1].base_layer)[1]
    b = a.new_zeros(d_out, a.shape[0])
    col = 0
    for lora in chain:
        rows = slice(*lora.window) if lora.window is not None else slice(None)
        b[rows, col : col + lora.rank] = lora.lora_B * lora.scaling
        col += lora.rank
    return a, b


def write_peft(run: TrainedRun, out: Path, base_model: str | None) -> dict[str, Any]:
    """Write the adapter into `out` (an empty folder); returns what the card and the summary report."""
    from peft import get_peft_model

    bias = check_peft(run)
    config = peft_config(run, bias, base_model)
    plan = run.built.plan
    base = build_model(plan.model, num_labels=run.num_labels)
    params = dict(base.named_parameters())
    with torch.no_grad():
        for name, tensor in run.trained_tensors().items():  # head and biases before peft copies the head
            params[name].copy_(tensor)
    peft_model = get_peft_model(base, config)
    inner = peft_model.get_base_model()
    ranks = {}
    with torch.no_grad():
        for name, chain in run.lora_modules().items():
            a, b = stacked_lora(chain)
            target = inner.get_submodule(name)
            if target.r["default"] != a.shape[0] or target.scaling["default"] != 1.0:
                raise PeftdsError(
                    f"internal error: peft built {name} with rank {target.r['default']} and scaling "
                    f"{target.scaling['default']} (wanted rank {a.shape[0]}, scaling 1)"
                )
            target.lora_A["default"].weight.copy_(a)
            target.lora_B["default"].weight.copy_(b)
            ranks[name] = a.shape[0]
    peft_model.save_pretrained(str(out))
    return {"bias": bias, "ranks": ranks, "modules_to_save": config.modules_to_save or []}
