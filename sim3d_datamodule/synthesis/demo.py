"""The embedded demo category: procedural objects rendered as a complete SiM3D-layout category."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sim3d_datamodule import geometry
from sim3d_datamodule.io import CameraView, write_cameras, write_depth_npy, write_gray_png, write_ground_truth
from sim3d_datamodule.synthesis.capture import CaptureEffects, degrade_view, jitter_cameras, jitter_shading
from sim3d_datamodule.synthesis.defects import DEFECT_KINDS, Defect, defects_contain, sample_defect
from sim3d_datamodule.synthesis.mesh_defects import apply_defects_to_mesh
from sim3d_datamodule.synthesis.preview import write_preview
from sim3d_datamodule.synthesis.procedural import DEMO_OBJECTS
from sim3d_datamodule.synthesis.render import RenderedView, Shading, bounding_sphere, render_views, write_synth_folder
from sim3d_datamodule.synthesis.rig import make_rig

DEMO_CATEGORIES: tuple[str, ...] = tuple(f"demo_{name}" for name in DEMO_OBJECTS)
# Voxel edge as a fraction of the object's bounding radius: about two pixels at the default image size.
VOXEL_FRACTION = 1.0 / 60.0
MAX_PLACEMENT_TRIES = 8
# The bounding sphere is loose around the demo objects: this margin still keeps them inside the image.
RIG_MARGIN = 0.95
# Settings shared by every command that generates a demo category on first use: a category written
# with other settings is generated again, so `modmap demo` and the benchmark must agree.
SHARED_DEMO_SETTINGS = {"synth": True}


def _albedo_hook(defect: Defect):
    return lambda points, _triangles: defect.albedo_factor(points)


def _defect_mask(defects: Sequence[Defect], render: RenderedView) -> np.ndarray:
    """Return ``(H, W)`` bool, the hit pixels whose surface point lies in a defect."""
    points = np.nan_to_num(render.points).reshape(-1, 3)
    return defects_contain(defects, points).reshape(render.hit.shape) & render.hit


def _visible_surface(renders: Sequence[RenderedView]) -> tuple[np.ndarray, np.ndarray]:
    points = np.concatenate([render.points[render.hit] for render in renders])
    normals = np.concatenate([render.normals[render.hit] for render in renders])
    return points, normals


def write_instance(folder: Path, cameras: Sequence[CameraView], grays: Sequence[np.ndarray], depths: Sequence[np.ndarray]) -> None:
    """Write one instance as ``rgb/<view>_2.png``, ``depth/<view>.npy`` (metres, inf invalid) and ``cameras.json``."""
    for camera, gray, depth in zip(cameras, grays, depths):
        write_gray_png(folder / "rgb" / f"{camera.name}_2.png", gray)
        write_depth_npy(folder / "depth" / f"{camera.name}.npy", depth)
    write_cameras(folder / "cameras.json", list(cameras))


def ground_truth_from_views(
    depths: Sequence[np.ndarray], labels: Sequence[np.ndarray] | None, cameras: Sequence[CameraView], voxel_size: float, origin: np.ndarray | None = None
) -> geometry.VoxelGrid:
    """Voxelise the valid depth of all views; a voxel is anomalous when a labelled pixel lands in it."""
    depth = np.stack(depths).astype(np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    depth_tensor = torch.from_numpy(np.where(valid, depth, 0.0))
    intrinsics = torch.stack([camera.K.to(torch.float64) for camera in cameras])
    poses = torch.stack([camera.world_to_camera.to(torch.float64) for camera in cameras])
    if origin is None:
        # Default origin: the minimum corner of the points, floored to a multiple of the voxel size.
        points = geometry.depth_to_world_points(depth_tensor, intrinsics, poses)[torch.from_numpy(valid)]
        if points.shape[0] == 0:
            msg = "No valid depth pixel in any view: cannot build a ground-truth voxel grid."
            raise ValueError(msg)
        origin = (torch.floor(points.min(dim=0).values / voxel_size) * voxel_size).numpy()
    return geometry.voxelize_depth(
        depth_tensor,
        torch.from_numpy(valid),
        intrinsics,
        poses,
        torch.from_numpy(np.asarray(origin, dtype=np.float64)),
        voxel_size,
        point_labels=None if labels is None else torch.from_numpy(np.stack(labels) & valid),
    )


def make_demo_dataset(
    root: Path,
    category: str = "demo_stool",
    views: int = 8,
    image_size: int = 192,
    seed: int = 0,
    nominal: int = 4,
    anomalous: int = 4,
    synth: bool = False,
    kinds: Sequence[str] = DEFECT_KINDS,
    defects_per_instance: int = 1,
    defect_size: float = 0.1,
    severity: float = 1.0,
    effects: CaptureEffects | None = None,
    progress: bool = True,
) -> Path:
    """Render a procedural object as a SiM3D-layout category under ``root/category``.

    Writes ``<category>_real`` (training), ``<category>_good_XX`` (nominal
    test) and ``<category>_bad_XX`` (anomalous test). Each anomalous instance
    has ``defects_per_instance`` defects whose kinds are taken in turn from
    ``kinds``. Every instance has its own capture effects. With ``synth`` a
    clean ``<category>_synth`` render is added. ``root/<category>_preview.png``
    is a contact sheet with the defects outlined. Every test instance gets ``gt/anomaly_volume.npz`` at a voxel edge
    of 1/60 of the object's bounding radius. Views form a ring at 30 degrees
    elevation; images are ``image_size`` x ``image_size``.

    Returns:
        The category folder.
    """
    name = category.removeprefix("demo_")
    if name not in DEMO_OBJECTS:
        msg = f"Unknown demo category {category!r}; expected one of {DEMO_CATEGORIES}."
        raise ValueError(msg)
    unknown = sorted(set(kinds) - set(DEFECT_KINDS))
    if unknown or not kinds:
        msg = f"Invalid defect kinds {list(kinds)}; choose from {DEFECT_KINDS}."
        raise ValueError(msg)
    if nominal < 0 or anomalous < 0 or nominal + anomalous < 1:
        msg = f"Invalid demo size: nominal={nominal}, anomalous={anomalous}. A category needs at least one test instance."
        raise ValueError(msg)
    if defect_size <= 0 or severity <= 0:
        msg = f"Invalid defect_size={defect_size} or severity={severity}; both must be positive."
        raise ValueError(msg)
    effects = effects or CaptureEffects()
    mesh, albedo = DEMO_OBJECTS[name]()
    center, radius = bounding_sphere(mesh)
    voxel_size = radius * VOXEL_FRACTION
    origin = np.floor((center - 2.0 * radius) / voxel_size) * voxel_size
    rig = make_rig("ring", views, center, radius, image_size, image_size, elevation_degrees=30.0, margin=RIG_MARGIN)
    clean_shading = Shading(albedo=albedo)
    clean = render_views(mesh, rig, clean_shading)
    surface_points, surface_normals = _visible_surface(clean)

    folder = Path(root) / category
    instances = [(f"{category}_real", False)]
    instances += [(f"{category}_good_{index + 1:02d}", False) for index in range(nominal)]
    instances += [(f"{category}_bad_{index + 1:02d}", True) for index in range(anomalous)]
    bad_index = 0
    preview_rows = []
    for index, (instance, is_bad) in enumerate(tqdm(instances, desc=f"demo {category}", unit="instance", disable=not progress)):
        rng = np.random.default_rng([seed, index])
        for _ in range(MAX_PLACEMENT_TRIES):
            defects = []
            if is_bad:
                for slot in range(defects_per_instance):
                    kind = kinds[(bad_index * defects_per_instance + slot) % len(kinds)]
                    defects.append(sample_defect(kind, surface_points, surface_normals, radius, rng, defect_size, severity))
            instance_mesh, parents = apply_defects_to_mesh(mesh, defects) if defects else (mesh, np.arange(len(albedo)))
            cameras = jitter_cameras(rig, center, effects, rng)
            shading = Shading(albedo=albedo[parents], albedo_factors=tuple(_albedo_hook(defect) for defect in defects))
            renders = render_views(instance_mesh, cameras, jitter_shading(shading, effects, rng))
            captured = [degrade_view(render, camera, effects, rng) for render, camera in zip(renders, cameras)]
            grays = [gray for gray, _ in captured]
            depths = [depth for _, depth in captured]
            labels = [_defect_mask(defects, render) for render in renders]
            grid = ground_truth_from_views(depths, labels, cameras, voxel_size, origin)
            if not is_bad or bool(grid.anomalous.any()):
                break
        else:
            msg = f"No defect of {instance} was visible in any view after {MAX_PLACEMENT_TRIES} placements; raise defect_size."
            raise RuntimeError(msg)
        bad_index += int(is_bad)
        write_instance(folder / instance, cameras, grays, depths)
        if index > 0:
            write_ground_truth(folder / instance / "gt" / "anomaly_volume.npz", grid)
        preview_rows.append((instance, np.stack(grays), np.stack(labels)))
    if synth:
        write_synth_folder(folder / f"{category}_synth", rig, clean)
    write_preview(Path(root) / f"{category}_preview.png", preview_rows)
    return folder


def ensure_demo_dataset(root: Path, category: str = "demo_stool", progress: bool = True, **settings) -> Path:
    """Return ``root/category``, generating it with :func:`make_demo_dataset` unless a complete copy exists.

    A copy is complete when ``root/<category>_demo.json``, written last, contains
    the same settings. Otherwise the category folder is deleted and generated
    again, so an interrupted or differently configured run never mixes files.
    """
    root = Path(root)
    folder = root / category
    record = root / f"{category}_demo.json"
    expected_settings = {"category": category, **{key: list(value) if isinstance(value, tuple) else value for key, value in sorted(settings.items())}}
    if folder.is_dir() and record.is_file():
        try:
            if json.loads(record.read_text()) == expected_settings:
                return folder
        except json.JSONDecodeError:
            pass
    if folder.is_dir():
        shutil.rmtree(folder)
    make_demo_dataset(root, category, progress=progress, **settings)
    record.write_text(json.dumps(expected_settings, indent=1))
    return folder
