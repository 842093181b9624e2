"""`peftds inspect`: the per-layer plan of a design on a model, with exact counts of the built model."""

from __future__ import annotations

import json
from typing import Any

from peftds.config.compose import compose_for
from peftds.design.apply import Built, build
from peftds.errors import PeftdsError
from peftds.model.backbones import count_trainable
from peftds.model.strategies import get_strategy
from peftds.run_config import RunConfig


def report(built: Built, model_name: str) -> dict[str, Any]:
    """The inspect JSON object (counts are those of the built model)."""
    plan, backbone = built.plan, built.backbone
    trainable, _ = count_trainable(built.model, backbone)
    layers = []
    for lp, layer in zip(plan.layers, backbone.layers):
        modules = {}
        if plan.full:  # every weight of the block trains
            modules["full"] = {"params": sum(p.numel() for p in layer.block.parameters())}
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
        "full": plan.full,
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
            if name == "full":
                parts.append("full fine-tuning (every weight)")
                continue
            parts.append(f"{name}({get_strategy(name).size_symbol}={m['size']})" if "size" in m else name)
        params = sum(m["params"] for m in layer["modules"].values())
        tuned = layer["group"] in rep["tuned"]
        desc = " + ".join(parts) if parts else ("-" if not tuned else "")
        rows.append(f"{layer['index']:>5}  {layer['stack']:<7}  {layer['group']:>5}  {desc:<44} {params:>8,}")
    b, t = rep["backbone_params"], rep["trainable_params"]
    budget = rep["budget_params"]
    in_layers = sum(m["params"] for layer in rep["layers"] for m in layer["modules"].values())
    if rep.get("full"):  # no budget applies; the layer rows leave out embeddings and final norms
        budget_line = f"budget           {'none':>14}  (full fine-tuning: every backbone weight trains)"
        share = f"{100 * t / b:.3f}% of backbone; {t - in_layers:,} outside the layer blocks, e.g. embeddings"
    else:
        budget_line = f"budget           {budget:>14,}"
        share = f"{100 * t / b:.3f}% of backbone, {100 * t / max(budget, 1):.1f}% of budget"
    rows += [
        "",
        f"model {rep['model']}  design {rep['design']}  groups {rep['groups']}  tuned {rep['tuned']}  "
        f"allocation {rep['allocation']}",
        f"backbone params  {b:>14,}",
        budget_line,
        f"trainable        {t:>14,}  ({share})",
        f"head (apart)     {rep['head_params']:>14,}",
    ]
    return "\n".join(rows)


def run(run_cfg: RunConfig, fmt: str = "table") -> str:
    """Build on the meta device: counts need shapes, not weights (works offline for hub models)."""
    built = build(
        run_cfg.model, run_cfg.design_config, run_cfg.budget.fraction, num_labels=2, seed=run_cfg.seed, device="meta"
    )
    rep = report(built, run_cfg.model.name)
    return json.dumps(rep) if fmt == "json" else table(rep)


def cmd_inspect(argv: list[str]) -> int:
    cfg = compose_for(("model", "budget", "design"), argv)
    fmt = cfg.get("format")
    if fmt not in ("table", "json"):
        raise PeftdsError(f"format must be table or json, got {fmt!r}")
    print(run(RunConfig.from_composed(cfg), fmt))
    return 0
