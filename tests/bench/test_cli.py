"""peftds.bench.cli: only the bench commands compose `bench`; where records go (bench.out, hydra.run.dir);
`bench.designs` composed per design."""

import json
from pathlib import Path

import pytest

from peftds.bench.cli import extra_designs, main, out_path, read_config, run_dir_of, with_default_model
from peftds.cli import main as peftds_main
from peftds.config.compose import compose
from peftds.errors import PeftdsError

QUICK = [
    "model=tiny_bert",
    "design=lora",
    "bench.variants=[floor]",
    "bench.memory=false",
    "bench.batch_size=2",
    "bench.source_len=8",
    "bench.steps=1",
    "bench.warmup=0",
]


def test_bench_group_only_for_bench_commands():
    assert "bench" not in compose([])  # what `peftds inspect` / `peftds train` compose
    cfg = read_config(["bench.steps=3"]).bench
    assert cfg.steps == 3 and cfg.batch_size == 8
    gpu = read_config(["bench=gpu", "bench.steps=3"]).bench
    assert gpu.batch_size == 128 and gpu.steps == 3 and gpu.lora_alpha == 16
    assert read_config(["+bench=gpu"]).bench.batch_size == 128
    assert with_default_model(["bench.steps=3"], "tiny_t5") == ["model=tiny_t5", "bench.steps=3"]
    assert with_default_model(["model=tiny_bart"], "tiny_t5") == ["model=tiny_bart"]


def test_out_path_order():
    assert out_path("/x/b.json", Path("/rd"), "bench") == Path("/x/b.json")  # bench.out wins
    assert out_path(None, Path("/rd"), "bench_data") == Path("/rd/bench_data.json")
    default = out_path(None, None, "bench_eval")
    assert default.parts[:2] == ("outputs", "bench_eval") and default.name == "bench_eval.json"
    assert run_dir_of(["bench.steps=2"]) is None
    assert run_dir_of(["hydra.run.dir=/tmp/r"]) == Path("/tmp/r")
    assert run_dir_of(["hydra.run.dir=/tmp/${now:%Y}"]).name.isdigit()


def test_bench_honours_hydra_run_dir(capsys, tmp_path):
    run_dir = tmp_path / "run"
    assert peftds_main(["bench", *QUICK, f"hydra.run.dir={run_dir}"]) == 0
    rec = json.loads((run_dir / "bench.json").read_text())
    assert rec["out"] == str(run_dir / "bench.json") and list(rec["variants"]) == ["floor"]
    assert f"-> {run_dir / 'bench.json'}" in capsys.readouterr().out
    out = tmp_path / "given.json"  # bench.out wins over hydra.run.dir
    assert main(["bench", *QUICK, f"hydra.run.dir={tmp_path / 'other'}", f"bench.out={out}"]) == 0
    assert out.is_file() and not (tmp_path / "other").exists()


def test_bad_overrides_are_one_line_errors(capsys):
    assert main(["bench", "model=tiny_bert", "bench.variants=[design,nonesuch]"]) == 2
    assert "bench.variants" in capsys.readouterr().err
    assert main(["bench", "bench.steps=["]) == 2
    assert "peftds: error:" in capsys.readouterr().err
    assert main(["nonesuch"]) == 2 and "usage" in capsys.readouterr().err


def test_extra_designs_composed_per_design():
    got = extra_designs(["model=tiny_bert", "design=lora", "bench.steps=2"], ["adapter"])
    assert got["design:adapter"]["name"] == "adapter"
    with pytest.raises(PeftdsError, match="nonesuch"):  # a typo stops the bench before any model loads
        extra_designs(["model=tiny_bert", "design=lora"], ["adapter", "nonesuch"])
    with pytest.raises(PeftdsError):
        with_default_model(["bench.steps=["], "tiny_t5")
