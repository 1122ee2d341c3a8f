"""Procedural demo objects built in code from primitives and lathe profiles, in metres, z up, base at z = 0.

Each builder returns a mesh and a per-triangle albedo ``(T,)`` so that parts
of one object differ in gray level, as painted or mixed-material parts do.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import open3d as o3d


def lathe(profile: np.ndarray, segments: int = 64) -> o3d.geometry.TriangleMesh:
    """Revolve a profile ``(P, 2)`` of (radius, height) pairs in metres about the z axis into an open surface.

    A zero radius closes the surface at that height with a fan.
    """
    profile = np.asarray(profile, dtype=np.float64)
    angles = 2.0 * np.pi * np.arange(segments) / segments
    rings = np.stack(
        (profile[:, None, 0] * np.cos(angles), profile[:, None, 0] * np.sin(angles), np.repeat(profile[:, None, 1], segments, axis=1)),
        axis=-1,
    )
    vertices = rings.reshape(-1, 3)
    triangles = []
    for row in range(profile.shape[0] - 1):
        for column in range(segments):
            a = row * segments + column
            b = row * segments + (column + 1) % segments
            c = a + segments
            d = b + segments
            triangles += [(a, b, d), (a, d, c)]
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(np.asarray(triangles, dtype=np.int32)))
    mesh.remove_duplicated_vertices()
    mesh.remove_degenerate_triangles()
    return mesh


def _cylinder(radius: float, height: float, start: np.ndarray, end: np.ndarray | None = None, resolution: int = 24) -> o3d.geometry.TriangleMesh:
    """Return a closed cylinder from ``start`` to ``end`` (or of ``height`` straight up from ``start``)."""
    start = np.asarray(start, dtype=np.float64)
    end = start + np.array([0.0, 0.0, height]) if end is None else np.asarray(end, dtype=np.float64)
    axis = end - start
    length = float(np.linalg.norm(axis))
    mesh = o3d.geometry.TriangleMesh.create_cylinder(radius, length, resolution=resolution, split=4)
    direction = axis / length
    rotation_axis = np.cross([0.0, 0.0, 1.0], direction)
    sine = np.linalg.norm(rotation_axis)
    if sine > 1e-9:
        angle = np.arctan2(sine, direction[2])
        mesh.rotate(o3d.geometry.get_rotation_matrix_from_axis_angle(rotation_axis / sine * angle), center=np.zeros(3))
    mesh.translate((start + end) / 2.0)
    return mesh


def _box(size: tuple[float, float, float], corner: tuple[float, float, float]) -> o3d.geometry.TriangleMesh:
    mesh = o3d.geometry.TriangleMesh.create_box(*size)
    mesh.translate(np.asarray(corner, dtype=np.float64))
    return mesh


def _merge(parts: list[tuple[o3d.geometry.TriangleMesh, float]]) -> tuple[o3d.geometry.TriangleMesh, np.ndarray]:
    merged = o3d.geometry.TriangleMesh()
    albedo = []
    for part, value in parts:
        merged += part
        albedo.append(np.full(len(part.triangles), value))
    merged.compute_vertex_normals()
    return merged, np.concatenate(albedo)


def make_stool() -> tuple[o3d.geometry.TriangleMesh, np.ndarray]:
    """Build a round stool, 0.47 m tall: seat disc, four splayed legs and a foot ring."""
    parts = [(_cylinder(0.17, 0.035, [0.0, 0.0, 0.435], resolution=64), 0.8)]
    for angle in np.pi / 4 + np.pi / 2 * np.arange(4):
        direction = np.array([np.cos(angle), np.sin(angle), 0.0])
        parts.append((_cylinder(0.016, 0.0, 0.18 * direction, 0.1 * direction + [0.0, 0.0, 0.44]), 0.55))
    ring = o3d.geometry.TriangleMesh.create_torus(torus_radius=0.155, tube_radius=0.008, radial_resolution=64, tubular_resolution=12)
    ring.translate([0.0, 0.0, 0.16])
    parts.append((ring, 0.55))
    return _merge(parts)


def make_vase() -> tuple[o3d.geometry.TriangleMesh, np.ndarray]:
    """Build a lathe-profile vase, 0.42 m tall, with a bulging body, a neck and a lip."""
    heights = np.linspace(0.0, 0.42, 40)
    radii = 0.075 + 0.06 * np.sin(np.pi * np.clip(heights / 0.34, 0.0, 1.0)) ** 1.5
    radii[heights > 0.34] = 0.075 + 0.15 * (heights[heights > 0.34] - 0.34)
    profile = np.concatenate(([[0.0, 0.0]], np.stack((radii, heights), axis=1), [[radii[-1] - 0.008, 0.42], [radii[-1] - 0.01, 0.36]]))
    return _merge([(lathe(profile, 72), 0.7)])


def make_bin() -> tuple[o3d.geometry.TriangleMesh, np.ndarray]:
    """Build a tapered rubbish bin, 0.40 m tall, with a rolled rim and a pedal."""
    heights = np.linspace(0.0, 0.38, 16)
    radii = 0.13 + 0.03 * heights / 0.38
    profile = np.concatenate(([[0.0, 0.0]], np.stack((radii, heights), axis=1), [[0.152, 0.38], [0.148, 0.05]]))
    rim = o3d.geometry.TriangleMesh.create_torus(torus_radius=0.163, tube_radius=0.01, radial_resolution=72, tubular_resolution=12)
    rim.translate([0.0, 0.0, 0.385])
    pedal = _box((0.08, 0.06, 0.02), (-0.04, -0.18, 0.02))
    return _merge([(lathe(profile, 72), 0.65), (rim, 0.45), (pedal, 0.35)])


def make_cabinet() -> tuple[o3d.geometry.TriangleMesh, np.ndarray]:
    """Build a sink cabinet, 0.56 m tall: body, overhanging top, two doors with handles and a plinth."""
    parts = [
        (_box((0.40, 0.30, 0.46), (-0.20, -0.15, 0.05)), 0.75),
        (_box((0.44, 0.33, 0.04), (-0.22, -0.165, 0.51)), 0.6),
        (_box((0.38, 0.27, 0.05), (-0.19, -0.135, 0.0)), 0.4),
    ]
    for left in (-0.19, 0.005):
        parts.append((_box((0.185, 0.012, 0.42), (left, -0.162, 0.07)), 0.82))
    for x in (-0.03, 0.03):
        parts.append((_cylinder(0.007, 0.0, [x, -0.162, 0.42], [x, -0.185, 0.42], resolution=12), 0.3))
        parts.append((_cylinder(0.006, 0.12, [x, -0.185, 0.36], resolution=12), 0.3))
    return _merge(parts)


DEMO_OBJECTS: dict[str, Callable[[], tuple[o3d.geometry.TriangleMesh, np.ndarray]]] = {
    "stool": make_stool,
    "vase": make_vase,
    "bin": make_bin,
    "cabinet": make_cabinet,
}
