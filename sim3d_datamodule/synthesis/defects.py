"""Surface defects defined in 3D, applied to meshes or to posed depth maps, with exact ground truth.

A defect lives in a local frame at a surface point: ``center``, unit
``normal`` and two tangents. Its footprint is a region of the tangent plane
(an irregular disc for patch defects, a band around a curved 2-D path for
cracks and scratches), extruded along the normal within ``band`` metres. Geometric
defects move the surface along ``normal`` by a signed offset profile, positive
outwards. Stains scale the albedo and leave the geometry unchanged. Holes
remove the material in the footprint.

Because the footprint is a 3-D region, the same defect lands consistently in
every view of a posed capture, and the ground truth of a view is the set of
pixels whose surface point lies in the footprint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import open3d as o3d

DEFECT_KINDS: tuple[str, ...] = ("dent", "bump", "hole", "chip", "crack", "scratch", "stain")
GEOMETRIC_KINDS: frozenset[str] = frozenset({"dent", "bump", "chip", "crack", "scratch"})
PATH_KINDS: frozenset[str] = frozenset({"crack", "scratch"})
HOLE_RIM = 1.25


@dataclass
class Defect:
    """One surface defect in world coordinates (metres).

    Attributes:
        kind: one of :data:`DEFECT_KINDS`.
        center: ``(3,)`` anchor point on the surface.
        normal: ``(3,)`` unit outward normal at the anchor; geometric
            defects move the surface along it.
        radius: footprint radius of patch defects; for cracks and scratches
            the half width of the groove.
        depth: offset magnitude of geometric defects (a dent is pushed in by
            ``depth`` at its centre); unused by stains and mesh holes.
        band: half thickness of the footprint along ``normal``.
        albedo_scale: factor on the albedo inside the footprint (stains,
            cracks, holes of depth maps); 1 keeps the texture.
        path: ``(P, 2)`` tangent-plane polyline of cracks and scratches, metres.
        harmonics: ``(K, 2)`` amplitude and phase of the boundary ripple of
            patch footprints: the radius at angle a is
            ``radius * (1 + sum_k A_k sin((k + 2) a + phi_k))``.
    """

    kind: str
    center: np.ndarray
    normal: np.ndarray
    radius: float
    depth: float = 0.0
    band: float = 0.0
    albedo_scale: float = 1.0
    path: np.ndarray | None = None
    harmonics: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))

    def __post_init__(self) -> None:
        if self.kind not in DEFECT_KINDS:
            msg = f"Unknown defect kind {self.kind!r}; expected one of {DEFECT_KINDS}."
            raise ValueError(msg)
        self.center = np.asarray(self.center, dtype=np.float64)
        normal = np.asarray(self.normal, dtype=np.float64)
        self.normal = normal / np.linalg.norm(normal)
        if self.band <= 0.0:
            self.band = max(self.radius, 2.0 * abs(self.depth))
        if self.kind in PATH_KINDS and (self.path is None or len(self.path) < 2):
            msg = f"A {self.kind} needs a path of at least 2 tangent-plane points."
            raise ValueError(msg)

    def tangents(self) -> tuple[np.ndarray, np.ndarray]:
        """Return two unit tangents ``(3,)`` completing ``normal`` to a right-handed frame."""
        helper = np.array([1.0, 0.0, 0.0]) if abs(self.normal[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        first = np.cross(self.normal, helper)
        first /= np.linalg.norm(first)
        return first, np.cross(self.normal, first)

    def local_coordinates(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return tangent-plane coordinates ``(N, 2)`` and signed normal offsets ``(N,)`` of world points ``(N, 3)``."""
        first, second = self.tangents()
        relative = points - self.center
        return np.stack((relative @ first, relative @ second), axis=1), relative @ self.normal

    def reach(self) -> float:
        """Return the radius (metres) of a ball around ``center`` that contains the whole footprint."""
        if self.kind in PATH_KINDS:
            extent = float(np.linalg.norm(self.path, axis=1).max()) + self.radius
        else:
            ripple = float(np.abs(self.harmonics[:, 0]).sum()) if len(self.harmonics) else 0.0
            extent = self.radius * (1.0 + ripple)
        return float(np.hypot(extent, self.band))

    def normalized_distance(self, points: np.ndarray) -> np.ndarray:
        """Return the footprint coordinate ``(N,)``: below 1 inside the footprint, inf outside the normal band."""
        plane, offset = self.local_coordinates(points)
        if self.kind in PATH_KINDS:
            distance = distance_to_polyline(plane, self.path) / self.radius
        else:
            angle = np.arctan2(plane[:, 1], plane[:, 0])
            ripple = np.ones_like(angle)
            for order, (amplitude, phase) in enumerate(self.harmonics):
                ripple += amplitude * np.sin((order + 2) * angle + phase)
            distance = np.linalg.norm(plane, axis=1) / (self.radius * ripple)
        distance[np.abs(offset) > self.band] = np.inf
        return distance

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Return ``(N,)`` bool, true for world points in the defect's footprint (its ground truth).

        A hole's ground truth also covers a rim of a quarter radius around the
        removed material, the surface on which the missing material shows.
        """
        limit = HOLE_RIM if self.kind == "hole" else 1.0
        return self.normalized_distance(points) < limit

    def offset(self, points: np.ndarray) -> np.ndarray:
        """Return the signed surface offset ``(N,)`` in metres along ``normal`` (0 for stains and holes)."""
        distance = self.normalized_distance(points)
        inside = distance < 1.0
        profile = np.zeros(points.shape[0])
        clipped = np.clip(distance[inside], 0.0, 1.0)
        if self.kind in ("dent", "bump"):
            profile[inside] = 0.5 * (1.0 + np.cos(np.pi * clipped))
        elif self.kind == "chip":
            profile[inside] = 1.0 - clipped**6
        elif self.kind in PATH_KINDS:
            profile[inside] = 1.0 - clipped
        sign = 1.0 if self.kind == "bump" else -1.0
        return sign * self.depth * profile if self.kind in GEOMETRIC_KINDS else profile

    def albedo_factor(self, points: np.ndarray) -> np.ndarray:
        """Return the albedo factor ``(N,)``: ``albedo_scale`` inside the footprint, blended to 1 at its edge."""
        factor = np.ones(points.shape[0])
        if self.albedo_scale == 1.0:
            return factor
        distance = self.normalized_distance(points)
        inside = distance < 1.0
        # Stains fade over the outer quarter of the footprint; other kinds change the albedo sharply.
        weight = np.clip((1.0 - distance[inside]) / 0.25, 0.0, 1.0) if self.kind == "stain" else 1.0
        factor[inside] = 1.0 + (self.albedo_scale - 1.0) * weight
        return factor


def distance_to_polyline(points: np.ndarray, path: np.ndarray) -> np.ndarray:
    """Return the distance ``(N,)`` of 2-D points ``(N, 2)`` to the polyline ``(P, 2)``."""
    best = np.full(points.shape[0], np.inf)
    for start, end in zip(path[:-1], path[1:]):
        segment = end - start
        length2 = float(segment @ segment)
        t = np.zeros(points.shape[0]) if length2 == 0.0 else np.clip((points - start) @ segment / length2, 0.0, 1.0)
        nearest = start + t[:, None] * segment
        best = np.minimum(best, np.linalg.norm(points - nearest, axis=1))
    return best


def defects_contain(defects: Sequence[Defect], points: np.ndarray) -> np.ndarray:
    """Return ``(N,)`` bool, true for points inside any of ``defects``."""
    inside = np.zeros(points.shape[0], dtype=bool)
    for defect in defects:
        inside |= defect.contains(points)
    return inside


def _anchor_normal(points: np.ndarray, normals: np.ndarray, anchor: int, radius: float) -> np.ndarray:
    near = np.linalg.norm(points - points[anchor], axis=1) < radius
    normal = normals[near].mean(axis=0)
    norm = np.linalg.norm(normal)
    return normals[anchor] if norm < 1e-6 else normal / norm


def _edge_scores(points: np.ndarray, normals: np.ndarray, radius: float) -> np.ndarray:
    """Return ``(N,)`` spread of the normals within ``radius`` of each point: 0 on flat surface, larger on edges."""
    from scipy.spatial import cKDTree  # noqa: PLC0415

    tree = cKDTree(points)
    neighbours = tree.query_ball_point(points, radius)
    scores = np.zeros(points.shape[0])
    for index, members in enumerate(neighbours):
        scores[index] = 1.0 - np.linalg.norm(normals[members].mean(axis=0))
    return scores


def sample_defect(
    kind: str,
    points: np.ndarray,
    normals: np.ndarray,
    scale: float,
    rng: np.random.Generator,
    size: float = 0.06,
    severity: float = 1.0,
) -> Defect:
    """Draw one defect of ``kind`` anchored at a random surface point.

    Args:
        kind: one of :data:`DEFECT_KINDS`.
        points: ``(N, 3)`` candidate surface points in metres (for example the
            back-projected depth of all views), at least one.
        normals: ``(N, 3)`` unit outward normals of ``points``.
        scale: object size in metres (the bounding-sphere radius); defect
            sizes are fractions of it.
        rng: random generator; the same seed gives the same defect.
        size: footprint radius as a fraction of ``scale`` (cracks are 5x longer).
        severity: depth or contrast multiplier; 1 is clearly visible, 0.3 subtle.
    """
    if kind not in DEFECT_KINDS:
        msg = f"Unknown defect kind {kind!r}; expected one of {DEFECT_KINDS}."
        raise ValueError(msg)
    if points.shape[0] == 0:
        msg = f"Cannot place a {kind}: no candidate surface point was given."
        raise ValueError(msg)
    radius = size * scale * rng.uniform(0.8, 1.25)
    # Chips sit on edges: their anchor is drawn among the points whose neighbourhood bends most.
    # Other kinds avoid edges and thin parts, where a footprint would wrap around the part.
    subset = rng.choice(points.shape[0], size=min(points.shape[0], 4000), replace=False)
    scores = _edge_scores(points[subset], normals[subset], 0.5 * radius)
    if kind == "chip":
        candidates = subset[scores >= np.quantile(scores, 0.95)]
    else:
        candidates = subset[scores <= np.quantile(scores, 0.6)]
    anchor = int(rng.choice(candidates))
    normal = _anchor_normal(points, normals, anchor, 0.5 * radius)
    harmonics = np.stack((rng.uniform(0.0, 0.12, 3), rng.uniform(0.0, 2.0 * np.pi, 3)), axis=1)
    common = {"center": points[anchor], "normal": normal}
    if kind in ("dent", "bump"):
        return Defect(kind, radius=radius, depth=0.35 * severity * radius, harmonics=harmonics, **common)
    if kind == "chip":
        return Defect(kind, radius=0.7 * radius, depth=0.5 * severity * radius, albedo_scale=0.85, harmonics=harmonics, **common)
    if kind == "hole":
        return Defect(kind, radius=0.6 * radius, depth=0.8 * severity * radius, albedo_scale=0.3, harmonics=harmonics, **common)
    if kind == "stain":
        contrast = 0.5 * min(severity, 1.6) * (1.0 if rng.random() < 0.5 else -1.0)
        return Defect(kind, radius=radius, albedo_scale=1.0 - contrast, harmonics=harmonics, **common)
    # Cracks and scratches: a bent path through the anchor in the tangent plane.
    length = 3.0 * radius
    steps = 6
    heading = rng.uniform(0.0, 2.0 * np.pi) + np.cumsum(rng.normal(0.0, 0.3, steps - 1))
    path = np.zeros((steps, 2))
    path[1:] = np.cumsum(length / (steps - 1) * np.stack((np.cos(heading), np.sin(heading)), axis=1), axis=0)
    path -= path[steps // 2]
    if kind == "crack":
        width = 0.12 * radius
        return Defect(kind, radius=width, depth=0.25 * severity * radius, band=radius, albedo_scale=0.55, path=path, **common)
    width = 0.08 * radius
    return Defect(kind, radius=width, depth=0.05 * severity * radius, band=radius, albedo_scale=1.3, path=path, **common)
