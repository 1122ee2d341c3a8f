"""Consistency check of generated data: ground-truth voxels against the instance's own depth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sim3d_datamodule import geometry
from sim3d_datamodule.io import read_cameras, read_depth_npy, read_ground_truth


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
    cameras = read_cameras(instance / "cameras.json")
    keys = []
    for camera in cameras.views:
        depth, valid = read_depth_npy(instance / "depth" / f"{camera.name}.npy", cameras.depth_scale)
        points = geometry.depth_to_world_points(depth.to(torch.float64), camera.K, camera.world_to_camera)[valid]
        keys.append(geometry.voxel_keys(geometry.points_to_voxels(points, origin, voxel_size)))
    return torch.unique(torch.cat(keys))


def check_ground_truth(instance: Path) -> GroundTruthCheck:
    """Compare ``gt/anomaly_volume.npz`` of ``instance`` with the voxels its depth maps reach."""
    instance = Path(instance)
    grid = read_ground_truth(instance / "gt" / "anomaly_volume.npz")
    reached = reached_voxel_keys(instance, grid.origin, grid.voxel_size)
    keys = geometry.voxel_keys(grid.coords)
    missed = ~torch.isin(keys, reached)
    anomalous = grid.anomalous
    return GroundTruthCheck(instance, int(keys.numel()), int(anomalous.sum()), int(missed.sum()), int((missed & anomalous).sum()))
