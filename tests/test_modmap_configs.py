"""The Modmap configurations in configs/ build the model and the datamodule they name."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import pytest
import yaml

from anomalib_modmap.models import Modmap

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("modmap_*.yaml"))


def _load_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_configs_exist():
    assert {path.name for path in CONFIGS} >= {"modmap_real2real.yaml", "modmap_synth2real.yaml", "modmap_cpu.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.stem)
def test_config_builds_model_and_datamodule(path, tmp_path):
    config = yaml.safe_load(path.read_text())

    model_class = _load_class(config["model"]["class_path"])
    assert model_class is Modmap
    arguments = {**config["model"]["init_args"], "image_weights": "random", "depth_weights": "random"}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not meaningful.*")
        model = model_class(**arguments)
    assert model.max_epochs == config["model"]["init_args"]["max_epochs"]

    data_class = _load_class(config["data"]["class_path"])
    data_arguments = {**config["data"]["init_args"], "root": tmp_path}
    datamodule = data_class(**data_arguments)
    assert datamodule.category == config["data"]["init_args"]["category"]
