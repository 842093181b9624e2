"""Starting a search (peftds.search.launch): arguments, the search dir and its name, keys the search
decides itself, one-line errors, public Hydra APIs only, and no warnings on a normal run."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from peftds.errors import PeftdsError
from peftds.search.launch import args_key, check_args, merge_args, normalise, prepare, run_search, with_searchpath

from .helpers import quiet, rows

SEARCH_SRC = Path(__file__).resolve().parents[2] / "peftds" / "search"


def test_cli_prints_one_error_line(tmp_path, fake_training, capsys, args):
    from peftds.cli import main

    (tmp_path / "space.yaml").write_text("name: typo\nallocaton: uniform\n")
    assert main(["search", *args(tmp_path), f"space={tmp_path / 'space.yaml'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "peftds: error: space 'typo': unknown key(s) ['allocaton'] (known: ['allocation', 'grouping', "
        "'groups', 'history', 'name', 'note', 'pool', 'strategies', 'tuned'])"
    ]


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_search_dir_keys_are_refused_naming_search_dir(tmp_path, fake_training, capsys, args, key):
    from peftds.cli import main

    calls, _ = fake_training
    assert main(["search", *args(tmp_path), f"{key}={tmp_path / 'elsewhere'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0] and "search.dir" in err[0]
    assert calls == [] and not (tmp_path / "elsewhere").exists()
    with pytest.raises(PeftdsError, match=r"search\.dir"):
        check_args([f"+{key}=x"])


def test_a_search_emits_no_warnings(tmp_path, fake_training, args, monkeypatch):
    """Without search.dir (the default dir is found by a probe composition) and again to resume."""
    monkeypatch.chdir(tmp_path)
    a = [x for x in args(tmp_path, "stage=allocation") if not x.startswith("search.dir=")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_search(a, echo=quiet) == 0
        assert run_search(a, echo=quiet) == 0
    assert [str(w.message) for w in caught] == []
    (sdir,) = (tmp_path / "outputs" / "search" / "allocation").iterdir()
    assert sdir.name == args_key(a) and len(rows(sdir / "allocation" / "trials.csv")) == 3


def test_default_search_dir_names_are_stable():
    """Existing default search dirs resume only while these names stay the same."""
    assert args_key(["stage=grouping", "search=tiny", "model=tiny_bert"]) == "run-32514d6ef1"
    # the launcher and other settings that do not change results are not part of the name
    assert args_key(["search=demo", "stage=grouping", "hydra/launcher=joblib", "search.trial_threads=1"]) == (
        "run-c97916e70b"
    )
    assert args_key(["search=demo", "stage=grouping"]) == "run-c97916e70b"


def test_arguments_merge_and_files_become_group_options(tmp_path):
    assert merge_args(["a=1", "+b=2"], ["b=3", "c=4"]) == ["a=1", "b=3", "c=4"]
    space = tmp_path / "my space.yaml"
    space.write_text("name: mine\ngroups: 4\n")
    out = normalise(["-m", f"space={space}", "stage=grouping", "x.y=1"], tmp_path / "conf")
    assert out == ["+space=file_my_space", "+stage=grouping", "x.y=1"]
    assert (tmp_path / "conf" / "space" / "file_my_space.yaml").read_text() == space.read_text()
    with pytest.raises(PeftdsError, match="space file not found"):
        normalise([f"space={tmp_path / 'nope.yaml'}"], tmp_path / "conf")
    assert with_searchpath(["a=1", "hydra.searchpath=[pkg://x]"], Path("/c")) == [
        "a=1",
        "hydra.searchpath=[file:///c,pkg://x]",
    ]
    assert with_searchpath(["a=1"]) == ["a=1"]


def test_prepare_stores_arguments_for_resume(tmp_path, data_dir):
    prep = prepare(["model=tiny_bert", "search=tiny", f"search.dir={tmp_path / 's'}",
                    "hydra/launcher=joblib", f"data.dir={data_dir}"])  # fmt: skip
    sdir, overrides, forward = prep.dir, prep.overrides, prep.forward
    assert sdir == (tmp_path / "s").resolve()
    assert not (sdir / "search.json").exists()  # stored only once the config is accepted
    prep.accept()
    assert f"hydra.sweep.dir={sdir}" in overrides and f"hydra.searchpath=[file://{sdir / 'conf'}]" in overrides
    assert "hydra/launcher=joblib" in overrides and "model=tiny_bert" in forward
    assert not any(a.startswith(("hydra", "+stage", "+space", "search.dir")) for a in forward)
    again = prepare([f"search.dir={sdir}"])  # the stored arguments, without the launcher
    assert again.dir == sdir and "model=tiny_bert" in again.overrides
    assert "hydra/launcher=joblib" not in again.overrides


def test_only_public_hydra_apis():
    for path in SEARCH_SRC.glob("*.py"):
        text = path.read_text()
        assert "hydra._internal" not in text and "._return_value" not in text, path


def test_a_refused_command_leaves_the_search_dir_as_it_was(tmp_path, data_dir):
    """Rejected arguments are never stored: a later resume does not fail on a value of an earlier try,
    and a new search dir refused before training is not left behind."""
    from peftds.errors import PeftdsError

    sdir = tmp_path / "s"
    base = ["model=tiny_bert", "search=tiny", f"search.dir={sdir}", f"data.dir={data_dir}"]
    with pytest.raises(PeftdsError, match=r"search\.n"):
        run_search([*base, "search.n=-3"], echo=quiet)
    assert not sdir.exists()  # nothing written before the config is accepted
    with pytest.raises(PeftdsError, match=r"search\.racing_method"):
        run_search([*base, "search.racing_method=foo"], echo=quiet)
    assert not tmp_path.joinpath("s").exists()
    sdir.mkdir()
    # arguments an older version stored although they were refused
    stored = ["model=tiny_bert", "+search=tiny", f"data.dir={data_dir}", "search.racing_method=foo"]
    (sdir / "search.json").write_text(json.dumps({"args": stored}))
    with pytest.raises(PeftdsError, match=r"search.racing_method.*\(a value stored in .*search.json\)"):
        run_search([f"search.dir={sdir}"], echo=quiet)
    assert json.loads((sdir / "search.json").read_text())["args"][-1] == "search.racing_method=foo"  # untouched
    assert {p.name for p in sdir.iterdir()} <= {"search.json", ".search.lock"}
