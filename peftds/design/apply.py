"""Turn a design into a trainable model: freeze the backbone, add the plan's strategies layer by
layer, check the built count against the plan's formula count, and save / load trained designs."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from peftds.config.schema import convert
from peftds.config.sections import ModelConfig
from peftds.design.budget import budget_params
from peftds.design.plan import Design, Plan
from peftds.errors import PeftdsError
from peftds.files import PLAN_FILE, WEIGHTS_FILE
from peftds.model.backbones import Backbone, build_model, count_trainable
from peftds.model.strategies import APPLY_ORDER, LayerShape, get_strategy


@dataclass
class Built:
    model: nn.Module
    backbone: Backbone
    plan: Plan

    @property
    def trainable_params(self) -> int:
        return count_trainable(self.model, self.backbone)[0]

    @property
    def head_params(self) -> int:
        return self.backbone.head_params()


def layer_shapes(backbone: Backbone) -> list[LayerShape]:
    return [LayerShape.of(layer) for layer in backbone.layers]


def freeze(backbone: Backbone, full: bool = False) -> None:
    """Freeze everything but the task head (full fine-tuning: nothing frozen)."""
    for name, p in backbone.model.named_parameters():
        p.requires_grad = full or backbone.is_head(name)


def apply_plan(backbone: Backbone, plan: Plan) -> None:
    """Add the plan's strategies to a freshly built backbone and verify the exact count."""
    if len(plan.layers) != len(backbone.layers):
        raise PeftdsError(f"plan has {len(plan.layers)} layers but the model's stack has {len(backbone.layers)}")
    freeze(backbone, full=plan.full)
    if not plan.full:
        used = [n for n in APPLY_ORDER if any(n in lp.modules for lp in plan.layers)]
        device = next(backbone.model.parameters()).device
        ctx = torch.device(device) if device.type == "meta" else contextlib.nullcontext()
        with ctx:
            for name in used:
                get_strategy(name).prepare(backbone, plan.hparams.get(name, {}))
            for layer, lp in zip(backbone.layers, plan.layers):
                for name in APPLY_ORDER:
                    if name in lp.modules:
                        get_strategy(name).apply(backbone, layer, lp.modules[name], plan.hparams.get(name, {}))
        param = next(backbone.model.parameters())
        for p in backbone.model.parameters():  # strategies create fp32 params on CPU: follow the backbone
            if p.device != param.device:
                p.data = p.data.to(param.device)
    built, _ = count_trainable(backbone.model, backbone)
    if built != plan.trainable_params:
        raise PeftdsError(
            f"internal error: design '{plan.design}' plans {plan.trainable_params} trainable params "
            f"but the built model has {built}"
        )


def resolve(
    backbone: Backbone,
    design_cfg: Mapping[str, Any],
    budget_fraction: float,
    seed: int = 0,
    model_cfg: Mapping[str, Any] | None = None,
) -> Plan:
    design = Design.from_config(design_cfg)
    n_backbone = backbone.backbone_params()
    plan = design.resolve(layer_shapes(backbone), n_backbone, budget_params(budget_fraction, n_backbone), seed=seed)
    plan.model = convert(ModelConfig, model_cfg).to_dict() if model_cfg is not None else {}
    return plan


def build(
    model_cfg: Mapping[str, Any],
    design_cfg: Mapping[str, Any],
    budget_fraction: float,
    num_labels: int | None = None,
    seed: int = 0,
    device: str | None = None,
) -> Built:
    """Build the backbone from its model config, resolve the design on it and apply it."""
    model = build_model(model_cfg, num_labels=num_labels, device=device)
    backbone = Backbone(model)
    plan = resolve(backbone, design_cfg, budget_fraction, seed=seed, model_cfg=model_cfg)
    apply_plan(backbone, plan)
    return Built(model, backbone, plan)


def save_trained(built: Built, out_dir: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the trained parameters (strategy params + head, safetensors) and the resolved plan (YAML)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {n: p.detach().to("cpu").contiguous() for n, p in built.model.named_parameters() if p.requires_grad}
    save_file(tensors, str(out / WEIGHTS_FILE))
    # the classification head's outputs; None without a head (text-to-text, a causal LM's frozen LM head), so
    # that load_trained rebuilds the same model class
    num_labels = built.model.config.num_labels if built.backbone.head_parameters() else None
    record = {"plan": built.plan.to_dict(), "num_labels": num_labels}
    record.update(extra or {})
    (out / PLAN_FILE).write_text(yaml.safe_dump(record, sort_keys=False))
    return out


def load_trained(run_dir: str | Path, model_cfg: Mapping[str, Any] | None = None) -> Built:
    """Rebuild the backbone the plan was made for, apply the plan and load the trained tensors."""
    from safetensors.torch import load_file

    run = Path(run_dir)
    if not (run / PLAN_FILE).exists():
        raise PeftdsError(f"no trained design in {run} (missing {PLAN_FILE})")
    record = yaml.safe_load((run / PLAN_FILE).read_text())
    plan = Plan.from_dict(record["plan"])
    seq2seq_labels = record.get("num_labels")
    model = build_model(model_cfg or plan.model, num_labels=seq2seq_labels)
    backbone = Backbone(model)
    apply_plan(backbone, plan)
    tensors = load_file(str(run / WEIGHTS_FILE))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    unknown = [n for n in tensors if n not in params]
    if missing or unknown:
        raise PeftdsError(
            f"{run / WEIGHTS_FILE} does not match the plan (missing {missing[:3]}, unexpected {unknown[:3]})"
        )
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)
    return Built(model, backbone, plan)
