"""What an export reads: a trained run (its design dir and, where present, its result.json) rebuilt as a model.

Both formats and the model card work from a :class:`TrainedRun`: the trained model exactly as
`peftds.design.apply.load_trained` rebuilds it, the run record, and per strategy the layers that hold it
(what a refusal names).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from peftds.design.apply import Built, load_trained
from peftds.errors import PeftdsError
from peftds.files import DESIGN_DIR, PLAN_FILE, RESULT_FILE
from peftds.model.strategies.lora import LoRALinear

WRAPPED = ".base_layer"  # what every peftds wrapper adds to the names of the Linear it wraps


@dataclass
class TrainedRun:
    run_dir: Path
    design_dir: Path
    built: Built
    record: dict[str, Any] = field(default_factory=dict)  # result.json ({} for a bare design dir)

    @property
    def num_labels(self) -> int | None:
        """The classification head's outputs; None for a model without one (text-to-text, causal LM)."""
        backbone = self.built.backbone
        return self.built.model.config.num_labels if backbone.head_parameters() else None

    def layers_with(self, strategy: str, gated: bool | None = None) -> list[int]:
        """The stack positions whose plan holds `strategy` (with `gated`: only where its gate is on/off)."""
        plan = self.built.plan
        if gated is not None and bool(plan.hparams.get(strategy, {}).get("gated", False)) != gated:
            return []
        return [lp.index for lp in plan.layers if strategy in lp.modules]

    def input_dependent_parts(self) -> list[str]:
        """What acts on each input rather than as a weight update (adapters, prefixes, UniPELT's LoRA gates),
        with the layers that hold it: what neither a peft LoRA adapter nor a merged checkpoint can hold."""
        held = {s: self.layers_with(s) for s in ("adapter", "prefix")}
        parts = [f"{s} (layers {layer_ranges(layers)})" for s, layers in held.items() if layers]
        gated = self.layers_with("lora", gated=True)
        if gated:
            parts.append(f"UniPELT LoRA gates (layers {layer_ranges(gated)})")
        return parts

    def lora_modules(self) -> dict[str, list[LoRALinear]]:
        """The LoRA-wrapped projections by module name (the name of the Linear they replaced), each with its
        chain of LoRAs from the outside in: one, or one per target sharing a fused projection (each on its
        own output window)."""
        chains: dict[str, list[LoRALinear]] = {}
        for name, module in self.built.model.named_modules():
            if isinstance(module, LoRALinear) and not name.endswith(WRAPPED):
                chain = [module]
                while isinstance(chain[-1].base_layer, LoRALinear):
                    chain.append(chain[-1].base_layer)
                chains[name] = chain
        return chains

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        """Every trained tensor outside LoRA (biases, the task head, a full fine-tune's weights), under the
        name the plain transformers model gives it."""
        return {
            plain_name(n): p.detach()
            for n, p in self.built.model.named_parameters()
            if p.requires_grad and ".lora_" not in n
        }


def auto_class(model: torch.nn.Module) -> str:
    """The transformers Auto class that builds this model's class from its config (what loads an export)."""
    from transformers.models.auto import modeling_auto as auto

    kinds = (
        (auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES, "AutoModelForSequenceClassification"),
        (auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES, "AutoModelForSeq2SeqLM"),
        (auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "AutoModelForCausalLM"),
    )
    name = type(model).__name__
    for names, auto_name in kinds:
        found = names.get(model.config.model_type)
        if name == found or (isinstance(found, (list, tuple)) and name in found):
            return auto_name
    return "AutoModel"


def plain_name(name: str) -> str:
    """A parameter's name in the unwrapped model (``q.base_layer.bias`` -> ``q.bias``)."""
    return re.sub(rf"({re.escape(WRAPPED)})+\.", ".", name)


def layer_ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5' (how a refusal names layers)."""
    parts: list[str] = []
    start = prev = None
    for i in [*sorted(indices), None]:
        if start is not None and (i is None or i != prev + 1):
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = None
        if i is not None and start is None:
            start = i
        prev = i
    return ", ".join(parts)


def load_run(path: str | Path) -> TrainedRun:
    """A run dir (holding design/) or a design dir itself; one-line errors for anything else."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise PeftdsError(f"run dir not found: {path}")
    if (path / DESIGN_DIR / PLAN_FILE).is_file():
        run_dir, design_dir = path, path / DESIGN_DIR
    elif (path / PLAN_FILE).is_file():
        run_dir, design_dir = path.parent, path
    else:
        raise PeftdsError(
            f"{path} holds no trained design (no {DESIGN_DIR}/{PLAN_FILE}: train with train.save_params=true)"
        )
    record: dict[str, Any] = {}
    if (run_dir / RESULT_FILE).is_file():
        try:
            record = json.loads((run_dir / RESULT_FILE).read_text())
        except json.JSONDecodeError as e:
            raise PeftdsError(f"{run_dir / RESULT_FILE} is not valid JSON ({e.msg})") from None
        if record.get("status") not in (None, "ok"):
            raise PeftdsError(f"{run_dir} did not finish training (status {record.get('status')}): nothing to export")
    built = load_trained(design_dir)
    built.model.eval()
    return TrainedRun(run_dir, design_dir, built, record)
