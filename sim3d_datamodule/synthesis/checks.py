"""Consistency check of generated data: ground-truth voxels against the instance's own depth."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sim3d_datamodule import geometry
from sim3d_datamodule.synthesis._format import read_cameras


@dataclass
class GroundTruthCheck:
    """Agreement of one instance's ground truth with its depth maps.

    Attributes:
        instance: instance folder.
        voxels: number of listed voxels.
        anomalous: number of anomalous voxels.
        unreached: listed voxels that no valid depth pixel of any view lands in.
        unreached_anomalous: anomalous voxels among ``unreached``.
    """

    instance: Path
    voxels: int
    anomalous: int
    unreached: int
    unreached_anomalous: int

    @property
    def ok(self) -> bool:
        """True when every anomalous voxel is reached by at least one view's depth."""
        return self.unreached_anomalous == 0


def reached_voxel_keys(instance: Path, origin: torch.Tensor, voxel_size: float) -> torch.Tensor:
    """Return the sorted unique voxel keys reached by the valid depth (``depth/<view>.npy``) of all views."""
    depth_scale = float(json.loads((instance / "cameras.json").read_text()).get("depth_scale", 1.0))
    keys = []
    for camera in read_cameras(instance / "cameras.json"):
        path = instance / "depth" / f"{camera.name}.npy"
        if not path.is_file():
            msg = f"Depth map {path} is missing for view {camera.name} of cameras.json."
            raise FileNotFoundError(msg)
        depth = np.load(path).astype(np.float64) * depth_scale
        valid = np.isfinite(depth) & (depth > 0)
        points = geometry.depth_to_world_points(
            torch.from_numpy(np.where(valid, depth, 0.0)), torch.from_numpy(camera.intrinsics), torch.from_numpy(camera.world_to_camera)
        )[torch.from_numpy(valid)]
        keys.append(geometry.voxel_keys(geometry.points_to_voxels(points, origin, voxel_size)))
    return torch.unique(torch.cat(keys))


def check_ground_truth(instance: Path) -> GroundTruthCheck:
    """Compare ``gt/anomaly_volume.npz`` of ``instance`` with the voxels its depth maps reach."""
    instance = Path(instance)
    path = instance / "gt" / "anomaly_volume.npz"
    if not path.is_file():
        msg = f"Ground truth {path} not found."
        raise FileNotFoundError(msg)
    with np.load(path) as archive:
        origin = torch.from_numpy(archive["origin"].astype(np.float64))
        voxel_size = float(archive["voxel_size"])
        coords = torch.from_numpy(archive["coords"].astype(np.int64))
        anomalous = torch.from_numpy(archive["anomalous"].astype(bool))
    reached = reached_voxel_keys(instance, origin, voxel_size)
    keys = geometry.voxel_keys(coords)
    missed = ~torch.isin(keys, reached)
    return GroundTruthCheck(instance, int(keys.numel()), int(anomalous.sum()), int(missed.sum()), int((missed & anomalous).sum()))
