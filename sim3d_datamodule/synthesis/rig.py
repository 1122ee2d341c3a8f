"""Camera rigs around an object: a ring or a sphere of views looking at its centre."""

from __future__ import annotations

import math

import numpy as np
import torch

from sim3d_datamodule import geometry
from sim3d_datamodule.io import CameraView

RIGS: tuple[str, ...] = ("ring", "sphere")


def view_name(index: int) -> str:
    """Return the name of view ``index`` (0-based): ``C01``, ``C02``, ..."""
    return f"C{index + 1:02d}"


def pinhole_intrinsics(width: int, height: int, fov_degrees: float) -> np.ndarray:
    """Return K ``(3, 3)`` with square pixels, horizontal field of view ``fov_degrees`` and a central principal point."""
    if not 1.0 < fov_degrees < 179.0:
        msg = f"Field of view must lie in (1, 179) degrees; got {fov_degrees}."
        raise ValueError(msg)
    focal = 0.5 * width / math.tan(math.radians(fov_degrees) / 2.0)
    return np.array([[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def fitting_distance(radius: float, width: int, height: int, fov_degrees: float, margin: float = 1.15) -> float:
    """Return the camera distance at which a sphere of ``radius`` fills the shorter image side, times ``margin``."""
    focal = 0.5 * width / math.tan(math.radians(fov_degrees) / 2.0)
    half_angle = math.atan(0.5 * min(width, height) / focal)
    return margin * radius / math.sin(half_angle)


def _up_vector(up_axis: str) -> np.ndarray:
    axes = {"x": [1.0, 0.0, 0.0], "y": [0.0, 1.0, 0.0], "z": [0.0, 0.0, 1.0]}
    if up_axis not in axes:
        msg = f"Unknown up axis {up_axis!r}; expected one of {sorted(axes)}."
        raise ValueError(msg)
    return np.asarray(axes[up_axis])


def _directions(rig: str, views: int, elevation_degrees: float) -> np.ndarray:
    """Return ``(views, 3)`` unit directions from the target to the cameras, in a z-up frame."""
    if rig == "ring":
        azimuth = 2.0 * np.pi * np.arange(views) / views
        elevation = np.full(views, math.radians(elevation_degrees))
    elif rig == "sphere":
        # Fibonacci lattice over the sphere, keeping clear of the poles where the up vector degenerates.
        index = np.arange(views) + 0.5
        heights = np.clip(1.0 - 2.0 * index / views, -0.97, 0.97)
        elevation = np.arcsin(heights)
        azimuth = np.pi * (1.0 + math.sqrt(5.0)) * index
    else:
        msg = f"Unknown rig {rig!r}; expected one of {RIGS}."
        raise ValueError(msg)
    return np.stack((np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)), axis=1)


def make_rig(
    rig: str,
    views: int,
    center: np.ndarray,
    radius: float,
    width: int,
    height: int,
    fov_degrees: float = 40.0,
    elevation_degrees: float = 30.0,
    up_axis: str = "z",
    margin: float = 1.15,
) -> list[CameraView]:
    """Place ``views`` cameras on a ring or sphere around a bounding sphere (``center``, ``radius`` in metres).

    The ring has all cameras at ``elevation_degrees`` above the plane
    perpendicular to ``up_axis``; the sphere spreads them evenly over all
    directions. Every camera looks at ``center`` from the distance at which
    the bounding sphere, times ``margin``, fills the shorter image side.
    """
    if views < 1:
        msg = f"Number of views must be at least 1; got {views}."
        raise ValueError(msg)
    up = _up_vector(up_axis)
    # Rotate the z-up directions so that z becomes the requested up axis (proper rotations).
    to_up_axis = {
        "z": np.eye(3),
        "y": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
        "x": np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
    }[up_axis]
    directions = _directions(rig, views, elevation_degrees) @ to_up_axis.T
    distance = fitting_distance(radius, width, height, fov_degrees, margin)
    intrinsics = pinhole_intrinsics(width, height, fov_degrees)
    cameras = []
    for index, direction in enumerate(directions):
        eye = center + distance * direction
        view_up = up if abs(float(direction @ up)) < 0.99 else np.roll(up, 1)
        world_to_camera = geometry.look_at(torch.from_numpy(eye), torch.from_numpy(center.astype(np.float64)), torch.from_numpy(view_up))
        cameras.append(CameraView(view_name(index), torch.from_numpy(intrinsics.copy()), world_to_camera, width, height))
    return cameras
