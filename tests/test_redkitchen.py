"""The redkitchen captures in the SiM3D layout: counts, labels, and ground truth against the depth maps."""

import itertools

import pytest
import torch

from sim3d_datamodule import geometry
from sim3d_datamodule.datamodule import SiM3D

pytestmark = pytest.mark.shared_data

# Measured on these captures: 98.8 % to 98.9 % of the listed voxels per instance
# contain a back-projected depth pixel, and all lie within 2 voxels of one.
MIN_HIT_FRACTION = 0.98
MAX_CHEBYSHEV_DISTANCE = 2


@pytest.fixture
def redkitchen(shared_data):
    # 320 pixels is the captures' width, so views are padded but not resampled.
    datamodule = SiM3D(root=shared_data / "redkitchen-sim3d", category="redkitchen", image_size=320)
    datamodule.setup()
    return datamodule


def test_redkitchen_counts_and_labels(redkitchen):
    assert len(redkitchen.train_data) == 1
    assert len(redkitchen.test_data) == 8
    labels = dict(zip(redkitchen.test_data.samples.instance, redkitchen.test_data.samples.label_index, strict=True))
    assert sum(labels.values()) == 4
    assert all((label == 1) == ("bad" in name) for name, label in labels.items())
    assert redkitchen.train_data[0].image.shape == (8, 3, 320, 320)


def _contains(sorted_keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Return whether each query is in ``sorted_keys`` (sorted, unique); faster than ``torch.isin`` here."""
    positions = torch.searchsorted(sorted_keys, queries).clamp(max=sorted_keys.numel() - 1)
    return sorted_keys[positions] == queries


def _near_hit(coords: torch.Tensor, hit_keys: torch.Tensor, radius: int) -> torch.Tensor:
    """Return, per voxel ``(M, 3)``, whether a hit voxel lies within Chebyshev distance ``radius``."""
    offsets = torch.tensor(list(itertools.product(range(-radius, radius + 1), repeat=3)))
    neighbours = geometry.voxel_keys(coords[:, None, :] + offsets[None])
    return _contains(hit_keys, neighbours).any(dim=1)


def test_redkitchen_gt_voxels_inside_depth(redkitchen):
    for item in redkitchen.test_data:
        assert item.image.shape[0] == 8
        grid = item.gt_volume
        depth = item.depth_map[:, 0].to(torch.float64)
        points = geometry.depth_to_world_points(depth, item.intrinsics, item.world_to_camera)[item.valid_depth[:, 0]]
        hit_keys = torch.unique(geometry.voxel_keys(geometry.points_to_voxels(points, grid.origin, grid.voxel_size)))
        grid_keys = geometry.voxel_keys(grid.coords)

        hit = _contains(hit_keys, grid_keys)
        hit_fraction = hit.double().mean().item()
        assert hit_fraction >= MIN_HIT_FRACTION, f"{item.instance}: only {hit_fraction:.4f} of the voxels are hit"
        near = _near_hit(grid.coords[~hit], hit_keys, MAX_CHEBYSHEV_DISTANCE)
        assert near.all(), f"{item.instance}: {int((~near).sum())} voxels are farther than {MAX_CHEBYSHEV_DISTANCE} voxels from the depth"
