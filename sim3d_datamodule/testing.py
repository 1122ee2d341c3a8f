"""Tiny synthetic SiM3D-layout categories for tests and examples.

:func:`make_sim3d_fixture` renders a sphere seen by a ring of pinhole cameras
by exact ray casting, so depth, calibration and ground truth agree to float
precision. Anomalous instances carry a bump: a small second sphere on the
surface whose voxels are marked anomalous.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sim3d_datamodule import geometry
from sim3d_datamodule.io import cv2
from sim3d_datamodule.io import CameraView, write_cameras, write_depth_exr, write_depth_npy, write_gray_png, write_ground_truth

SPHERE_RADIUS = 0.3
CAMERA_DISTANCE = 1.2
CAMERA_ELEVATION_DEGREES = 30.0
FIXTURE_VOXEL_SIZE = 0.02
FIXTURE_ORIGIN = (-0.5, -0.5, -0.5)
# Synthetic depth is stored in millimetres to exercise depth_scale.
SYNTH_DEPTH_SCALE = 0.001


def ring_cameras(num_views: int, size: tuple[int, int], jitter: float = 0.0, seed: int = 0) -> list[CameraView]:
    """Return ``num_views`` cameras on a ring around the world origin, looking at it.

    ``size`` is ``(height, width)``. ``jitter`` moves each camera centre by up to
    that many metres along each axis, drawn with ``seed``.
    """
    height, width = size
    focal = 0.9 * width
    intrinsics = torch.tensor([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    generator = np.random.default_rng(seed)
    elevation = math.radians(CAMERA_ELEVATION_DEGREES)
    views = []
    for index in range(num_views):
        azimuth = 2 * math.pi * index / num_views
        centre = CAMERA_DISTANCE * np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation)])
        centre = centre + generator.uniform(-jitter, jitter, size=3)
        forward = -centre / np.linalg.norm(centre)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        rotation = np.stack([right, down, forward])
        pose = np.eye(4)
        pose[:3, :3] = rotation
        pose[:3, 3] = -rotation @ centre
        views.append(CameraView(f"C{index + 1:02d}", intrinsics.clone(), torch.from_numpy(pose), width, height))
    return views


def _intersect_sphere(origin: np.ndarray, directions: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """Return the ray parameter of the first hit per ray (inf for a miss); ``directions`` is ``(N, 3)``."""
    offset = origin - centre
    a = np.einsum("ij,ij->i", directions, directions)
    b = 2.0 * directions @ offset
    c = offset @ offset - radius**2
    discriminant = b**2 - 4 * a * c
    hit = discriminant >= 0
    root = np.sqrt(np.where(hit, discriminant, 0.0))
    near = (-b - root) / (2 * a)
    return np.where(hit & (near > 0), near, np.inf)


def render_view(camera: CameraView, bump: tuple[np.ndarray, float] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray-cast the sphere (and bump) into one view.

    Returns depth ``(H, W)`` in metres (inf on background), a shaded gray
    image ``(H, W)`` in [0, 1], and a bool mask of the pixels that see the bump.
    """
    intrinsics = camera.K.numpy()
    pose = camera.world_to_camera.numpy()
    rotation, translation = pose[:3, :3], pose[:3, 3]
    centre = -rotation.T @ translation

    v, u = np.mgrid[0 : camera.height, 0 : camera.width].astype(np.float64)
    rays_camera = np.stack([(u - intrinsics[0, 2]) / intrinsics[0, 0], (v - intrinsics[1, 2]) / intrinsics[1, 1], np.ones_like(u)], axis=-1)
    directions = rays_camera.reshape(-1, 3) @ rotation  # camera-frame z = 1, so the ray parameter is the depth

    depth = _intersect_sphere(centre, directions, np.zeros(3), SPHERE_RADIUS)
    on_bump = np.zeros_like(depth, dtype=bool)
    normals_centre = np.zeros((depth.shape[0], 3))
    if bump is not None:
        bump_centre, bump_radius = bump
        bump_depth = _intersect_sphere(centre, directions, bump_centre, bump_radius)
        on_bump = bump_depth < depth
        depth = np.minimum(depth, bump_depth)
        normals_centre[on_bump] = bump_centre

    points = centre + directions * np.where(np.isfinite(depth), depth, 0.0)[:, None]
    normals = points - normals_centre
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    light = np.array([0.3, 0.2, 0.93])
    shading = 0.15 + 0.85 * np.clip(normals @ (light / np.linalg.norm(light)), 0.0, 1.0)
    stripes = 0.1 * np.sin(12.0 * points[:, 2])
    image = np.where(np.isfinite(depth), np.clip(shading + stripes, 0.0, 1.0), 0.05)
    shape = (camera.height, camera.width)
    return depth.reshape(shape), image.reshape(shape), on_bump.reshape(shape)


def _ground_truth(cameras: Sequence[CameraView], depths: Sequence[np.ndarray], bump_masks: Sequence[np.ndarray]) -> geometry.VoxelGrid:
    """Voxelise all views; a voxel is anomalous when a bump pixel falls in it."""
    origin = torch.tensor(FIXTURE_ORIGIN, dtype=torch.float64)
    depth = [torch.from_numpy(np.where(np.isfinite(d), d, 0.0)) for d in depths]
    valid = [torch.from_numpy(np.isfinite(d)) for d in depths]
    grid = geometry.voxelize_depth(depth, valid, [c.K for c in cameras], [c.world_to_camera for c in cameras], origin, FIXTURE_VOXEL_SIZE)

    anomalous_keys = []
    for camera, view_depth, view_valid, mask in zip(cameras, depth, valid, bump_masks, strict=True):
        points = geometry.depth_to_world_points(view_depth, camera.K, camera.world_to_camera)[view_valid & torch.from_numpy(mask)]
        anomalous_keys.append(geometry.voxel_keys(geometry.points_to_voxels(points, origin, FIXTURE_VOXEL_SIZE)))
    grid.anomalous = torch.isin(geometry.voxel_keys(grid.coords), torch.cat(anomalous_keys))
    return grid


def _write_instance(
    directory: Path,
    cameras: list[CameraView],
    bump: tuple[np.ndarray, float] | None,
    synthetic: bool,
    with_ground_truth: bool,
) -> None:
    depths, masks = [], []
    for camera in cameras:
        depth, image, on_bump = render_view(camera, bump)
        depths.append(depth)
        masks.append(on_bump)
        if synthetic:
            # Renders are stored as 3-channel PNG to exercise the RGB-to-gray conversion.
            gray = (image * 255).round().astype(np.uint8)
            (directory / "RGB").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(directory / "RGB" / f"{camera.name}_2.png"), np.repeat(gray[..., None], 3, axis=2))
            write_depth_exr(directory / "DEPTH" / f"{camera.name}_depth.exr", np.where(np.isfinite(depth), depth / SYNTH_DEPTH_SCALE, 0.0))
        else:
            write_gray_png(directory / "rgb" / f"{camera.name}_2.png", image, bit_depth=16)
            write_depth_npy(directory / "depth" / f"{camera.name}.npy", depth)
    write_cameras(directory / "cameras.json", cameras, depth_scale=SYNTH_DEPTH_SCALE if synthetic else 1.0)
    if with_ground_truth:
        write_ground_truth(directory / "gt" / "anomaly_volume.npz", _ground_truth(cameras, depths, masks))


def _bump(seed: int) -> tuple[np.ndarray, float]:
    generator = np.random.default_rng(seed)
    azimuth = generator.uniform(0, 2 * math.pi)
    elevation = generator.uniform(math.radians(10), math.radians(50))
    direction = np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation)])
    return direction * SPHERE_RADIUS, 0.08


def make_sim3d_fixture(
    root: str | Path,
    category: str = "toy",
    views: int = 4,
    size: tuple[int, int] = (48, 64),
    setups: Sequence[str] = ("real2real", "synth2real"),
    num_good: int = 2,
    num_bad: int = 2,
    good_with_ground_truth: int = 1,
    jitter: float = 0.01,
    seed: int = 0,
) -> Path:
    """Write a small SiM3D-layout category under ``root`` and return the category folder.

    Args:
        root: dataset root; the category folder is created inside it.
        category: category folder name.
        views: views per instance.
        size: ``(height, width)`` of every view, pixels.
        setups: which training folders to write: ``<category>_real`` (16-bit
            PNG, ``.npy`` depth) and/or ``<category>_synth`` (RGB PNG, EXR depth
            in millimetres with ``depth_scale`` 0.001).
        num_good: nominal test instances ``<category>_good_01`` ...
        num_bad: anomalous test instances ``<category>_bad_01`` ..., each with a bump and ground truth.
        good_with_ground_truth: how many of the nominal test instances get an
            all-nominal ground-truth file; the others get none.
        jitter: camera-centre jitter of the test instances, metres.
        seed: seed of the bump positions and the jitter.
    """
    directory = Path(root) / category
    base = ring_cameras(views, size)
    if "real2real" in setups:
        _write_instance(directory / f"{category}_real", base, None, synthetic=False, with_ground_truth=False)
    if "synth2real" in setups:
        _write_instance(directory / f"{category}_synth", base, None, synthetic=True, with_ground_truth=False)
    for index in range(num_good):
        cameras = ring_cameras(views, size, jitter=jitter, seed=seed + 100 + index)
        _write_instance(directory / f"{category}_good_{index + 1:02d}", cameras, None, synthetic=False, with_ground_truth=index < good_with_ground_truth)
    for index in range(num_bad):
        cameras = ring_cameras(views, size, jitter=jitter, seed=seed + 200 + index)
        _write_instance(directory / f"{category}_bad_{index + 1:02d}", cameras, _bump(seed + index), synthetic=False, with_ground_truth=True)
    return directory
