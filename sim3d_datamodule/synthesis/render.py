"""Grayscale and depth rendering of triangle meshes with open3d's CPU ray casting.

Shading is Lambertian with an ambient term, any number of lights (directional
lights fixed in the world, or a headlight at each camera) and optional
Blinn-Phong highlights. Directional lights cast shadows. Depth is the
camera-frame z in metres, ``inf`` where a ray misses the mesh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import open3d as o3d
import torch
from tqdm import tqdm

from sim3d_datamodule import geometry
from sim3d_datamodule.io import CameraView, write_cameras, write_depth_exr, write_gray_png

MESH_SUFFIXES: tuple[str, ...] = (".stl", ".obj", ".ply", ".off", ".gltf", ".glb")
UNIT_SCALES: dict[str, float] = {"m": 1.0, "cm": 0.01, "mm": 0.001}

# Albedo hook: (world points (N, 3), triangle ids (N,)) -> multiplicative factor (N,).
AlbedoFactor = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Light:
    """One light source.

    Attributes:
        intensity: radiance scale; a surface facing the light with albedo 1 gets this gray value.
        direction: ``(3,)`` world direction from the surface towards the light
            (a directional light), or ``None`` for a headlight at each camera.
    """

    intensity: float
    direction: np.ndarray | None = None


DEFAULT_LIGHTS: tuple[Light, ...] = (Light(0.55), Light(0.45, np.array([0.3, -0.4, 1.0])))


def parse_light(text: str) -> Light:
    """Parse ``head:I`` (headlight) or ``X,Y,Z:I`` (directional light towards X,Y,Z) into a :class:`Light`."""
    where, _, intensity = text.partition(":")
    try:
        value = float(intensity)
        if where.strip().lower() in ("head", "headlight", "camera"):
            return Light(value)
        direction = np.array([float(part) for part in where.split(",")])
    except ValueError:
        direction = np.zeros(0)
        value = float("nan")
    if direction.shape != (3,) or not np.isfinite(value) or np.linalg.norm(direction) == 0.0:
        msg = f"Invalid light {text!r}: expected 'head:INTENSITY' or 'X,Y,Z:INTENSITY', e.g. 'head:0.6' or '0,0,1:0.4'."
        raise ValueError(msg)
    return Light(value, direction)


@dataclass
class Shading:
    """Material and lighting of a render.

    Attributes:
        lights: light sources; see :class:`Light`.
        ambient: gray added to every lit surface, times albedo.
        albedo: base albedo in [0, 1], or ``(T,)`` per triangle.
        albedo_factors: hooks that scale the albedo at each hit point (stains).
        specular: strength of Blinn-Phong highlights (0 disables them).
        shininess: Blinn-Phong exponent.
        shadows: directional lights are blocked by the mesh itself.
        background: gray value of pixels that miss the mesh.
    """

    lights: Sequence[Light] = DEFAULT_LIGHTS
    ambient: float = 0.1
    albedo: float | np.ndarray = 0.75
    albedo_factors: Sequence[AlbedoFactor] = field(default_factory=tuple)
    specular: float = 0.0
    shininess: float = 40.0
    shadows: bool = True
    background: float = 0.0


@dataclass
class RenderedView:
    """Render of one view.

    Attributes:
        gray: ``(H, W)`` float32 in [0, 1].
        depth: ``(H, W)`` float32 camera-frame z in metres, ``inf`` on background.
        points: ``(H, W, 3)`` float64 world hit points, NaN on background.
        normals: ``(H, W, 3)`` float64 unit normals facing the camera, 0 on background.
        triangle_ids: ``(H, W)`` int64 hit triangle, -1 on background.
    """

    gray: np.ndarray
    depth: np.ndarray
    points: np.ndarray
    normals: np.ndarray
    triangle_ids: np.ndarray

    @property
    def hit(self) -> np.ndarray:
        """``(H, W)`` bool, pixels whose ray hits the mesh."""
        return self.triangle_ids >= 0


def load_mesh(path: Path, units: str = "m") -> o3d.geometry.TriangleMesh:
    """Read a triangle mesh (STL, OBJ, PLY, OFF, glTF) and scale it to metres.

    ``units`` is the length unit of the file's coordinates: ``m``, ``cm`` or ``mm``.
    """
    path = Path(path)
    if units not in UNIT_SCALES:
        msg = f"Unknown mesh units {units!r}; expected one of {sorted(UNIT_SCALES)}."
        raise ValueError(msg)
    if not path.is_file():
        msg = f"Mesh file not found: {path}."
        raise FileNotFoundError(msg)
    if path.suffix.lower() not in MESH_SUFFIXES:
        msg = f"Unsupported mesh format {path.suffix!r} for {path}; expected one of {MESH_SUFFIXES}."
        raise ValueError(msg)
    mesh = o3d.io.read_triangle_mesh(str(path))
    if len(mesh.triangles) == 0:
        msg = f"{path} contains no triangles (a point cloud or an unreadable file); pass a triangle mesh."
        raise ValueError(msg)
    mesh.scale(UNIT_SCALES[units], center=np.zeros(3))
    mesh.remove_duplicated_vertices()
    mesh.remove_degenerate_triangles()
    return mesh


def bounding_sphere(mesh: o3d.geometry.TriangleMesh) -> tuple[np.ndarray, float]:
    """Return the centre ``(3,)`` and radius (metres) of the sphere around the mesh's bounding box."""
    box = mesh.get_axis_aligned_bounding_box()
    center = np.asarray(box.get_center(), dtype=np.float64)
    radius = float(np.linalg.norm(np.asarray(box.get_extent())) / 2.0)
    return center, radius


def make_scene(mesh: o3d.geometry.TriangleMesh) -> o3d.t.geometry.RaycastingScene:
    """Build a ray-casting scene holding ``mesh``."""
    scene = o3d.t.geometry.RaycastingScene()
    # Only geometry is used: silence open3d's warning that extra OBJ materials are not converted.
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        triangles = o3d.t.geometry.TriangleMesh.from_legacy(mesh)
    scene.add_triangles(triangles)
    return scene


def _shade(
    scene: o3d.t.geometry.RaycastingScene,
    points: np.ndarray,
    normals: np.ndarray,
    view_directions: np.ndarray,
    albedo: np.ndarray,
    shading: Shading,
) -> np.ndarray:
    """Return the gray value ``(N,)`` of hit points with unit normals and unit directions towards the camera."""
    radiance = np.full(points.shape[0], shading.ambient)
    highlight = np.zeros(points.shape[0])
    if points.shape[0] == 0:
        return radiance
    # Offset shadow-ray origins off the surface so that they do not hit their own triangle.
    offset = 1e-5 + 1e-6 * np.abs(points).max()
    for light in shading.lights:
        if light.direction is None:
            towards = view_directions
            visible = np.ones(points.shape[0], dtype=bool)
        else:
            towards = np.broadcast_to(light.direction / np.linalg.norm(light.direction), points.shape)
            visible = np.ones(points.shape[0], dtype=bool)
            if shading.shadows and points.shape[0]:
                rays = np.concatenate((points + offset * normals, towards), axis=1).astype(np.float32)
                visible = ~scene.test_occlusions(o3d.core.Tensor(rays)).numpy().astype(bool)
        cosine = np.clip(np.einsum("ij,ij->i", normals, towards), 0.0, None)
        radiance += light.intensity * cosine * visible
        if shading.specular > 0.0:
            half = towards + view_directions
            half /= np.linalg.norm(half, axis=1, keepdims=True).clip(1e-12)
            specular = np.clip(np.einsum("ij,ij->i", normals, half), 0.0, None) ** shading.shininess
            highlight += shading.specular * light.intensity * specular * visible * (cosine > 0)
    return albedo * radiance + highlight


def render_view(
    scene: o3d.t.geometry.RaycastingScene,
    camera: CameraView,
    shading: Shading | None = None,
) -> RenderedView:
    """Ray-cast one view of the mesh in ``scene`` and shade it; see :class:`RenderedView` for the outputs."""
    shading = shading or Shading()
    height, width = camera.height, camera.width
    origins, directions = geometry.camera_rays(
        camera.K.to(torch.float64),
        camera.world_to_camera.to(torch.float64),
        height,
        width,
    )
    origins = origins.reshape(-1, 3).numpy()
    directions = directions.reshape(-1, 3).numpy()
    rays = np.concatenate((origins, directions), axis=1).astype(np.float32)
    result = scene.cast_rays(o3d.core.Tensor(rays))
    # Directions have unit camera-frame z, so the ray parameter is the depth.
    depth = result["t_hit"].numpy().astype(np.float64)
    triangle_ids = result["primitive_ids"].numpy().astype(np.int64)
    hit = np.isfinite(depth)
    triangle_ids[~hit] = -1

    points = np.full((height * width, 3), np.nan)
    points[hit] = origins[hit] + depth[hit, None] * directions[hit]
    normals = np.zeros((height * width, 3))
    hit_normals = result["primitive_normals"].numpy()[hit].astype(np.float64)
    hit_normals /= np.linalg.norm(hit_normals, axis=1, keepdims=True).clip(1e-12)
    towards_camera = -directions[hit] / np.linalg.norm(directions[hit], axis=1, keepdims=True)
    # Meshes from CAD exports often have inconsistent winding, so normals are flipped to face the camera.
    facing = np.einsum("ij,ij->i", hit_normals, towards_camera)
    hit_normals[facing < 0] *= -1.0
    normals[hit] = hit_normals

    albedo = shading.albedo
    if np.ndim(albedo) == 0:
        hit_albedo = np.full(int(hit.sum()), float(albedo))
    else:
        hit_albedo = np.asarray(albedo, dtype=np.float64)[triangle_ids[hit]]
    for factor in shading.albedo_factors:
        hit_albedo = hit_albedo * factor(points[hit], triangle_ids[hit])

    gray = np.full(height * width, shading.background)
    gray[hit] = _shade(scene, points[hit], hit_normals, towards_camera, hit_albedo, shading)
    depth[~hit] = np.inf
    return RenderedView(
        gray=np.clip(gray, 0.0, 1.0).reshape(height, width).astype(np.float32),
        depth=depth.reshape(height, width).astype(np.float32),
        points=points.reshape(height, width, 3),
        normals=normals.reshape(height, width, 3),
        triangle_ids=triangle_ids.reshape(height, width),
    )


def render_views(
    mesh: o3d.geometry.TriangleMesh,
    cameras: Sequence[CameraView],
    shading: Shading | Sequence[Shading] | None = None,
    progress: bool = False,
    description: str = "render",
) -> list[RenderedView]:
    """Render every camera of ``cameras``; ``shading`` is one for all views or one per view."""
    scene = make_scene(mesh)
    if shading is None or isinstance(shading, Shading):
        shadings = [shading] * len(cameras)
    else:
        shadings = list(shading)
        if len(shadings) != len(cameras):
            msg = f"Got {len(shadings)} shadings for {len(cameras)} cameras; pass one, or one per camera."
            raise ValueError(msg)
    iterator = tqdm(list(zip(cameras, shadings)), desc=description, unit="view", disable=not progress, leave=False)
    return [render_view(scene, camera, view_shading) for camera, view_shading in iterator]


def write_synth_folder(folder: Path, cameras: Sequence[CameraView], renders: Sequence[RenderedView]) -> None:
    """Write renders in the ``<category>_synth`` layout: ``RGB/<view>_2.png``, ``DEPTH/<view>_depth.exr``, ``cameras.json``."""
    folder = Path(folder)
    for camera, render in zip(cameras, renders):
        write_gray_png(folder / "RGB" / f"{camera.name}_2.png", render.gray)
        write_depth_exr(folder / "DEPTH" / f"{camera.name}_depth.exr", render.depth)
    write_cameras(folder / "cameras.json", list(cameras))
