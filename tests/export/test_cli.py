"""`peftds export` end to end: a real training run exported in both formats, what each format refuses (one
line, exit 2, nothing written), and the out folder rules."""

import json

import pytest
import yaml

from peftds.export.source import layer_ranges
from tests.export.conftest import LORA_BITFIT, LORA_RANKS, make_run
from tests.helpers import error_lines, run_main

UNIPELT = {
    "name": "unipelt",
    "grouping": {"groups": 1},
    "strategies": [["adapter", "prefix", "lora"]],
    "hparams": {"adapter": {"gated": True}, "prefix": {"gated": True}, "lora": {"gated": True}},
}
BITFIT = {"name": "bitfit", "grouping": {"groups": 1}, "strategies": [["bitfit"]]}
GATED_LORA = {
    "name": "gated_lora",
    "grouping": {"groups": 1},
    "strategies": [["lora"]],
    "hparams": {"lora": {"gated": True}},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("runs")
    made = {name: make_run(root, "tiny_bert", d) for name, d in [("lora", LORA_RANKS), ("lora_bitfit", LORA_BITFIT)]}
    made.update({name: make_run(root, "tiny_bert", d) for name, d in [("unipelt", UNIPELT), ("bitfit", BITFIT)]})
    made["gated_lora"] = make_run(root, "tiny_bert", GATED_LORA)
    made["t5_bitfit"] = make_run(root, "tiny_t5", LORA_BITFIT)
    made["full"] = make_run(root, "tiny_bert", {"name": "full", "full": True})
    return made


REFUSALS = [
    (
        "unipelt",
        "peft",
        "format=peft cannot hold adapter (layers 0-5), prefix (layers 0-5), UniPELT LoRA gates (layers 0-5)",
    ),
    ("unipelt", "merged", "format=merged cannot hold adapter (layers 0-5), prefix (layers 0-5), UniPELT LoRA gates"),
    ("gated_lora", "merged", "format=merged cannot hold UniPELT LoRA gates (layers 0-5)"),
    ("lora_bitfit", "peft", "format=peft cannot hold BitFit on layers 3-5: peft trains every bias"),
    ("bitfit", "peft", "format=peft holds LoRA, and design 'bitfit' has none: format=merged holds it"),
    ("full", "peft", "format=peft holds a LoRA adapter, not a full fine-tune: format=merged holds it"),
    ("t5_bitfit", "merged", "format=merged: a plain t5 checkpoint has no decoder.block.0.layer.0.SelfAttention.k.bias"),
]


@pytest.mark.parametrize("run,fmt,message", REFUSALS, ids=[f"{r}-{f}" for r, f, _ in REFUSALS])
def test_what_each_format_refuses_is_one_line_and_nothing_written(runs, run, fmt, message, tmp_path, capsys):
    code, _, err = run_main(capsys, "export", str(runs[run]), f"format={fmt}", f"out={tmp_path / 'out'}")
    assert code == 2 and message in error_lines(err)[0] and len(error_lines(err)) == 1, err
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []  # not even a staging folder


def test_bitfit_merges_and_full_fine_tuning_merges(runs, tmp_path, capsys):
    for run in ("bitfit", "full"):
        code, _, err = run_main(capsys, "export", str(runs[run]), "format=merged", f"out={tmp_path / run}")
        assert code == 0, err
        assert (tmp_path / run / "model.safetensors").is_file() and (tmp_path / run / "config.json").is_file()


def test_out_folder_is_never_silently_replaced(runs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    code, _, err = run_main(capsys, "export", str(runs["lora"]), f"out={out}")
    assert code == 2 and "not empty (overwrite=true replaces it)" in err and (out / "mine.txt").read_text() == "keep"
    code, _, err = run_main(capsys, "export", str(runs["lora"]), f"out={runs['lora']}", "overwrite=true")
    assert code == 2 and "would replace the run it exports" in err
    code, stdout, err = run_main(capsys, "export", str(runs["lora"]), f"out={out}", "overwrite=true")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert "format=peft" in stdout and "KiB" in stdout


def test_layer_ranges():
    assert layer_ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8" and layer_ranges([3]) == "3"


@pytest.mark.slow
def test_a_trained_run_exports_with_its_scores_in_the_card(tmp_path, capsys, data_dir, one_thread):
    """A real `peftds train` run -> both formats; the card's front matter carries the run's score."""
    run = tmp_path / "run"
    code, _, err = run_main(
        capsys, "train", "model=tiny_bert", "design=lora", "task=sst2", "data.max_train_samples=32",
        "data.max_eval_samples=32", "train.max_steps=2", "train.progress=false", f"hydra.run.dir={run}",
    )  # fmt: skip
    assert code == 0, err
    record = json.loads((run / "result.json").read_text())
    for fmt, library in (("peft", "peft"), ("merged", "transformers")):
        code, _, err = run_main(capsys, "export", str(run), f"format={fmt}", f"out={tmp_path / fmt}")
        assert code == 0, err
        card = (tmp_path / fmt / "README.md").read_text()
        front = yaml.safe_load(card.split("---")[1])
        assert front["library_name"] == library and "lora" in front["tags"] and front["datasets"] == ["nyu-mll/glue"]
        result = front["model-index"][0]["results"][0]
        assert result["dataset"]["config"] == "sst2" and result["dataset"]["split"] == "validation"
        assert result["metrics"][0] == {
            "type": "accuracy",
            "value": round(record["best"]["accuracy"], 4),
            "name": "accuracy",
        }
        assert f"{record['trainable_params']:,}" in card and "| transformers |" in card and "## Per-layer plan" in card
    adapter = (tmp_path / "peft" / "adapter_model.safetensors").stat().st_size
    params = (run / "design" / "strategy_params.safetensors").stat().st_size
    print(f"\nadapter {adapter} B, strategy_params {params} B, run dir "
          f"{sum(p.stat().st_size for p in run.rglob('*') if p.is_file())} B")  # fmt: skip
