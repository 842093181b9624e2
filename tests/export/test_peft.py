"""format=peft: round trips through peft in a process without peftds, every module's rank, refusals."""

import pytest

from peftds.export.peft import peft_bias_mode
from tests.export.conftest import FAMILIES

TOLERANCE = 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("model", [c.model for c in FAMILIES])
def test_peft_adapter_gives_peftds_logits_without_peftds(round_trips, model):
    """PeftModel.from_pretrained(base, out) in a process that cannot import peftds: same logits (<= 1e-5 with
    the same weights in float64; float32 differs by float32's own rounding, reported), every LoRA module
    built with its own rank (two or more ranks per design: rank_pattern is exercised) and scaling exactly 1
    (alpha/r folded into lora_B)."""
    report = round_trips["report"]
    assert not report["peftds_importable"] and report["peftds_loaded"] == []
    r = round_trips[(model, "peft")]
    assert r["moved"] > 1e-3  # the design changes the logits: equality below is not the base model's
    assert r["diff"] <= TOLERANCE
    assert len(set(r["expected_ranks"].values())) >= 2
    assert r["loaded"]["ranks"] == r["expected_ranks"]  # no pattern key matched nothing, no module missed
    assert r["loaded"]["scalings"] == [1.0]


def test_bias_mode_is_exactly_the_trained_set():
    every, lora = {"a.bias", "b.bias", "c.bias"}, {"a.bias"}
    assert peft_bias_mode(set(), every, lora) == "none"
    assert peft_bias_mode(set(every), every, lora) == "all"
    assert peft_bias_mode({"a.bias"}, every, lora) == "lora_only"
    assert peft_bias_mode({"a.bias", "b.bias"}, every, lora) is None  # a BitFit subset peft cannot name
    assert peft_bias_mode({"d.bias"}, every, lora) is None  # a bias the base model does not have
