"""format=merged: round trips through plain transformers in a process without peftds."""

import pytest

from tests.export.conftest import FAMILIES

TOLERANCE = 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("model", [c.model for c in FAMILIES])
def test_merged_checkpoint_gives_peftds_logits_without_peftds(round_trips, model):
    """AutoModelFor...from_pretrained(out) without peftds: the family's own class and the same logits, LoRA
    and (where the architecture has the biases) BitFit folded in. Merging rounds W + alpha/r · B A to float32
    once, so the bound is 1e-5 or peftds' own float32 error on that model, whichever is larger: the tiny
    seq2seq models (24 and 12 layers, BART at init_std 0.5) amplify one rounding per weight past 1e-5,
    and their own float32 forward is further from exact arithmetic than the merged one is from it."""
    report = round_trips["report"]
    assert not report["peftds_importable"] and report["peftds_loaded"] == []
    r = round_trips[(model, "merged")]
    assert r["moved"] > 1e-3
    assert r["diff"] <= max(TOLERANCE, r["noise32"])
    assert "Peft" not in r["loaded"]["class"]
