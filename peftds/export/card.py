"""The model card (README.md) every export writes, in the hub's format: YAML front matter (base model,
library, tags, datasets, metrics with the run's scores as a model-index) and a body with the design in
words, its per-layer plan, budget and trainable count, the training regime and the package versions."""

from __future__ import annotations

from typing import Any

import yaml

from peftds.design.inspect import report, table
from peftds.export.source import TrainedRun, auto_class
from peftds.files import versions
from peftds.model.strategies import get_strategy

CARD_FILE = "README.md"
TRAIN_KEYS = ("epochs", "max_steps", "lr", "batch_size", "grad_accum", "scheduler", "warmup_ratio", "weight_decay")
LOADERS = {
    "peft": (
        "from peft import PeftModel\nfrom transformers import {auto}\n\n"
        'base = {auto}.from_pretrained("{base}"{labels})\nmodel = PeftModel.from_pretrained(base, "<this folder>")'
    ),
    "merged": 'from transformers import {auto}\n\nmodel = {auto}.from_pretrained("<this folder>")',
}


def hub_base_model(model_cfg: dict[str, Any]) -> str | None:
    """The base model's hub id, when the run's model is one (not a random init, a package or a local folder)."""
    name = model_cfg.get("name_or_path")
    if not model_cfg.get("pretrained", True) or not name or name.startswith(("pkg:", "/", ".", "~")):
        return None
    return str(name)


def random_init(model_cfg: dict[str, Any]) -> str:
    if model_cfg.get("pretrained", True) and model_cfg.get("name_or_path"):
        return ""
    arch, shape, seed = model_cfg.get("arch"), model_cfg.get("shape"), model_cfg.get("init_seed")
    return f", a random init of `{arch}` with shape {shape}, seed {seed}"


def design_in_words(run: TrainedRun) -> list[str]:
    plan = run.built.plan
    if plan.full:
        return ["Full fine-tuning: every backbone parameter trained."]
    lines = [
        f"`{plan.compact()}`: {len(plan.groups)} group(s) of consecutive layers (sizes {plan.groups}), "
        f"tuned groups {plan.tuned}, `{plan.allocation}` allocation of the budget over them."
    ]
    for g, subset in enumerate(plan.strategies, 1):
        if g not in plan.tuned or not subset:
            lines.append(f"- group {g}: frozen")
            continue
        parts = []
        for name in subset:
            hp = {k: v for k, v in plan.hparams.get(name, {}).items() if v not in (None, {}, [])}
            sizes = sorted({lp.modules[name] for lp in plan.layers if lp.group == g and name in lp.modules})
            symbol = get_strategy(name).size_symbol
            size = f" {symbol} = {', '.join(map(str, sizes))}" if symbol else ""
            settings = ", ".join(f"{k} {v}" for k, v in hp.items())
            parts.append(f"{name}{size}" + (f" ({settings})" if settings else ""))
        lines.append(f"- group {g}: " + "; ".join(parts))
    return lines


def front_matter(run: TrainedRun, fmt: str, task: dict[str, Any] | None) -> dict[str, Any]:
    plan, rec = run.built.plan, run.record
    base = hub_base_model(plan.model)
    seq2seq = run.built.backbone.seq2seq
    pipeline = "text2text-generation" if seq2seq else "text-classification"
    strategies = sorted({s for lp in plan.layers for s in lp.modules}) or (["full-fine-tuning"] if plan.full else [])
    front: dict[str, Any] = {}
    if base:
        front["base_model"] = base
    front["library_name"] = "peft" if fmt == "peft" else "transformers"
    front["pipeline_tag"] = pipeline
    front["tags"] = ["peftds", *strategies, *([] if fmt == "peft" else ["merged"])]
    hub = (task or {}).get("hub") or {}
    if hub.get("path"):
        front["datasets"] = [hub["path"]]
    best = rec.get("best") or {}
    metrics = [m for m in (task or {}).get("metrics", []) if isinstance(best.get(m), (int, float))]
    if metrics:
        front["metrics"] = metrics
        front["model-index"] = [
            {
                "name": f"{plan.design}-{rec.get('task')}",
                "results": [
                    {
                        "task": {"type": pipeline},
                        "dataset": {
                            "name": rec.get("task"),
                            "type": hub.get("path", rec.get("task")),
                            **({"config": hub["name"]} if hub.get("name") else {}),
                            "split": rec.get("eval_split", "validation"),
                        },
                        "metrics": [{"type": m, "value": round(float(best[m]), 4), "name": m} for m in metrics],
                    }
                ],
            }
        ]
    return front


def model_card(run: TrainedRun, fmt: str) -> str:
    """The card's text (computed before a merged export folds the model)."""
    plan, rec, model = run.built.plan, run.record, run.built.model
    config = rec.get("config") or {}
    task = config.get("task")
    model_name = plan.model.get("name", "model")
    rep = report(run.built, model_name)
    title = f"{plan.design} on {rec.get('task') or 'its task'} ({model_name})"
    base = hub_base_model(plan.model) or plan.model.get("name_or_path") or "<base model folder>"
    auto = auto_class(model)
    labels = f", num_labels={run.num_labels}" if run.num_labels else ""
    body = [
        "---",
        yaml.safe_dump(front_matter(run, fmt, task), sort_keys=False).rstrip(),
        "---",
        "",
        f"# {title}",
        "",
        f"A design trained with peftds and exported as `format={fmt}`. Base model: `{base}`"
        + ("" if hub_base_model(plan.model) else f" (peftds model `{model_name}`{random_init(plan.model)})")
        + ".",
        "",
        "## Design",
        "",
        *design_in_words(run),
        "",
        "## Per-layer plan",
        "",
        "```text",
        table(rep),
        "```",
        "",
        "## Budget",
        "",
        f"- trainable parameters (head excluded): {rep['trainable_params']:,} of a budget of "
        f"{rep['budget_params']:,} ({100 * rep['trainable_params'] / rep['backbone_params']:.3f}% of the "
        f"{rep['backbone_params']:,}-parameter backbone)",
        f"- task head (trained, counted apart): {rep['head_params']:,}",
        "",
        "## Training",
        "",
    ]
    train = config.get("train") or {}
    if rec:
        body += [f"- task: {rec.get('task')}, seed {rec.get('seed')}, {rec.get('train_examples')} training examples"]
        body += [f"- {k}: {train[k]}" for k in TRAIN_KEYS if k in train and train[k] != -1]
        best = rec.get("best") or {}
        if "score" in rec:
            body += [
                f"- {rec.get('eval_split')} score {rec['score']:.2f} (best epoch {best.get('epoch')} of "
                f"{len(rec.get('epochs') or [])})"
            ]
    else:
        body += ["- no result.json beside the design: the training regime is unknown"]
    body += [
        "",
        "## Use",
        "",
        "```python",
        LOADERS[fmt].format(auto=auto, base=base, labels=labels),
        "```",
        "",
        "## Versions",
        "",
        "| package | trained with | exported with |",
        "|---|---|---|",
    ]
    trained_with = rec.get("versions") or {}
    now = versions()
    body += [f"| {p} | {trained_with.get(p, '-')} | {now.get(p, '-')} |" for p in sorted(set(now) | set(trained_with))]
    return "\n".join(body) + "\n"
