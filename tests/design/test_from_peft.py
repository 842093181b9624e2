"""peft LoRA configs as designs: the converted design is peft's LoRA (same modules, ranks, scaling, count,
logits), on every kind of stack; what the design space cannot express stops in one line naming it."""

import json
import re

import pytest
import torch

from peftds.config.compose import compose
from peftds.design.apply import build
from peftds.design.from_peft import design_from_peft, read_lora_config
from peftds.errors import PeftdsError
from peftds.model.backbones import Backbone, build_model
from peftds.model.strategies.lora import LoRALinear
from peftds.run_config import RunConfig
from tests.helpers import error_lines, run_main
from tests.model.helpers import decoder_model_config


def model_config(name: str):
    return RunConfig.from_composed(compose([f"model={name}"])).model


def write_config(folder, **settings):
    from peft import LoraConfig

    LoraConfig(**settings).save_pretrained(str(folder))
    return folder


def convert(model_cfg, folder):
    config = read_lora_config(folder / "adapter_config.json")
    return design_from_peft(config, Backbone(build_model(model_cfg, num_labels=2, device="meta")), "mine")


CASES = {
    # BERT: ranks by layer through rank_pattern, layers_to_transform, dropout
    "tiny_bert": dict(
        r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"], layers_to_transform=[0, 1, 2],
        rank_pattern={"layer.2.attention.self.query": 4, "layer.2.attention.self.value": 4},
    ),
    # T5: "q", "v" match self- and cross-attention; layers 0-1 of each stack (stack positions 0, 1, 12, 13)
    "tiny_t5": dict(r=4, lora_alpha=8, target_modules=["q", "v"], layers_to_transform=[0, 1]),
}  # fmt: skip
EXPECTED = {
    "tiny_bert": ([8, 8, 4, 0, 0, 0], ["q", "v"], 16, 0.1),
    "tiny_t5": ([4, 4] + [0] * 10 + [4, 4] + [0] * 10, ["q", "v"], 8, 0.0),
}


@pytest.mark.parametrize("model", list(CASES))
def test_converted_design_is_peft_lora(model, tmp_path, one_thread):
    """Same modules, ranks and count as peft's own get_peft_model on the same base; with peft's A and B
    copied in, the same logits (scaling alpha/r agrees too)."""
    from peft import get_peft_model

    folder = write_config(tmp_path, **CASES[model])
    model_cfg = model_config(model)
    design = convert(model_cfg, folder)
    sizes, targets, alpha, dropout = EXPECTED[model]
    assert design["fixed_sizes"] == {"lora": sizes}
    assert design["hparams"]["lora"] == {"targets": targets, "alpha": alpha, "dropout": dropout}
    seq2seq = model == "tiny_t5"
    ours = build(model_cfg, design, 0.5, num_labels=None if seq2seq else 2)
    peft_model = get_peft_model(
        build_model(model_cfg, num_labels=None if seq2seq else 2), read_lora_config(folder / "adapter_config.json")
    )
    theirs = {n: m for n, m in peft_model.get_base_model().named_modules() if hasattr(m, "lora_A") and "default" in m.r}
    mine = {n: m for n, m in ours.model.named_modules() if isinstance(m, LoRALinear)}
    assert set(mine) == set(theirs)
    lora_count = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert ours.trainable_params == lora_count == ours.plan.budget_params
    with torch.no_grad():
        for name, m in mine.items():
            t = theirs[name]
            assert m.rank == t.r["default"] and m.scaling == t.scaling["default"]
            m.lora_A.copy_(t.lora_A["default"].weight)
            m.lora_B.copy_(torch.randn_like(m.lora_B) * 0.1)
            t.lora_B["default"].weight.copy_(m.lora_B)
        heads = {n: p for n, p in peft_model.get_base_model().named_parameters() if "lora_" not in n}
        for n, p in ours.model.named_parameters():
            if ours.backbone.is_head(n):
                heads[n].copy_(p)
        ids = torch.randint(1000, 2000, (2, 9))
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if seq2seq:
            inputs["decoder_input_ids"] = ids[:, :4]
        a = ours.model.eval()(**inputs).logits
        b = peft_model.eval()(**inputs).logits
    assert (a - ours.model.eval()(**inputs).logits).abs().max() == 0
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


REFUSALS = [
    ("tiny_bert", dict(target_modules=["query"], use_dora=True), "DoRA (use_dora)"),
    ("tiny_bert", dict(target_modules=["query"], use_rslora=True), "rsLoRA scaling (use_rslora)"),
    ("tiny_bert", dict(target_modules=["query"], bias="all"), "bias='all'"),
    ("tiny_bert", dict(target_modules=["dense"]), "no attention or feed-forward projection: bert.pooler.dense"),
    ("tiny_bert", dict(target_modules=["query", "value"], rank_pattern={"layer.0.attention.self.query": 4}),
     "layer 0 different ranks (q [4], v [8])"),
    ("tiny_bert", dict(target_modules=["query"], alpha_pattern={"layer.1.attention.self.query": 4}),
     "different alphas ([4.0, 8.0])"),
    ("tiny_bert", dict(target_modules=r".*layer\.0\.attention\.self\.query|.*layer\.1\.attention\.self\.value"),
     "different targets in different layers"),
    ("tiny_bert", dict(target_modules=["nothing_here"]), "match no module of this model"),
    ("tiny_bert", dict(target_modules=["query"], modules_to_save=["embeddings"]), "modules_to_save ['embeddings']"),
    ("tiny_t5", dict(target_modules=["SelfAttention.q"]), "on some attentions of a layer but not decoder.block.0.layer.1.EncDecAttention.q"),  # noqa: E501
]  # fmt: skip


@pytest.mark.parametrize("model,settings,message", REFUSALS, ids=[m for _, _, m in REFUSALS])
def test_what_a_design_cannot_express_is_named(model, settings, message, tmp_path):
    folder = write_config(tmp_path, **settings)
    with pytest.raises(PeftdsError) as err:
        convert(model_config(model), folder)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_fused_projection_and_other_tuners(tmp_path):
    phi3 = decoder_model_config("phi3")
    folder = write_config(tmp_path / "phi3", target_modules=["qkv_proj"])
    with pytest.raises(PeftdsError, match=re.escape("fused projection model.layers.0.self_attn.qkv_proj as a whole")):
        design_from_peft(
            read_lora_config(folder / "adapter_config.json"),
            Backbone(build_model(phi3, num_labels=2, device="meta")),
            "x",
        )
    llama = write_config(tmp_path / "llama", target_modules=["q_proj", "v_proj", "up_proj"], r=2)
    design = design_from_peft(
        read_lora_config(llama / "adapter_config.json"),
        Backbone(build_model(decoder_model_config("llama"), num_labels=2, device="meta")),
        "x",
    )
    assert design["hparams"]["lora"]["targets"] == ["q", "up", "v"] and design["fixed_sizes"]["lora"] == [2, 2]
    (tmp_path / "prefix.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 20}))
    with pytest.raises(PeftdsError, match="peft_type PREFIX_TUNING is another tuner"):
        read_lora_config(tmp_path / "prefix.json")


def test_inspect_and_compare_take_an_adapter_folder(tmp_path, capsys):
    folder = write_config(tmp_path / "my_lora", **CASES["tiny_bert"])
    code, out, err = run_main(capsys, "inspect", "model=tiny_bert", f"design={folder}", "format=json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["design"] == "my_lora" and rep["trainable_params"] == rep["budget_params"] == 5120
    assert [lp["modules"].get("lora", {}).get("size") for lp in rep["layers"]] == [8, 8, 4, None, None, None]
    code, out, err = run_main(capsys, "inspect", "model=tiny_bert", f"design={folder / 'adapter_config.json'}")
    assert code == 0 and "allocation fixed" in out
    dora = write_config(tmp_path / "dora", target_modules=["query"], use_dora=True)
    code, out, err = run_main(capsys, "inspect", "model=tiny_bert", f"design={dora}")
    assert code == 2 and len(error_lines(err)) == 1 and "DoRA (use_dora)" in err
    code, out, err = run_main(
        capsys, "compare", "model=tiny_bert", f"compare.designs=[lora,{folder}]", "compare.tasks=[sst2]",
        "compare.seeds=[1]", "compare.dry=true", f"compare.dir={tmp_path / 'cmp'}",
    )  # fmt: skip
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.strip().startswith("my_lora"))
    assert "0.23%" in row  # its own budget: 5,120 of 2,187,264


@pytest.mark.slow
def test_train_a_peft_config_then_export_it_back(tmp_path, capsys, data_dir, one_thread):
    """design=<adapter folder> trains the config's LoRA; exporting the run gives peft the same modules and ranks."""
    folder = write_config(tmp_path / "my_lora", **CASES["tiny_bert"])
    run = tmp_path / "run"
    code, _, err = run_main(
        capsys, "train", "model=tiny_bert", f"design={folder}", "task=sst2", "data.max_train_samples=32",
        "data.max_eval_samples=32", "train.max_steps=2", "train.progress=false", f"hydra.run.dir={run}",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((run / "result.json").read_text())["trainable_params"] == 5120
    code, _, err = run_main(capsys, "export", str(run), "format=peft", f"out={tmp_path / 'back'}")
    assert code == 0, err
    back = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    modules = [f"bert.encoder.layer.{i}.attention.self.{p}" for i in range(3) for p in ("query", "value")]
    assert sorted(back["target_modules"]) == sorted(modules)
    assert back["r"] == 8 and back["rank_pattern"] == {m: 4 for m in modules if ".2." in m}
