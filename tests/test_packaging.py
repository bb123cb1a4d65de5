"""Packaging and first-contact CLI behaviour: the version, LICENSE, py.typed, CHANGELOG, help texts and errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch

import tsembed
from tsembed.cli import main
from tsembed.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_flag(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"tsembed {tsembed.__version__}"


def test_version_is_written_once():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "tsembed.__version__"}
    assert f"## {tsembed.__version__}" in (ROOT / "CHANGELOG.md").read_text()


def test_license_matches_the_declared_one_and_py_typed_ships():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert (ROOT / "src" / "tsembed" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["tsembed"]


def test_train_help_says_where_config_keys_are(capsys):
    assert main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "src/tsembed/training/config.py" in out and "configs/default.yaml" in out


def test_missing_suite_names_the_path_and_build_suite(tmp_path, capsys):
    missing = tmp_path / "no-suite"
    assert main(["train", "--set", f"data.suite={missing}", "--set", f"run.output_dir={tmp_path / 'run'}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"data.suite: '{missing}' does not exist" in err
    assert f"tsembed data build-suite --out {missing}" in err


def test_cuda_without_cuda_is_a_clear_error(monkeypatch):
    from tsembed.devices import check_device
    from tsembed.inference.cli import _device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=f"device '{device}' asked for, but .*use --device cpu"):
            _device(device)
    assert check_device("cpu") == torch.device("cpu") and _device("auto") == "cpu"


def test_not_a_local_directory_mentions_backbone_path(tmp_path):
    from tsembed.backbones.hf import resolve_pretrained

    with pytest.raises(ConfigError, match="--backbone-path"):
        resolve_pretrained(str(tmp_path / "gone" / "backbone"), "backbone.text_model")
    with pytest.raises(ConfigError, match="--backbone-path"):
        resolve_pretrained("no-such-org/no-such-model", "backbone.text_model")
