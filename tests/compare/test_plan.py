"""Planning a comparison: run ids, designs with their own budget, bad input as one line."""

from __future__ import annotations

import pytest

from peftds.compare.plan import build_plan, parse_design
from peftds.compare.runner import normalise
from peftds.config.compose import compose
from peftds.errors import PeftdsError


def plan_of(*args):
    return build_plan(compose, normalise(["model=tiny_bert", *args]))


def test_run_ids_are_stable_and_name_design_task_seed_regime():
    a = plan_of("compare.designs=[lora,bitfit@p0_1]", "compare.tasks=[sst2,rte]", "compare.seeds=[1,2]")
    b = plan_of("compare.designs=[lora,bitfit@p0_1]", "compare.tasks=[sst2,rte]", "compare.seeds=[1,2]")
    assert [r.run_id for r in a.runs] == [r.run_id for r in b.runs]
    assert len(a.runs) == 2 * 2 * 2 and len({r.run_id for r in a.runs}) == 8
    r = a.runs[0]
    assert r.run_id.startswith("lora-") and "-sst2-s1-r" in r.run_id and r.run_id.endswith(a.regime_hash)
    # the regime is part of the id; a cosmetic key is not
    c = plan_of(
        "compare.designs=[lora,bitfit@p0_1]", "compare.tasks=[sst2,rte]", "compare.seeds=[1,2]", "train.epochs=7"
    )
    assert c.regime_hash != a.regime_hash
    d = plan_of("compare.designs=[lora,bitfit@p0_1]", "compare.tasks=[sst2,rte]", "compare.seeds=[1,2]",
                "train.logging_steps=3")  # fmt: skip
    assert [r.run_id for r in d.runs] == [r.run_id for r in a.runs]


def test_designs_carry_their_own_budget():
    p = plan_of("budget=p0_5", "compare.designs=[bitfit,bitfit@p0_1,bitfit@0.002]", "compare.tasks=[sst2]",
                "compare.seeds=[1]")  # fmt: skip
    assert p.fractions == {"bitfit": 0.005, "bitfit@p0_1": 0.001, "bitfit@0.002": 0.002}
    assert len({r.digest for r in p.runs}) == 3  # same design, three budgets: three designs
    assert parse_design("bitfit@p0_1").budget_overrides() == ["budget=p0_1"]
    assert parse_design("bitfit@0.002").budget_overrides() == ["budget.fraction=0.002"]


def test_design_file_entry(tmp_path):
    f = tmp_path / "my_design.yaml"
    f.write_text(
        "defaults: [base_hparams, _self_]\nname: mine\ngrouping: {groups: 1}\ntuned: all\n"
        "allocation: uniform\nstrategies: [[lora]]\n"
    )
    p = plan_of(f"compare.designs=[lora,{f}]", "compare.tasks=[sst2]", "compare.seeds=[1]")
    assert [e.label for e in p.designs] == ["lora", "mine"]  # the design's own name, not the file's
    assert p.runs[0].digest == p.runs[1].digest  # the same configuration as lora: the same digest


def test_two_searches_best_designs_get_rows_told_apart_by_their_folders(tmp_path):
    text = "defaults: [base_hparams, _self_]\nname: best_grouping\ngrouping: {groups: 1}\nstrategies: [[lora]]\n"
    files = [tmp_path / run / "grouping" / "best_design.yaml" for run in ("run-a", "run-b")]
    for f in files:
        f.parent.mkdir(parents=True)
        f.write_text(text)
    p = plan_of(f"compare.designs=[{files[0]},{files[1]},lora]", "compare.tasks=[sst2]", "compare.seeds=[1]")
    assert [e.label for e in p.designs] == ["best_grouping (run-a/grouping)", "best_grouping (run-b/grouping)", "lora"]
    assert len({r.run_id for r in p.runs}) == 3
    with pytest.raises(PeftdsError, match=r"repeats a design: best_grouping .*rename the file's `name:`"):
        plan_of(f"compare.designs=[{files[0]},{files[0]}]", "compare.tasks=[sst2]", "compare.seeds=[1]")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["compare.designs=[nope]"], "unknown design 'nope'"),
        (["compare.designs=[]"], "compare.designs is empty"),
        (["compare.designs=[lora,lora]"], "repeats a design"),
        (["compare.designs=[bitfit@p9]"], "budget 'p9'"),
        (["compare.designs=[bitfit@]"], "bad entry"),
        (["compare.designs=[/no/such.yaml]"], "design file not found"),
        (["compare.tasks=[nope]"], "unknown task(s) ['nope']"),
        (["compare.tasks=[]"], "compare.tasks is empty"),
        (["compare.tasks=[sst2,sst2]"], "repeats a task"),
        (["compare.tasks=[xsum]"], "need a text-to-text model"),
        (["compare.seeds=[]"], "compare.seeds is empty"),
        (["compare.seeds=[1,1]"], "repeats a seed"),
        (["compare.seeds=[-1]"], "must be >= 0"),
        (["compare.seeds=[a]"], "compare.seeds[0] must be an integer"),
        (["compare.task_set=nope"], "unknown task set 'nope'"),
        (["compare.columns=all"], "compare.columns must be one of"),
        (["compare.designs=[spindle_t5base]"], "made for model t5_base"),
    ],
)
def test_bad_input_is_one_line(args, words):
    with pytest.raises(PeftdsError) as e:
        plan_of(*args)
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("arg", ["design=lora", "task=sst2", "seed=3", "hydra.run.dir=x"])
def test_keys_compare_decides_are_refused(arg):
    with pytest.raises(PeftdsError, match="peftds compare sets"):
        normalise([arg])


def test_the_header_says_when_max_steps_cuts_training():
    args = ("compare.designs=[lora]", "compare.tasks=[sst2]", "compare.seeds=[1]", "train.epochs=3")
    assert plan_of(*args).length == "3 epochs"
    assert plan_of(*args, "train.max_steps=20").length == "at most 20 steps (train.max_steps cuts 3 epochs)"
