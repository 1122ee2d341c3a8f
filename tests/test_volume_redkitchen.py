"""Anomaly volumes and volumetric metrics end to end on the real redkitchen-sim3d captures.

Per-view maps mark each pixel whose back-projected point falls in an anomalous
ground-truth voxel. Fused through the real pipeline they give a perfect score
on every voxel that some pixel reaches, and the same maps shifted by a few
pixels score less.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from anomalib_modmap.metrics import InstanceAUROC, VoxelAUPRO
from anomalib_modmap.volume import fuse_anomaly_volume
from sim3d_datamodule import geometry, io

pytestmark = pytest.mark.shared_data

CATEGORY = Path("redkitchen-sim3d") / "redkitchen"


@dataclass
class Capture:
    name: str
    label: int
    intrinsics: torch.Tensor  # (V, 3, 3) float64
    world_to_camera: torch.Tensor  # (V, 4, 4) float64
    depth: torch.Tensor  # (V, H, W) float64 metres
    valid: torch.Tensor  # (V, H, W) bool
    grid: geometry.VoxelGrid


@dataclass
class Batch:
    pred_volume: list[torch.Tensor]
    gt_volume: list[geometry.VoxelGrid]
    gt_label: torch.Tensor


def read_capture(folder: Path) -> Capture:
    """Read depth, cameras.json and the ground-truth volume of one test instance."""
    cameras = io.read_cameras(folder / "cameras.json")
    names = sorted(path.stem for path in (folder / "depth").glob("*.npy"))
    depth, valid = zip(*(io.read_depth_npy(folder / "depth" / f"{name}.npy", cameras.depth_scale) for name in names), strict=True)
    return Capture(
        name=folder.name,
        label=int("bad" in folder.name),
        intrinsics=torch.stack([cameras[name].K for name in names]),
        world_to_camera=torch.stack([cameras[name].world_to_camera for name in names]),
        # float64 here so that marking and fusion back-project every pixel to the same point.
        depth=torch.stack(depth).to(torch.float64),
        valid=torch.stack(valid),
        grid=io.read_ground_truth(folder / "gt" / "anomaly_volume.npz"),
    )


def pixel_voxel_keys(capture: Capture) -> torch.Tensor:
    """Voxel key ``(V, H, W)`` of every pixel's back-projected point; invalid pixels get -1."""
    keys = torch.full(capture.depth.shape, -1, dtype=torch.int64)
    for view in range(capture.depth.shape[0]):
        depth = torch.where(capture.valid[view], capture.depth[view], torch.zeros_like(capture.depth[view]))
        points = geometry.depth_to_world_points(depth, capture.intrinsics[view], capture.world_to_camera[view])
        voxels = geometry.points_to_voxels(points[capture.valid[view]], capture.grid.origin, capture.grid.voxel_size)
        keys[view][capture.valid[view]] = geometry.voxel_keys(voxels)
    return keys


def oracle_maps(capture: Capture, keys: torch.Tensor) -> torch.Tensor:
    """1.0 where a pixel lands in an anomalous ground-truth voxel, 0.0 elsewhere."""
    anomalous_keys = geometry.voxel_keys(capture.grid.coords[capture.grid.anomalous]).numpy()
    return torch.from_numpy(np.isin(keys.numpy(), anomalous_keys)).to(torch.float32)


def observed_grid(capture: Capture, keys: torch.Tensor) -> tuple[geometry.VoxelGrid, np.ndarray]:
    """The ground-truth voxels that at least one valid pixel reaches, and their mask over all voxels."""
    reached = np.isin(geometry.voxel_keys(capture.grid.coords).numpy(), keys.numpy())
    mask = torch.from_numpy(reached)
    grid = geometry.VoxelGrid(capture.grid.origin, capture.grid.voxel_size, capture.grid.coords[mask], capture.grid.anomalous[mask])
    return grid, reached


def observed_region_fraction(capture: Capture, reached: np.ndarray) -> list[float]:
    """Per 26-connected region of the ground truth, the fraction of its voxels that pixels reach."""
    anomalous = capture.grid.anomalous.numpy()
    if not anomalous.any():
        return []
    coords = capture.grid.coords.numpy()[anomalous]
    local = coords - coords.min(axis=0)
    dense = np.zeros(local.max(axis=0) + 1, dtype=bool)
    dense[tuple(local.T)] = True
    labelled, count = ndimage.label(dense, structure=np.ones((3, 3, 3), dtype=bool))
    region_of_voxel = labelled[tuple(local.T)]
    reached_anomalous = reached[anomalous]
    return [float(reached_anomalous[region_of_voxel == region].mean()) for region in range(1, count + 1)]


def score(volumes: list[torch.Tensor], grids: list[geometry.VoxelGrid], labels: list[int]) -> tuple[float, float]:
    aupro, auroc = VoxelAUPRO(fpr_limit=0.01), InstanceAUROC()
    for volume, grid, label in zip(volumes, grids, labels, strict=True):
        batch = Batch([volume], [grid], torch.tensor([label]))
        aupro.update(batch)
        auroc.update(batch)
    return float(aupro.compute()), float(auroc.compute())


@functools.cache
def load_category(folder: Path) -> list[tuple[Capture, torch.Tensor]]:
    """Every test instance of the category with its pixel voxel keys; read once per session."""
    instances = sorted(path for path in folder.iterdir() if path.is_dir() and "real" not in path.name and "synth" not in path.name)
    captures = [read_capture(path) for path in instances]
    return [(capture, pixel_voxel_keys(capture)) for capture in captures]


@pytest.fixture
def redkitchen(shared_data) -> list[tuple[Capture, torch.Tensor]]:
    folder = shared_data / CATEGORY
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    return load_category(folder)


def test_oracle_maps_score_one_on_observed_voxels(redkitchen):
    volumes, grids, labels = [], [], []
    shifted_volumes = []
    for capture, keys in redkitchen:
        grid, _ = observed_grid(capture, keys)
        maps = oracle_maps(capture, keys)
        volumes.append(fuse_anomaly_volume(maps, capture.depth, capture.valid, capture.intrinsics, capture.world_to_camera, grid))
        shifted = torch.roll(maps, shifts=(2, 3), dims=(-2, -1))
        shifted_volumes.append(
            fuse_anomaly_volume(shifted, capture.depth, capture.valid, capture.intrinsics, capture.world_to_camera, grid)
        )
        grids.append(grid)
        labels.append(capture.label)
    assert sum(labels) == 4
    assert len(labels) == 8

    aupro, auroc = score(volumes, grids, labels)
    assert aupro == 1.0
    assert auroc == 1.0

    shifted_aupro, shifted_auroc = score(shifted_volumes, grids, labels)
    assert shifted_aupro < 0.95
    # Nominal instances have no marked pixel, so the instance ranking survives the shift.
    assert shifted_auroc == 1.0


def test_oracle_maps_full_ground_truth(redkitchen):
    # Defect voxels that no pixel of the instance reaches (under a bump, inside a dent) keep the
    # minimum score. With oracle maps the curve jumps to PRO = P at FPR 0, P being the mean
    # reached fraction per region, then runs straight to (1, 1): V-AUPRO@1% = P + (1 - P) * 0.005.
    volumes, fractions = [], []
    for capture, keys in redkitchen:
        maps = oracle_maps(capture, keys)
        volumes.append(
            fuse_anomaly_volume(maps, capture.depth, capture.valid, capture.intrinsics, capture.world_to_camera, capture.grid)
        )
        fractions += observed_region_fraction(capture, observed_grid(capture, keys)[1])

    aupro, auroc = score(volumes, [capture.grid for capture, _ in redkitchen], [capture.label for capture, _ in redkitchen])
    reached = float(np.mean(fractions))
    assert aupro == pytest.approx(reached + (1.0 - reached) * 0.005, abs=1e-12)
    assert auroc == 1.0


def test_datamodule_batches_through_evaluator(shared_data):
    from anomalib.metrics import Evaluator

    from anomalib_modmap.volume import fuse_batch_volumes
    from sim3d_datamodule.datamodule import SiM3D

    # 256 pixels resizes the 320 x 240 captures, so padded and rescaled intrinsics are in the loop.
    datamodule = SiM3D(root=shared_data / "redkitchen-sim3d", category="redkitchen", image_size=256, eval_batch_size=3)
    datamodule.setup()
    evaluator = Evaluator(test_metrics=[VoxelAUPRO(), InstanceAUROC()])

    seen = 0
    for batch_index, batch in enumerate(datamodule.test_dataloader()):
        maps, observed = [], []
        for index in range(len(batch.instance)):
            depth = batch.depth_map[index, :, 0].to(torch.float64)
            valid = batch.valid_depth[index, :, 0]
            grid = batch.gt_volume[index]
            capture = Capture(batch.instance[index], 0, batch.intrinsics[index], batch.world_to_camera[index], depth, valid, grid)
            keys = pixel_voxel_keys(capture)
            maps.append(oracle_maps(capture, keys))
            observed.append(observed_grid(capture, keys)[0])
        batch.anomaly_map = torch.stack(maps)
        batch.gt_volume = observed
        batch.pred_volume = fuse_batch_volumes(batch)
        evaluator.on_test_batch_end(None, None, None, batch, batch_index)
        seen += len(batch.instance)

    aupro, auroc = evaluator.test_metrics
    assert seen == 8
    assert float(aupro.compute()) == 1.0
    assert float(auroc.compute()) == 1.0
