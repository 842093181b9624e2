"""Config composition helpers (peftds.config.compose): the default data folder, "did you mean" lines."""

import os

import pytest

from peftds.config import compose


def test_the_default_data_folder_is_exported_like_the_makefile_does(monkeypatch, tmp_path):
    monkeypatch.delenv("PEFTDS_DATA", raising=False)
    monkeypatch.setattr(compose, "DEFAULT_DATA_DIR", tmp_path / "absent")
    compose.use_default_data_dir()
    assert "PEFTDS_DATA" not in os.environ
    monkeypatch.setattr(compose, "DEFAULT_DATA_DIR", tmp_path)
    compose.use_default_data_dir()
    assert os.environ["PEFTDS_DATA"] == str(tmp_path)
    monkeypatch.setenv("PEFTDS_DATA", "/elsewhere")  # an explicit setting wins
    compose.use_default_data_dir()
    assert os.environ["PEFTDS_DATA"] == "/elsewhere"


def test_the_default_is_the_makefiles_folder():
    """The Makefile's PEFTDS_DATA default (../shared/data from the repo root) is the commands' default."""
    makefile = (compose.REPO_DIR / "Makefile").read_text()
    assert "PEFTDS_DATA ?= $(wildcard $(abspath ..)/shared/data)" in makefile
    assert compose.REPO_DIR.parent / "shared" / "data" == compose.DEFAULT_DATA_DIR


@pytest.mark.parametrize(
    "key,guess",
    [
        ("train.epoch", "train.epochs"),
        ("tarin.epochs", "train.epochs"),
        ("design.hparams.lora.alpah", "design.hparams.lora.alpha"),
        ("train.zzzzzz", None),
    ],
)
def test_closest_key_fixes_the_first_unknown_part(key, guess):
    known = ["train", "train.epochs", "train.lr", "design", "design.hparams", "design.hparams.lora",
             "design.hparams.lora.alpha"]  # fmt: skip
    assert compose.closest_key(key, known) == guess
