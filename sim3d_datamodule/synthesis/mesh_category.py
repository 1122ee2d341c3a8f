"""Rendering a user's mesh into a category folder: the ``sim3d render`` pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sim3d_datamodule.io import CameraView, read_cameras, write_ground_truth
from sim3d_datamodule.synthesis.defects import defects_contain, sample_defect
from sim3d_datamodule.synthesis.demo import ground_truth_from_views, write_instance
from sim3d_datamodule.synthesis.mesh_defects import apply_defects_to_mesh
from sim3d_datamodule.synthesis.render import DEFAULT_LIGHTS, Light, Shading, bounding_sphere, load_mesh, render_views, write_synth_folder
from sim3d_datamodule.synthesis.rig import make_rig

# Ground-truth voxel edge of a defective render, as a fraction of the mesh's bounding radius.
VOXEL_FRACTION = 1.0 / 60.0


def render_mesh_category(
    mesh_path: Path,
    root: Path,
    category: str,
    views: int = 12,
    rig: str = "ring",
    cameras_path: Path | None = None,
    units: str = "mm",
    size: tuple[int, int] = (640, 480),
    fov: float = 40.0,
    elevation: float = 30.0,
    up_axis: str = "z",
    lights: Sequence[Light] = DEFAULT_LIGHTS,
    ambient: float = 0.1,
    albedo: float = 0.75,
    defect_kinds: Sequence[str] = (),
    defect_size: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Render ``mesh_path`` into ``root/category/category_synth``.

    Cameras come from ``cameras_path`` (a ``cameras.json`` in the mesh's frame,
    metres) or from a ``rig`` of ``views`` cameras of ``size`` (width, height).
    With ``defect_kinds``, also writes a test instance
    ``category_bad_render`` from the same cameras with those defects and its
    ground truth.

    Returns:
        The folders written.
    """
    mesh = load_mesh(mesh_path, units)
    center, radius = bounding_sphere(mesh)
    if cameras_path is not None:
        cameras: list[CameraView] = read_cameras(cameras_path).views
    else:
        cameras = make_rig(rig, views, center, radius, size[0], size[1], fov_degrees=fov, elevation_degrees=elevation, up_axis=up_axis)
    shading = Shading(lights=tuple(lights), ambient=ambient, albedo=albedo)
    renders = render_views(mesh, cameras, shading, progress=progress, description=f"render {category}")
    empty_views = [camera.name for camera, render in zip(cameras, renders) if not render.hit.any()]
    if empty_views:
        msg = (
            f"{len(empty_views)} of {len(cameras)} views see no surface of {mesh_path}: {', '.join(empty_views)}. "
            f"Check the up axis (--up, now {up_axis}), the length unit (--units, now {units}), "
            "and raise --elevation if a flat part is seen edge-on. "
            "Cameras passed with --cameras must be in the mesh's frame, in metres."
        )
        raise ValueError(msg)
    folder = Path(root) / category
    synth = folder / f"{category}_synth"
    write_synth_folder(synth, cameras, renders)
    written = [synth]
    if defect_kinds:
        rng = np.random.default_rng(seed)
        points = np.concatenate([render.points[render.hit] for render in renders])
        normals = np.concatenate([render.normals[render.hit] for render in renders])
        defects = [sample_defect(kind, points, normals, radius, rng, defect_size) for kind in defect_kinds]
        damaged, _ = apply_defects_to_mesh(mesh, defects)
        factors = tuple((lambda p, _t, d=defect: d.albedo_factor(p)) for defect in defects)
        bad_shading = Shading(lights=tuple(lights), ambient=ambient, albedo=albedo, albedo_factors=factors)
        bad = render_views(damaged, cameras, bad_shading, progress=progress, description=f"render {category} defects")
        labels = [defects_contain(defects, np.nan_to_num(r.points).reshape(-1, 3)).reshape(r.hit.shape) & r.hit for r in bad]
        instance = folder / f"{category}_bad_render"
        write_instance(instance, cameras, [r.gray for r in bad], [r.depth for r in bad])
        write_ground_truth(instance / "gt" / "anomaly_volume.npz", ground_truth_from_views([r.depth for r in bad], labels, cameras, radius * VOXEL_FRACTION))
        written.append(instance)
    return written
