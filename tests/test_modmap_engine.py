"""Modmap through anomalib's Engine and CLI on a generated SiM3D-layout fixture."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from anomalib.engine import Engine
from modmap_helpers import STATISTICS_KWARGS, save_patch_statistics_weights

from anomalib_modmap.models import Modmap
from sim3d_datamodule.datamodule import SiM3D
from sim3d_datamodule.testing import make_sim3d_fixture

REPO_ROOT = Path(__file__).resolve().parents[1]
VIEWS = 4
METRICS = ("voxel_AUPRO@1%", "instance_AUROC")


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sim3d")
    make_sim3d_fixture(root, category="toy", views=VIEWS, size=(48, 64), setups=("real2real",))
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("weights")
    return save_patch_statistics_weights(folder / "image.pth", 3), save_patch_statistics_weights(folder / "depth.pth", 1)


def _model(weights: tuple[Path, Path], **overrides) -> Modmap:
    arguments = {
        "image_encoder": "vit_small_patch14_dinov2",
        "depth_encoder": "vit_small_patch14_dinov2",
        "image_weights": str(weights[0]),
        "depth_weights": str(weights[1]),
        "image_encoder_kwargs": STATISTICS_KWARGS,
        "depth_encoder_kwargs": {**STATISTICS_KWARGS, "in_chans": 1},
        "image_num_blocks": 0,
        "depth_num_blocks": 0,
        "final_norm": False,
        "depth_normalization": "minmax",
        "max_epochs": 5,
    }
    arguments.update(overrides)
    return Modmap(**arguments)


def _engine(root: Path) -> Engine:
    return Engine(default_root_dir=root, logger=False, enable_progress_bar=False, accelerator="cpu")


def test_engine_train_test_predict(fixture_root, weights, tmp_path):
    datamodule = SiM3D(root=fixture_root, category="toy", image_size=56)
    engine = _engine(tmp_path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(eval mode|num_workers).*")
        engine.train(_model(weights), datamodule=datamodule)

    metrics = engine.trainer.callback_metrics
    for name in METRICS:
        assert name in metrics, sorted(metrics)
        assert 0.0 <= float(metrics[name]) <= 1.0

    volumes = sorted((tmp_path / "Modmap" / "SiM3D" / "toy").glob("v*/volumes/*"))
    assert [folder.name for folder in volumes] == ["toy_bad_01", "toy_bad_02", "toy_good_01", "toy_good_02"]
    for folder in volumes:
        assert (folder / "anomaly_volume.npz").is_file()
        assert (folder / "anomaly_volume.ply").is_file()
        assert len(list((folder / "overlays").glob("*.png"))) == VIEWS

    checkpoint = engine.trainer.checkpoint_callback.best_model_path
    assert Path(checkpoint).is_file()
    tested = engine.test(_model(weights), datamodule=datamodule, ckpt_path=checkpoint)[0]
    for name in METRICS:
        assert tested[name] == pytest.approx(float(metrics[name]))

    predictions = engine.predict(_model(weights, save_volumes=False), datamodule=datamodule, ckpt_path=checkpoint)
    assert len(predictions) == 4
    assert predictions[0].anomaly_map.shape == (1, VIEWS, 56, 56)
    assert predictions[0].pred_volume[0].shape == (predictions[0].gt_volume[0].num_voxels,)


def test_view_subset_changes_only_used_views(fixture_root, weights, tmp_path):
    datamodule = SiM3D(root=fixture_root, category="toy", image_size=56)
    engine = _engine(tmp_path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(eval mode|num_workers).*")
        engine.fit(_model(weights, max_epochs=2), datamodule=datamodule)
    checkpoint = engine.trainer.checkpoint_callback.best_model_path
    predictions = engine.predict(_model(weights, views=[0, 2], save_volumes=False), datamodule=datamodule, ckpt_path=checkpoint)

    maps = predictions[0].anomaly_map[0]
    assert torch.all(maps[[1, 3]] == 0)
    assert torch.all(maps[[0, 2]].amax(dim=(-2, -1)) > 0)


@pytest.mark.slow
def test_cli_train_writes_metrics(fixture_root, weights, tmp_path):
    command = [
        sys.executable, "-m", "anomalib.cli.cli", "train",
        "--model", "anomalib_modmap.models.Modmap",
        "--model.image_encoder", "vit_small_patch14_dinov2",
        "--model.depth_encoder", "vit_small_patch14_dinov2",
        "--model.image_weights", str(weights[0]),
        "--model.depth_weights", str(weights[1]),
        "--model.image_encoder_kwargs", str(STATISTICS_KWARGS),
        "--model.depth_encoder_kwargs", str({**STATISTICS_KWARGS, "in_chans": 1}),
        "--model.image_num_blocks", "0",
        "--model.depth_num_blocks", "0",
        "--model.final_norm", "false",
        "--model.max_epochs", "2",
        "--data", "sim3d_datamodule.datamodule.SiM3D",
        "--data.root", str(fixture_root),
        "--data.category", "toy",
        "--data.image_size", "56",
        "--trainer.accelerator", "cpu",
        "--default_root_dir", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(
        command,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "voxel_AUPRO@1%" in output
    assert "instance_AUROC" in output
    assert list(tmp_path.glob("Modmap/SiM3D/toy/v*/volumes/toy_bad_01/anomaly_volume.npz"))

    checkpoints = list(tmp_path.glob("Modmap/SiM3D/toy/v*/weights/lightning/model.ckpt"))
    assert len(checkpoints) == 1
    test_command = [part if part != "train" else "test" for part in command]
    test_command += ["--ckpt_path", str(checkpoints[0])]
    result = subprocess.run(
        test_command,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "voxel_AUPRO@1%" in output
