"""`peftds inspect`: the per-layer plan of a design on a model, with exact counts of the built model."""
from __future__ import annotations

import json
from typing import Any

from peftds.design.apply import Built, build
from peftds.model.backbones import count_trainable
from peftds.model.strategies import get_strategy


def report(built: Built, model_name: str) -> dict[str, Any]:
    """The inspect JSON object (counts are those of the built model)."""
    plan, backbone = built.plan, built.backbone
    trainable, _ = count_trainable(built.model, backbone)
    layers = []
    for lp in plan.layers:
        modules = {}
        for name in ("adapter", "prefix", "lora", "bitfit"):
            if name in lp.modules:
                entry = {"params": lp.params[name]}
                if name != "bitfit":
                    entry = {"size": lp.modules[name], **entry}
                modules[name] = entry
        layers.append({"index": lp.index, "stack": lp.stack, "group": lp.group, "modules": modules})
    return {
        "model": model_name,
        "design": plan.design,
        "backbone_params": plan.backbone_params,
        "budget_params": plan.budget_params,
        "trainable_params": trainable,
        "head_params": backbone.head_params(),
        "groups": list(plan.groups),
        "tuned": list(plan.tuned),
        "allocation": plan.allocation,
        "layers": layers,
    }


def table(rep: dict[str, Any]) -> str:
    rows = ["layer  stack    group  strategies (sizes)                           params"]
    for layer in rep["layers"]:
        parts = []
        for name, m in layer["modules"].items():
            parts.append(f"{name}({get_strategy(name).size_symbol}={m['size']})" if "size" in m else name)
        params = sum(m["params"] for m in layer["modules"].values())
        tuned = layer["group"] in rep["tuned"]
        desc = " + ".join(parts) if parts else ("-" if not tuned else "")
        rows.append(f"{layer['index']:>5}  {layer['stack']:<7}  {layer['group']:>5}  {desc:<44} {params:>8,}")
    b, t = rep["backbone_params"], rep["trainable_params"]
    budget = rep["budget_params"]
    rows += [
        "",
        f"model {rep['model']}  design {rep['design']}  groups {rep['groups']}  tuned {rep['tuned']}  "
        f"allocation {rep['allocation']}",
        f"backbone params  {b:>14,}",
        f"budget           {budget:>14,}",
        f"trainable        {t:>14,}  ({100 * t / b:.3f}% of backbone, {100 * t / max(budget, 1):.1f}% of budget)",
        f"head (apart)     {rep['head_params']:>14,}",
    ]
    return "\n".join(rows)


def run(cfg) -> str:
    """Build on the meta device unless asked otherwise: counts need shapes, not weights."""
    device = cfg.get("inspect_device", "meta")
    built = build(cfg.model, cfg.design, float(cfg.budget.fraction), num_labels=2, seed=int(cfg.seed),
                  device=None if device in (None, "cpu") else device)
    name = cfg.model.get("name_or_path") or cfg.model.get("arch")
    rep = report(built, str(cfg.get("model_name") or name))
    return json.dumps(rep) if cfg.format == "json" else table(rep)
