"""Camera and voxel math for multi-view captures: the only copy in the project.

Conventions (OpenCV pinhole): x right, y down, z forward; pixel centres sit at
integer coordinates; depth is the camera-frame z in metres. Camera poses are
``world_to_camera`` 4x4 matrices. World points fall in voxel
``floor((p - origin) / voxel_size)``.

Every function works on torch tensors, on CPU or GPU, and keeps the dtype of
its inputs: pass float64 cameras where sub-millimetre exactness matters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Voxel keys pack three signed indices into one int64, 21 bits each.
_KEY_BITS = 21
_KEY_OFFSET = 1 << (_KEY_BITS - 1)
_KEY_MASK = (1 << _KEY_BITS) - 1


@dataclass
class VoxelGrid:
    """Sparse voxel grid over an instance's surface, in the world frame.

    Attributes:
        origin: ``(3,)`` float64, world position of the corner of voxel (0, 0, 0), metres.
        voxel_size: edge length of one voxel, metres.
        coords: ``(M, 3)`` int64 integer indices of the surface voxels.
        anomalous: ``(M,)`` bool, true where the voxel belongs to a defect, or
            ``None`` when the instance has no ground truth.
    """

    origin: torch.Tensor
    voxel_size: float
    coords: torch.Tensor
    anomalous: torch.Tensor | None = None

    @property
    def num_voxels(self) -> int:
        """Number of listed voxels ``M``."""
        return int(self.coords.shape[0])

    def to(self, device: torch.device | str) -> VoxelGrid:
        """Return a copy whose tensors live on ``device``."""
        anomalous = None if self.anomalous is None else self.anomalous.to(device)
        return VoxelGrid(self.origin.to(device), self.voxel_size, self.coords.to(device), anomalous)


def square_padding(height: int, width: int) -> tuple[int, int, int, int]:
    """Return ``(top, bottom, left, right)`` padding that makes an image square.

    The shorter side is padded on both ends; an odd remainder goes to the
    bottom or right end.
    """
    side = max(height, width)
    top = (side - height) // 2
    left = (side - width) // 2
    return top, side - height - top, left, side - width - left


def pad_resize_intrinsics(intrinsics: torch.Tensor, height: int, width: int, size: int) -> torch.Tensor:
    """Update intrinsics ``(..., 3, 3)`` for square padding then a resize to ``size`` x ``size``.

    The resize follows the pixel-centre convention of ``align_corners=False``
    (bilinear) and ``nearest-exact``: a source pixel u maps to
    ``(u + 0.5) * scale - 0.5``.
    """
    top, _, left, _ = square_padding(height, width)
    scale = size / max(height, width)
    updated = intrinsics.clone()
    updated[..., 0, 0] = intrinsics[..., 0, 0] * scale
    updated[..., 1, 1] = intrinsics[..., 1, 1] * scale
    updated[..., 0, 1] = intrinsics[..., 0, 1] * scale
    updated[..., 0, 2] = (intrinsics[..., 0, 2] + left + 0.5) * scale - 0.5
    updated[..., 1, 2] = (intrinsics[..., 1, 2] + top + 0.5) * scale - 0.5
    return updated


def pixel_grid(height: int, width: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return ``(H, W, 2)`` pixel-centre coordinates ``(u, v)``."""
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack((u, v), dim=-1)


def depth_to_camera_points(depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Back-project depth ``(..., H, W)`` in metres to camera-frame points ``(..., H, W, 3)``.

    ``intrinsics`` is ``(..., 3, 3)`` with the same leading shape as ``depth``.
    Pixels with zero depth land on the camera centre; mask them with the
    valid-depth mask.
    """
    height, width = depth.shape[-2:]
    uv = pixel_grid(height, width, device=depth.device, dtype=depth.dtype)
    intrinsics = intrinsics.to(depth.dtype)
    fx = intrinsics[..., 0, 0, None, None]
    fy = intrinsics[..., 1, 1, None, None]
    skew = intrinsics[..., 0, 1, None, None]
    cx = intrinsics[..., 0, 2, None, None]
    cy = intrinsics[..., 1, 2, None, None]

    y = (uv[..., 1] - cy) / fy
    x = (uv[..., 0] - cx - skew * y) / fx
    return torch.stack((x * depth, y * depth, depth), dim=-1)


def camera_to_world(points: torch.Tensor, world_to_camera: torch.Tensor) -> torch.Tensor:
    """Move camera-frame points ``(..., N, 3)`` to the world frame with ``world_to_camera`` ``(..., 4, 4)``."""
    world_to_camera = world_to_camera.to(points.dtype)
    rotation = world_to_camera[..., :3, :3]
    translation = world_to_camera[..., :3, 3]
    # p_cam = R p_world + t, so p_world = R^T (p_cam - t).
    shifted = points - translation.unsqueeze(-2)
    return shifted @ rotation


def world_to_camera_points(points: torch.Tensor, world_to_camera: torch.Tensor) -> torch.Tensor:
    """Move world points ``(..., N, 3)`` into the camera frame of ``world_to_camera`` ``(..., 4, 4)``."""
    world_to_camera = world_to_camera.to(points.dtype)
    rotation = world_to_camera[..., :3, :3]
    translation = world_to_camera[..., :3, 3]
    return points @ rotation.transpose(-1, -2) + translation.unsqueeze(-2)


def project_points(points_camera: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Project camera-frame points ``(..., N, 3)`` to pixel coordinates ``(..., N, 2)``."""
    intrinsics = intrinsics.to(points_camera.dtype)
    homogeneous = points_camera @ intrinsics.transpose(-1, -2)
    return homogeneous[..., :2] / homogeneous[..., 2:3]


def depth_to_world_points(depth: torch.Tensor, intrinsics: torch.Tensor, world_to_camera: torch.Tensor) -> torch.Tensor:
    """Back-project depth ``(H, W)`` to world points ``(H, W, 3)``."""
    height, width = depth.shape[-2:]
    camera = depth_to_camera_points(depth, intrinsics).reshape(*depth.shape[:-2], height * width, 3)
    return camera_to_world(camera, world_to_camera).reshape(*depth.shape[:-2], height, width, 3)


def points_to_voxels(points: torch.Tensor, origin: torch.Tensor, voxel_size: float) -> torch.Tensor:
    """Return the int64 voxel indices ``(..., 3)`` of world points ``(..., 3)``."""
    origin = origin.to(device=points.device, dtype=points.dtype)
    return torch.floor((points - origin) / voxel_size).to(torch.int64)


def voxel_keys(coords: torch.Tensor) -> torch.Tensor:
    """Pack voxel indices ``(..., 3)`` into one int64 key each, ``(...,)``.

    Indices must lie in ``[-2**20, 2**20)`` on every axis; at 1 mm voxels that
    is a cube of about 2 km. Out-of-range indices raise ``ValueError``.
    """
    coords = coords.to(torch.int64)
    if coords.numel() and (coords.min() < -_KEY_OFFSET or coords.max() >= _KEY_OFFSET):
        msg = f"Voxel indices must lie in [{-_KEY_OFFSET}, {_KEY_OFFSET}); got [{int(coords.min())}, {int(coords.max())}]."
        raise ValueError(msg)
    shifted = coords + _KEY_OFFSET
    return (shifted[..., 0] << (2 * _KEY_BITS)) | (shifted[..., 1] << _KEY_BITS) | shifted[..., 2]


def keys_to_voxels(keys: torch.Tensor) -> torch.Tensor:
    """Unpack int64 keys from :func:`voxel_keys` back to voxel indices ``(..., 3)``."""
    x = (keys >> (2 * _KEY_BITS)) & _KEY_MASK
    y = (keys >> _KEY_BITS) & _KEY_MASK
    z = keys & _KEY_MASK
    return torch.stack((x, y, z), dim=-1) - _KEY_OFFSET


def voxelize_depth(
    depth: torch.Tensor,
    valid: torch.Tensor,
    intrinsics: torch.Tensor,
    world_to_camera: torch.Tensor,
    origin: torch.Tensor,
    voxel_size: float,
    point_labels: torch.Tensor | None = None,
) -> VoxelGrid:
    """Build the voxel grid hit by the back-projected depth of every view.

    ``depth`` and ``valid`` are ``(V, H, W)`` (metres, bool), ``intrinsics``
    ``(V, 3, 3)`` and ``world_to_camera`` ``(V, 4, 4)``. Views may differ in
    size when passed as lists of per-view tensors. The grid lists each voxel
    that at least one valid pixel falls in, sorted by voxel key. A voxel is
    anomalous when a valid pixel marked in the optional ``(V, H, W)`` bool
    ``point_labels`` falls in it. Without labels ``anomalous`` is all false.
    """
    keys = []
    labelled_keys = []
    labels = [None] * len(depth) if point_labels is None else point_labels
    for view_depth, view_valid, view_intrinsics, view_pose, view_labels in zip(depth, valid, intrinsics, world_to_camera, labels, strict=True):
        points = depth_to_world_points(view_depth.to(torch.float64), view_intrinsics, view_pose)[view_valid.bool()]
        view_keys = voxel_keys(points_to_voxels(points, origin, voxel_size))
        keys.append(view_keys)
        if view_labels is not None:
            labelled_keys.append(view_keys[view_labels.bool()[view_valid.bool()]])
    unique = torch.unique(torch.cat(keys)) if keys else torch.zeros(0, dtype=torch.int64)
    coords = keys_to_voxels(unique)
    anomalous = torch.zeros(coords.shape[0], dtype=torch.bool, device=coords.device)
    if labelled_keys:
        anomalous = torch.isin(unique, torch.cat(labelled_keys))
    return VoxelGrid(
        origin=origin.to(torch.float64).clone(),
        voxel_size=float(voxel_size),
        coords=coords,
        anomalous=anomalous,
    )


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Return the ``world_to_camera`` 4x4 of a camera at ``eye`` whose z axis points at ``target``.

    ``up`` (3,) is the world direction that appears upward in the image (image
    y points down, so the camera's y axis is the component of ``-up``
    perpendicular to the viewing direction). ``up`` must not be parallel to
    ``target - eye``; a ``ValueError`` names both when it is.
    """
    eye = eye.to(torch.float64)
    forward = target.to(torch.float64) - eye
    forward = forward / torch.linalg.vector_norm(forward)
    right = torch.linalg.cross(-up.to(torch.float64), forward)
    norm = torch.linalg.vector_norm(right)
    if norm < 1e-9:
        msg = f"The up vector {up.tolist()} is parallel to the viewing direction {forward.tolist()}; pass another up vector."
        raise ValueError(msg)
    right = right / norm
    down = torch.linalg.cross(forward, right)
    rotation = torch.stack((right, down, forward))
    world_to_camera = torch.eye(4, dtype=torch.float64)
    world_to_camera[:3, :3] = rotation
    world_to_camera[:3, 3] = -rotation @ eye
    return world_to_camera


def camera_centers(world_to_camera: torch.Tensor) -> torch.Tensor:
    """Return the world positions ``(..., 3)`` of cameras ``(..., 4, 4)``."""
    rotation = world_to_camera[..., :3, :3]
    translation = world_to_camera[..., :3, 3]
    return -(rotation.transpose(-1, -2) @ translation.unsqueeze(-1)).squeeze(-1)


def camera_rays(intrinsics: torch.Tensor, world_to_camera: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return world ray origins and directions ``(H, W, 3)`` through every pixel centre.

    Directions are scaled so that their camera-frame z component is 1: the
    point ``origin + t * direction`` has depth ``t`` in metres.
    """
    ones = torch.ones(height, width, dtype=world_to_camera.dtype, device=world_to_camera.device)
    targets = depth_to_world_points(ones, intrinsics, world_to_camera)
    origins = camera_centers(world_to_camera).expand(height, width, 3)
    return origins, targets - origins


def scale_intrinsics(intrinsics: torch.Tensor, scale_x: float, scale_y: float) -> torch.Tensor:
    """Update intrinsics ``(..., 3, 3)`` for an image resized by ``scale_x`` x ``scale_y``.

    Uses the same pixel-centre convention as :func:`pad_resize_intrinsics`.
    """
    updated = intrinsics.clone()
    updated[..., 0, 0] = intrinsics[..., 0, 0] * scale_x
    updated[..., 0, 1] = intrinsics[..., 0, 1] * scale_x
    updated[..., 1, 1] = intrinsics[..., 1, 1] * scale_y
    updated[..., 0, 2] = (intrinsics[..., 0, 2] + 0.5) * scale_x - 0.5
    updated[..., 1, 2] = (intrinsics[..., 1, 2] + 0.5) * scale_y - 0.5
    return updated


def point_map_normals(points: torch.Tensor, camera_center: torch.Tensor) -> torch.Tensor:
    """Estimate unit normals ``(H, W, 3)`` of a world point map ``(H, W, 3)`` from its image-space neighbours.

    Normals are oriented towards ``camera_center`` (3,). Pixels whose
    neighbours are invalid (NaN) get NaN normals.
    """
    right = torch.roll(points, -1, dims=1) - torch.roll(points, 1, dims=1)
    down = torch.roll(points, -1, dims=0) - torch.roll(points, 1, dims=0)
    normals = torch.linalg.cross(right, down)
    normals = normals / torch.linalg.vector_norm(normals, dim=-1, keepdim=True)
    towards = camera_center.to(points.dtype) - points
    flip = (normals * towards).sum(dim=-1, keepdim=True) < 0
    normals = torch.where(flip, -normals, normals)
    normals[0, :] = float("nan")
    normals[-1, :] = float("nan")
    normals[:, 0] = float("nan")
    normals[:, -1] = float("nan")
    return normals
