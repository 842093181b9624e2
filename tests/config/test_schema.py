"""Typed config sections (peftds.config.schema + sections): defaults convert, every key has help, and
wrong types, out-of-range values and unknown keys raise one PeftdsError naming ``<section>.<key>``.
The strategy hyper-parameter configs (design.hparams.<strategy>) follow the same rules."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from peftds.config.compose import compose, compose_for
from peftds.config.schema import Section, convert, describe
from peftds.config.sections import SECTIONS, BenchConfig, DataConfig, ModelConfig, TrainConfig
from peftds.errors import PeftdsError
from peftds.model.strategies import NAMES, get_strategy
from peftds.run_config import RunConfig

# Every typed config: (where its keys live, its class); sections nested in a section come with it.
STRATEGY_CONFIGS = {f"design.hparams.{n}": get_strategy(n).config for n in NAMES}
# What a section needs beyond its defaults to be complete (a model needs a checkpoint or an architecture).
REQUIRED = {"model": {"arch": "t5"}, "export": {"out": "exports/x"}}


def nested(where: str, cls: type[Section]) -> list[tuple[str, type[Section]]]:
    """(where, class) of a section and of every section nested in it."""
    out = [(where, cls)]
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if isinstance(tp, type) and issubclass(tp, Section):
            out += nested(f"{where}.{f.name}", tp)
    return out


ALL_CONFIGS = [pair for name, cls in SECTIONS.items() for pair in nested(name, cls)] + list(STRATEGY_CONFIGS.items())
FIELDS = [
    (where, cls, f) for where, cls in ALL_CONFIGS for f in dataclasses.fields(cls)
]  # every key of every typed config


def field_id(case: tuple) -> str:
    where, _, f = case
    return f"{where}.{f.name}"


def wrong_type(tp: typing.Any) -> typing.Any:
    """A value no field of type `tp` accepts (a mapping, or a number where a mapping is wanted)."""
    parts = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, type(int | str)) else (tp,)
    wants_mapping = any(
        typing.get_origin(p) is dict or (isinstance(p, type) and issubclass(p, (dict, Section))) for p in parts
    )
    return 5 if wants_mapping else {"not": "this"}


def out_of_range(tp: typing.Any, meta: typing.Mapping) -> typing.Any:
    """A value of the right type just outside the field's bounds or choices (None: it has none)."""
    if meta.get("choices"):
        return "nonesuch"
    integer = tp is int or (
        typing.get_origin(tp) is not None and int in typing.get_args(tp) and float not in typing.get_args(tp)
    )
    for key, step in (("gt", 0), ("ge", -1), ("lt", 0), ("le", 1)):
        bound = meta.get(key)
        if bound is not None:
            value = bound + step if key in ("ge", "le") else bound
            if key == "ge" and not integer:
                value = bound - 0.5
            if key == "le" and not integer:
                value = bound + 0.5
            return int(value) if integer else float(value)
    return None


# ------------------------------------------------------------------------------------------ defaults
@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_every_section_converts_its_defaults(name):
    cls = SECTIONS[name]
    section = convert(cls, REQUIRED.get(name, {}))
    assert isinstance(section, cls)
    for key, _, default, _ in describe(cls):
        got = section.to_dict()
        for part in key.split(".")[1:]:
            got = got[part]
        assert got == (REQUIRED.get(name, {}).get(key.split(".")[-1], default)), key


def test_a_model_without_checkpoint_or_architecture_is_named():
    with pytest.raises(PeftdsError, match=r"^model: needs name_or_path"):
        convert(ModelConfig, {})


@pytest.mark.parametrize("command", ["train", "search", "bench"])
def test_the_composed_config_of_each_command_converts(command):
    from peftds.cli import COMMANDS
    from peftds.config.compose import plain
    from peftds.design.plan import Design

    cfg = compose_for(COMMANDS[command].groups, [])
    for name in COMMANDS[command].sections:
        if name == "design":  # a design's keys (--help lists them) are checked by Design, not a section
            assert isinstance(Design.from_config(plain(cfg.design)), Design)
            continue
        assert isinstance(convert(SECTIONS[name], cfg[name]), SECTIONS[name])


@pytest.mark.parametrize("where", sorted(STRATEGY_CONFIGS))
def test_strategy_hparams_convert_their_defaults(where):
    name = where.rsplit(".", 1)[1]
    cls = STRATEGY_CONFIGS[where]
    assert convert(cls, {}, where).to_dict() == get_strategy(name).defaults == get_strategy(name).hparams(None)


def test_strategy_hparams_of_the_base_design_file_convert():
    hparams = compose(["design=lora"]).design.hparams
    for where, cls in STRATEGY_CONFIGS.items():
        assert isinstance(convert(cls, hparams[where.rsplit(".", 1)[1]], where), cls)


def test_run_config_of_the_default_config():
    run = RunConfig.from_composed(compose([]))
    assert isinstance(run.model, ModelConfig) and run.model.name == "minilm_l6"
    assert isinstance(run.train, TrainConfig) and run.train.epochs >= 1
    assert isinstance(run.data, DataConfig) and run.data.max_train_samples == 2000
    assert run.budget.fraction == 0.005 and run.design.name == "lora" and run.task.name == "sst2"
    assert run.seed == 42 and "hydra" not in run.config


def test_sections_read_like_mappings():
    train = convert(TrainConfig, {"lr": 0.5})
    assert train["lr"] == train.get("lr") == 0.5 and "lr" in train and "colour" not in train
    assert train.get("colour", 7) == 7
    with pytest.raises(KeyError):
        train["colour"]
    assert convert(BenchConfig, {"data": {"batch_size": 4}}).data.batch_size == 4


# -------------------------------------------------------------------------------------------- help
@pytest.mark.parametrize("where,cls", ALL_CONFIGS, ids=[w for w, _ in ALL_CONFIGS])
def test_every_key_has_help(where, cls):
    """describe() lists every key with a non-empty help line: a new key without help fails here."""
    rows = describe(cls, where)
    keys = [key for key, *_ in rows]
    flat = [
        f"{where}.{f.name}"
        for f in dataclasses.fields(cls)
        if not (
            isinstance(typing.get_type_hints(cls)[f.name], type)
            and issubclass(typing.get_type_hints(cls)[f.name], Section)
        )
    ]
    assert set(flat) <= set(keys)
    for key, type_name, _, help_ in rows:
        assert help_.strip(), f"{key} has no help"
        assert type_name, key
    for f in dataclasses.fields(cls):  # nested sections too (what `bench.data` is, besides its keys)
        assert f.metadata.get("help", "").strip(), f"{where}.{f.name} has no help"


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("case", FIELDS, ids=[field_id(c) for c in FIELDS])
def test_wrong_type_names_the_key(case):
    where, cls, f = case
    tp = typing.get_type_hints(cls)[f.name]
    if tp is typing.Any:
        pytest.skip("accepts any value")
    base = REQUIRED.get(where, {})
    with pytest.raises(PeftdsError) as e:
        convert(cls, {**base, f.name: wrong_type(tp)}, where)
    msg = str(e.value)
    assert f"{where}.{f.name}" in msg and "\n" not in msg


BOUNDED = [c for c in FIELDS if out_of_range(typing.get_type_hints(c[1])[c[2].name], c[2].metadata) is not None]


@pytest.mark.parametrize("case", BOUNDED, ids=[field_id(c) for c in BOUNDED])
def test_out_of_range_names_the_key(case):
    where, cls, f = case
    value = out_of_range(typing.get_type_hints(cls)[f.name], f.metadata)
    with pytest.raises(PeftdsError) as e:
        convert(cls, {**REQUIRED.get(where, {}), f.name: value}, where)
    msg = str(e.value)
    assert f"{where}.{f.name}" in msg and "got" in msg and "\n" not in msg


def test_every_bounded_key_is_checked():
    """The bounds of the sections are where the bad-input suite expects them (a dropped bound fails)."""
    ids = {field_id(c) for c in BOUNDED}
    expected = {
        "budget.fraction", "train.lr", "train.epochs", "train.warmup_ratio", "train.scheduler", "search.n",
        "search.epochs", "bench.steps", "data.heldout", "model.arch", "design.hparams.lora.alpha",
        "design.hparams.adapter.placement", "design.hparams.prefix.reparam_hidden",
    }  # fmt: skip
    assert expected <= ids


@pytest.mark.parametrize("where,cls", ALL_CONFIGS, ids=[w for w, _ in ALL_CONFIGS])
def test_unknown_key_names_section_and_key(where, cls):
    with pytest.raises(PeftdsError) as e:
        convert(cls, {**REQUIRED.get(where, {}), "colour": "red"}, where)
    msg = str(e.value)
    assert msg.startswith("unknown key(s)") and f"{where}.colour" in msg and "\n" not in msg


@pytest.mark.parametrize("where,cls", ALL_CONFIGS)
def test_unknown_key_message_names_the_dotted_key(where, cls):
    with pytest.raises(PeftdsError, match=rf"{where}\.colour"):
        convert(cls, {"colour": "red"}, where)


def test_strings_are_not_silently_converted():
    """`train.lr=abc` fails, and so does a quoted number: no conversion from strings."""
    with pytest.raises(PeftdsError, match=r"train\.lr must be a number, got 'abc'"):
        convert(TrainConfig, {"lr": "abc"})
    with pytest.raises(PeftdsError, match=r"train\.epochs must be an integer, got 1\.5"):
        convert(TrainConfig, {"epochs": 1.5})
    with pytest.raises(PeftdsError, match=r"train\.progress must be true or false"):
        convert(TrainConfig, {"progress": "maybe"})
    with pytest.raises(PeftdsError, match=r"train\.lr must be a finite number"):
        convert(TrainConfig, {"lr": float("nan")})
    with pytest.raises(PeftdsError, match=r"bench\.data\.batch_size must be >= 1"):
        convert(BenchConfig, {"data": {"batch_size": 0}})
