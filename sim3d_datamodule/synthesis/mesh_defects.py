"""Defects on triangle meshes: local subdivision, then surface offsets or removed triangles."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import open3d as o3d

from sim3d_datamodule.synthesis.defects import GEOMETRIC_KINDS, HOLE_RIM, PATH_KINDS, Defect, distance_to_polyline

MAX_TRIANGLES = 4_000_000


def _edge_keys(triangles: np.ndarray, num_vertices: int) -> np.ndarray:
    """Return ``(T, 3)`` int64 keys of the edges (v0 v1), (v1 v2), (v2 v0)."""
    first = triangles
    second = np.roll(triangles, -1, axis=1)
    low = np.minimum(first, second).astype(np.int64)
    high = np.maximum(first, second).astype(np.int64)
    return low * num_vertices + high


def subdivide_triangles(vertices: np.ndarray, triangles: np.ndarray, selected: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split ``selected`` triangles in four without T-junctions (red-green refinement).

    Neighbours that share two split edges are split in four too; neighbours
    that share one split edge are bisected. Winding is preserved.

    Returns:
        New vertices ``(V', 3)``, triangles ``(T', 3)`` and the index ``(T',)``
        of each new triangle's parent in ``triangles``.
    """
    num_vertices = vertices.shape[0]
    keys = _edge_keys(triangles, num_vertices)
    selected = selected.copy()
    while True:
        split = np.isin(keys, np.unique(keys[selected]))
        promote = (split.sum(axis=1) >= 2) & ~selected
        if not promote.any():
            break
        selected |= promote
    split_keys = np.unique(keys[selected])
    split = np.isin(keys, split_keys)
    counts = split.sum(axis=1)

    midpoints = (vertices[split_keys // num_vertices] + vertices[split_keys % num_vertices]) / 2.0
    new_vertices = np.concatenate((vertices, midpoints))
    midpoint_index = np.full(keys.shape, -1, dtype=np.int64)
    midpoint_index[split] = num_vertices + np.searchsorted(split_keys, keys[split])

    parents = [np.flatnonzero(counts == 0)]
    pieces = [triangles[parents[0]]]

    red = np.flatnonzero(counts == 3)
    a, b, c = triangles[red].T
    ab, bc, ca = midpoint_index[red].T
    for piece in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca)):
        pieces.append(np.stack(piece, axis=1))
        parents.append(red)

    green = np.flatnonzero(counts == 1)
    edge = np.argmax(split[green], axis=1)
    # Rotate each green triangle so that its split edge is (v0, v1).
    order = (edge[:, None] + np.arange(3)) % 3
    rotated = np.take_along_axis(triangles[green], order, axis=1)
    middle = midpoint_index[green, edge]
    pieces.append(np.stack((rotated[:, 0], middle, rotated[:, 2]), axis=1))
    pieces.append(np.stack((middle, rotated[:, 1], rotated[:, 2]), axis=1))
    parents += [green, green]
    return new_vertices, np.concatenate(pieces).astype(np.int64), np.concatenate(parents)


def _refinement_edge(defect: Defect) -> float:
    if defect.kind in PATH_KINDS:
        return defect.radius / 1.5
    return defect.radius / 8.0


def _near_footprint(defect: Defect, centroids: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Return ``(T,)`` bool, true for triangles (centroid, max vertex distance) that may touch the footprint."""
    plane, offset = defect.local_coordinates(centroids)
    if defect.kind in PATH_KINDS:
        outside = distance_to_polyline(plane, defect.path) - defect.radius
    else:
        ripple = float(np.abs(defect.harmonics[:, 0]).sum()) if len(defect.harmonics) else 0.0
        # Refine out to the ground-truth rim of holes so that the cut edge and the rim are both resolved.
        outside = np.linalg.norm(plane, axis=1) - defect.radius * (1.0 + ripple) * HOLE_RIM
    return (outside < spans) & (np.abs(offset) < defect.band + spans)


def refine_near_defect(
    vertices: np.ndarray, triangles: np.ndarray, parents: np.ndarray, defect: Defect, max_triangles: int = MAX_TRIANGLES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Subdivide triangles near ``defect`` until their edges are short enough to carry its shape."""
    target = _refinement_edge(defect)
    while True:
        corners = vertices[triangles]
        centroids = corners.mean(axis=1)
        spans = np.linalg.norm(corners - centroids[:, None], axis=2).max(axis=1)
        edges = np.linalg.norm(corners - np.roll(corners, -1, axis=1), axis=2).max(axis=1)
        selected = _near_footprint(defect, centroids, spans) & (edges > target)
        if not selected.any():
            return vertices, triangles, parents
        if triangles.shape[0] + 3 * int(selected.sum()) > max_triangles:
            msg = (
                f"Refining the mesh for a {defect.kind} of radius {defect.radius:.4g} m would exceed {max_triangles} triangles; "
                "use a larger defect size or a finer input mesh."
            )
            raise ValueError(msg)
        vertices, triangles, local_parents = subdivide_triangles(vertices, triangles, selected)
        parents = parents[local_parents]


def apply_defects_to_mesh(
    mesh: o3d.geometry.TriangleMesh, defects: Sequence[Defect], max_triangles: int = MAX_TRIANGLES
) -> tuple[o3d.geometry.TriangleMesh, np.ndarray]:
    """Return a copy of ``mesh`` with the geometric defects and holes of ``defects`` applied.

    Stains change no geometry; render them with each defect's
    :meth:`Defect.albedo_factor`. Returns the new mesh and, for each of its
    triangles, the index of the input triangle it came from (to carry
    per-triangle albedo over).
    """
    vertices = np.asarray(mesh.vertices, dtype=np.float64).copy()
    triangles = np.asarray(mesh.triangles, dtype=np.int64).copy()
    parents = np.arange(triangles.shape[0])
    for defect in defects:
        if defect.kind not in GEOMETRIC_KINDS and defect.kind != "hole":
            continue
        vertices, triangles, parents = refine_near_defect(vertices, triangles, parents, defect, max_triangles)
    original = vertices.copy()
    for defect in defects:
        if defect.kind in GEOMETRIC_KINDS:
            vertices += defect.offset(original)[:, None] * defect.normal
    for defect in defects:
        if defect.kind == "hole":
            keep = defect.normalized_distance(original[triangles].mean(axis=1)) >= 1.0
            triangles, parents = triangles[keep], parents[keep]
    result = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(triangles.astype(np.int32)))
    result.compute_vertex_normals()
    return result, parents
