"""Defects on posed depth maps: one 3-D defect moves the surface consistently in every view.

Each valid pixel is back-projected to its world point p. A geometric defect
offsets the surface by h(p) along the defect normal n; the displaced surface is
taken as locally parallel to the original, so the pixel's ray now meets it at
``p + s * d`` with ``s = h / (n . d)`` for the unit ray direction d. Occlusions
that the moved surface would create are not modelled.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sim3d_datamodule import geometry
from sim3d_datamodule.synthesis.defects import GEOMETRIC_KINDS, Defect

# Rays closer than this cosine to grazing the defect plane are clamped, so that
# small offsets cannot turn into long jumps along the ray.
MIN_INCIDENCE_COSINE = 0.25


def world_point_maps(depths: np.ndarray, intrinsics: np.ndarray, world_to_camera: np.ndarray) -> np.ndarray:
    """Return world points ``(V, H, W, 3)`` of depth maps ``(V, H, W)``; NaN where depth is invalid."""
    depth = torch.from_numpy(np.where(np.isfinite(depths) & (depths > 0), depths, 0.0).astype(np.float64))
    points = geometry.depth_to_world_points(depth, torch.from_numpy(intrinsics).double(), torch.from_numpy(world_to_camera).double()).numpy()
    points[~(np.isfinite(depths) & (depths > 0))] = np.nan
    return points


def surface_samples(
    depths: np.ndarray, intrinsics: np.ndarray, world_to_camera: np.ndarray, max_points: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Return up to ``max_points`` world points ``(N, 3)`` and unit normals ``(N, 3)`` drawn from the valid pixels of all views."""
    points_all, normals_all = [], []
    maps = world_point_maps(depths, intrinsics, world_to_camera)
    centers = geometry.camera_centers(torch.from_numpy(world_to_camera).double())
    for view in range(depths.shape[0]):
        normals = geometry.point_map_normals(torch.from_numpy(maps[view]), centers[view]).numpy()
        usable = np.isfinite(normals).all(axis=-1) & np.isfinite(maps[view]).all(axis=-1)
        points_all.append(maps[view][usable])
        normals_all.append(normals[usable])
    points = np.concatenate(points_all)
    normals = np.concatenate(normals_all)
    if points.shape[0] > max_points:
        keep = rng.choice(points.shape[0], size=max_points, replace=False)
        points, normals = points[keep], normals[keep]
    return points, normals


def apply_defects_to_views(
    depths: np.ndarray,
    grays: np.ndarray,
    intrinsics: np.ndarray,
    world_to_camera: np.ndarray,
    defects: Sequence[Defect],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply ``defects`` to every view of a posed capture.

    Args:
        depths: ``(V, H, W)`` depth in metres; inf, NaN and values <= 0 are invalid.
        grays: ``(V, H, W)`` gray values in [0, 1].
        intrinsics: ``(V, 3, 3)``; world_to_camera: ``(V, 4, 4)``.
        defects: defects in the world frame of ``world_to_camera``.

    Returns:
        Changed depths ``(V, H, W)`` (invalid pixels untouched), changed grays
        ``(V, H, W)`` and ``(V, H, W)`` bool ground-truth masks of the pixels
        whose original surface point lies in a defect's footprint.
    """
    points = world_point_maps(depths, intrinsics, world_to_camera)
    valid = np.isfinite(points).all(axis=-1)
    centers = geometry.camera_centers(torch.from_numpy(world_to_camera).double()).numpy()
    new_depths = depths.astype(np.float64).copy()
    new_grays = grays.astype(np.float64).copy()
    labels = np.zeros(depths.shape, dtype=bool)
    for view in range(depths.shape[0]):
        surface = points[view][valid[view]]
        rays = surface - centers[view]
        distances = np.linalg.norm(rays, axis=1)
        rays /= distances[:, None]
        shift = np.zeros(surface.shape[0])
        factor = np.ones(surface.shape[0])
        inside = np.zeros(surface.shape[0], dtype=bool)
        for defect in defects:
            inside |= defect.contains(surface)
            factor *= defect.albedo_factor(surface)
            if defect.kind in GEOMETRIC_KINDS or defect.kind == "hole":
                offset = defect.offset(surface) if defect.kind != "hole" else -defect.depth * (defect.normalized_distance(surface) < 1.0)
                cosine = rays @ defect.normal
                cosine = np.where(cosine < 0.0, np.minimum(cosine, -MIN_INCIDENCE_COSINE), np.maximum(cosine, MIN_INCIDENCE_COSINE))
                shift += offset / cosine
        # The ray parameter s moves the point along the unit ray; depth scales with the ray length.
        view_depth = new_depths[view][valid[view]]
        new_depths[view][valid[view]] = view_depth * (distances + shift) / distances
        new_grays[view][valid[view]] *= factor
        labels[view][valid[view]] = inside
    return new_depths.astype(np.float32), np.clip(new_grays, 0.0, 1.0).astype(np.float32), labels
