"""Real-capture effects for synthetic instances: pose jitter, lighting change, highlights, depth noise and missing depth."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from sim3d_datamodule.io import CameraView
from sim3d_datamodule.synthesis.render import Light, RenderedView, Shading


@dataclass
class CaptureEffects:
    """Strength of the effects that make two captures of one object differ.

    Attributes:
        placement_degrees: std of the object's rotation about each axis per instance, degrees.
        placement_metres: std of the object's translation per instance, metres.
        camera_degrees: std of each camera's own rotation per view, degrees.
        depth_noise: std of the depth noise at 1 m, metres; grows with depth squared.
        missing_fraction: expected fraction of foreground pixels lost in blobs of missing depth.
        grazing_cosine: depth is missing where the surface is seen more obliquely than this cosine.
        specular: maximum Blinn-Phong highlight strength.
        light_gain: maximum relative change of the light intensities.
        light_degrees: std of the change of light directions, degrees.
        gray_noise: std of the gray-level noise.
    """

    placement_degrees: float = 0.5
    placement_metres: float = 0.002
    camera_degrees: float = 0.1
    depth_noise: float = 0.0008
    missing_fraction: float = 0.02
    grazing_cosine: float = 0.12
    specular: float = 0.25
    light_gain: float = 0.15
    light_degrees: float = 10.0
    gray_noise: float = 0.01


NO_EFFECTS = CaptureEffects(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def _rotation(rng: np.random.Generator, std_degrees: float) -> np.ndarray:
    rotation_vector = rng.normal(0.0, np.radians(std_degrees), 3)
    return cv2.Rodrigues(rotation_vector)[0]


def jitter_cameras(cameras: list[CameraView], center: np.ndarray, effects: CaptureEffects, rng: np.random.Generator) -> list[CameraView]:
    """Return cameras as they see the object after a random placement about ``center`` and small per-view rotations.

    Moving the object by a rigid motion M is the same as moving every camera by
    M's inverse, so the object keeps its frame and the ground truth stays valid.
    """
    placement = np.eye(4)
    placement[:3, :3] = _rotation(rng, effects.placement_degrees)
    placement[:3, 3] = center - placement[:3, :3] @ center + rng.normal(0.0, effects.placement_metres, 3)
    jittered = []
    for camera in cameras:
        own = np.eye(4)
        own[:3, :3] = _rotation(rng, effects.camera_degrees)
        world_to_camera = torch.from_numpy(own) @ camera.world_to_camera.to(torch.float64) @ torch.from_numpy(placement)
        jittered.append(CameraView(camera.name, camera.K.clone(), world_to_camera, camera.width, camera.height))
    return jittered


def jitter_shading(shading: Shading, effects: CaptureEffects, rng: np.random.Generator) -> Shading:
    """Return ``shading`` with rescaled, slightly turned lights and a random highlight strength."""
    lights = []
    for light in shading.lights:
        gain = 1.0 + rng.uniform(-effects.light_gain, effects.light_gain)
        direction = None if light.direction is None else _rotation(rng, effects.light_degrees) @ light.direction
        lights.append(Light(light.intensity * gain, direction))
    return Shading(
        lights=tuple(lights),
        ambient=shading.ambient,
        albedo=shading.albedo,
        albedo_factors=shading.albedo_factors,
        specular=rng.uniform(0.0, effects.specular) if effects.specular > 0 else shading.specular,
        shininess=shading.shininess,
        shadows=shading.shadows,
        background=shading.background,
    )


def degrade_view(render: RenderedView, camera: CameraView, effects: CaptureEffects, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return the gray ``(H, W)`` and depth ``(H, W)`` of a render as a sensor would capture them.

    Depth gets noise growing with depth squared, loses blobs of pixels and
    grazing-angle pixels (those become ``inf``); gray gets noise.
    """
    depth = render.depth.astype(np.float64).copy()
    hit = render.hit
    depth[hit] += rng.normal(0.0, 1.0, int(hit.sum())) * effects.depth_noise * depth[hit] ** 2

    missing = np.zeros(hit.shape, dtype=bool)
    if effects.grazing_cosine > 0.0:
        view_z = camera.world_to_camera[2, :3].numpy()
        missing |= hit & (np.abs(render.normals @ view_z) < effects.grazing_cosine)
    if effects.missing_fraction > 0.0:
        # Blobs: smooth noise thresholded at the quantile that removes the requested fraction.
        height, width = depth.shape
        coarse = rng.normal(size=(max(2, height // 12), max(2, width // 12)))
        field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        missing |= hit & (field > np.quantile(field, 1.0 - effects.missing_fraction))
    depth[missing | ~hit] = np.inf

    gray = render.gray.astype(np.float64) + rng.normal(0.0, effects.gray_noise, render.gray.shape) * hit
    return np.clip(gray, 0.0, 1.0).astype(np.float32), depth.astype(np.float32)
