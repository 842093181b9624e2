"""A peft LoRA config (``adapter_config.json``, or an adapter folder holding one) as a peftds design.

``design=path/to/adapter_config.json`` composes a design whose only content is ``peft_config: <path>``; the
command's entry (:class:`peftds.run_config.RunConfig`) turns it into the equivalent concrete design for the
command's model: LoRA with ``fixed_sizes`` (the rank of every layer), the targets (generic q, k, v, o, gate,
up, down), alpha and dropout. Which modules the config adapts, and with which rank and alpha, is decided by
peft's own matching (``check_target_module_exists``, ``get_pattern_key``) on the model's module names, and
each module is located in the stack through the backbone's layer descriptions, so every family works alike.

What the design space cannot express stops in one line naming it: another tuner, DoRA, rsLoRA scaling,
non-default initialisation, trained biases, other settings that change the model; a target that is no
attention or feed-forward projection; a LoRA on a fused projection as a whole; a layer that adapts a target
on one attention but not the other; different targets or ranks inside a layer, or different alphas.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peftds.config.compose import PEFT_ADAPTER_CONFIG
from peftds.errors import PeftdsError
from peftds.model.backbones import Backbone, build_model, linear_dims

PEFT_CONFIG_KEY = "peft_config"  # the design key holding the path of a peft config
# LoraConfig fields whose value the conversion reads or that do not change what is trained
UNDERSTOOD = {
    "r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules", "layers_to_transform",
    "layers_pattern", "rank_pattern", "alpha_pattern", "modules_to_save", "task_type", "base_model_name_or_path",
    "revision", "inference_mode", "peft_type", "fan_in_fan_out", "auto_mapping", "peft_version",
}  # fmt: skip
FEATURE_NAMES = {"use_dora": "DoRA (use_dora)", "use_rslora": "rsLoRA scaling (use_rslora)"}
HEAD_NAMES = ("classifier", "score")  # what peft's task types put into modules_to_save themselves


def config_path(ref: str | Path) -> Path:
    """The adapter_config.json a `design=` value names: the file itself or the folder holding it."""
    path = Path(ref).expanduser()
    if path.is_dir():
        path = path / PEFT_ADAPTER_CONFIG
    if not path.is_file():
        raise PeftdsError(f"peft config not found: {path}")
    return path


def read_lora_config(path: Path) -> Any:
    """The file as peft's LoraConfig; one line for a file that is no peft LoRA config."""
    from peft import LoraConfig

    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PeftdsError(f"{path}: not a readable JSON peft config ({e})") from None
    if not isinstance(raw, dict) or "peft_type" not in raw:
        raise PeftdsError(f"{path}: not a peft config (no peft_type)")
    if raw["peft_type"] != "LORA":
        raise PeftdsError(f"{path}: peft_type {raw['peft_type']} is another tuner: only LoRA configs are designs")
    fields = {f.name for f in dataclasses.fields(LoraConfig)}
    unknown = sorted(k for k, v in raw.items() if k not in fields and v not in (None, False, [], {}, ""))
    if unknown:
        raise PeftdsError(f"{path}: settings this peft does not know: {', '.join(unknown)}")
    try:
        return LoraConfig(**{k: v for k, v in raw.items() if k in fields})
    except (TypeError, ValueError) as e:
        raise PeftdsError(f"{path}: {str(e).splitlines()[0]}") from None


def unexpressible_settings(config: Any) -> list[str]:
    """Every setting that differs from peft's default and changes what is trained, beyond what a design holds."""
    from peft import LoraConfig

    default = LoraConfig()
    found = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in UNDERSTOOD or value == getattr(default, f.name) or value in (None, {}, []):
            continue
        found.append(FEATURE_NAMES.get(f.name, f"{f.name}={value!r}"))
    return found


def beyond_the_head(config: Any, backbone: Backbone) -> list[str]:
    """modules_to_save entries that are not the task head (a head trains in every peftds design anyway)."""
    heads = {p.rstrip(".") for p in backbone.family.head_prefixes} | set(HEAD_NAMES)
    return [m for m in config.modules_to_save or [] if not any(h == m or h.endswith(f".{m}") for h in heads)]


def projection_places(backbone: Backbone) -> dict[str, list[tuple[int, str, bool]]]:
    """Module name -> [(stack position, generic target, fused)] of every projection LoRA can adapt."""
    names = {id(m): n for n, m in backbone.model.named_modules()}
    places: dict[str, list[tuple[int, str, bool]]] = {}
    for layer in backbone.layers:
        spots = [(site.projections, site.slices) for site in layer.attentions]
        spots.append((layer.mlp, layer.mlp_slices))
        for projections, slices in spots:
            for target, (parent, attr) in projections.items():
                name = f"{names[id(parent)]}.{attr}".lstrip(".")
                places.setdefault(name, []).append((layer.index, target, target in slices))
    return places


def adapted_modules(config: Any, backbone: Backbone) -> dict[str, tuple[int, float]]:
    """Module name -> (rank, alpha) of every module peft's matching adapts on this model."""
    import copy

    from peft.tuners.tuners_utils import check_target_module_exists
    from peft.utils.other import get_pattern_key

    model = backbone.model
    linear = []
    for name, module in model.named_modules():
        try:
            linear_dims(module)
        except PeftdsError:
            continue
        linear.append(name)
    config = copy.copy(config)
    if config.target_modules == "all-linear":  # peft's shorthand: every linear layer but the output layer
        output = model.get_output_embeddings()
        outputs = {n for n, m in model.named_modules() if m is output}
        config.target_modules = [n for n in linear if n not in outputs and not backbone.is_head(f"{n}.")]
    if not config.target_modules:
        raise PeftdsError("the peft config names no target_modules")
    adapted = {}
    for name in linear:
        found = check_target_module_exists(config, name)
        if found and type(found).__name__ != "_ExcludedModule":
            rank = config.rank_pattern.get(get_pattern_key(list(config.rank_pattern), name), config.r)
            alpha = config.alpha_pattern.get(get_pattern_key(list(config.alpha_pattern), name), config.lora_alpha)
            adapted[name] = (int(rank), float(alpha))
    if not adapted:
        raise PeftdsError(f"the peft config's target_modules {config.target_modules!r} match no module of this model")
    return adapted


def design_from_peft(config: Any, backbone: Backbone, name: str) -> dict[str, Any]:
    """The concrete design equal to this LoRA config on this model, or PeftdsError naming what it cannot hold."""
    problems = unexpressible_settings(config)
    extra = beyond_the_head(config, backbone)
    if extra:
        problems.append(f"modules_to_save {extra} (beyond the task head)")
    adapted = adapted_modules(config, backbone)
    places = projection_places(backbone)
    outside = sorted(n for n in adapted if n not in places)
    if outside:
        more = f" and {len(outside) - 3} more" if len(outside) > 3 else ""
        problems.append(f"targets that are no attention or feed-forward projection: {', '.join(outside[:3])}{more}")
    fused = sorted(n for n in adapted if any(f for _, _, f in places.get(n, [])))
    if fused:
        problems.append(f"a LoRA on the fused projection {fused[0]} as a whole (peftds adapts each part on its own)")
    if problems:
        raise PeftdsError(f"the peft config holds what a design cannot express: {'; '.join(problems)}")
    per_layer: dict[int, dict[str, set[int]]] = {}
    for module, (rank, _) in adapted.items():
        for index, target, _ in places[module]:
            per_layer.setdefault(index, {}).setdefault(target, set()).add(rank)
    target_sets = {tuple(sorted(t)) for t in per_layer.values()}
    if len(target_sets) > 1:
        raise PeftdsError(f"the peft config adapts different targets in different layers ({sorted(target_sets)})")
    targets = sorted(next(iter(target_sets)))
    for index, ranks in per_layer.items():
        if len(set().union(*ranks.values())) > 1:
            detail = ", ".join(f"{t} {sorted(r)}" for t, r in sorted(ranks.items()))
            raise PeftdsError(f"the peft config gives layer {index} different ranks ({detail}): a layer has one rank")
    # peftds adapts a target on every attention of a layer (self and cross): the config must too
    expected = {m for m, spots in places.items() for i, t, _ in spots if i in per_layer and t in targets}
    missing = sorted(expected - set(adapted))
    if missing:
        raise PeftdsError(f"the peft config adapts a target on some attentions of a layer but not {missing[0]}")
    alphas = {alpha for _, alpha in adapted.values()}
    if len(alphas) > 1:
        raise PeftdsError(f"the peft config gives modules different alphas ({sorted(alphas)}): a design has one")
    sizes = [min(per_layer[i][targets[0]]) if i in per_layer else 0 for i in range(len(backbone.layers))]
    alpha = alphas.pop()
    lora = {"targets": targets, "alpha": int(alpha) if alpha == int(alpha) else alpha, "dropout": config.lora_dropout}
    return {"name": name, "fixed_sizes": {"lora": sizes}, "hparams": {"lora": lora}}


def resolve_peft_design(design_cfg: Mapping[str, Any], model_cfg: Any) -> dict[str, Any]:
    """A composed design: unchanged, or (holding `peft_config`) the design its peft config is on this model."""
    if PEFT_CONFIG_KEY not in design_cfg:
        return dict(design_cfg)
    path = config_path(str(design_cfg[PEFT_CONFIG_KEY]))
    config = read_lora_config(path)
    backbone = Backbone(build_model(model_cfg, num_labels=2, device="meta"))
    name = str(design_cfg.get("name") or path.parent.name)
    design = design_from_peft(config, backbone, name)
    hparams = {k: dict(v or {}) for k, v in (design_cfg.get("hparams") or {}).items()}
    hparams["lora"] = {**hparams.get("lora", {}), **design["hparams"]["lora"]}
    made_for = {"model": design_cfg["model"]} if design_cfg.get("model") else {}
    return {**design, **made_for, "hparams": hparams, "note": f"from the peft config {path}"}
