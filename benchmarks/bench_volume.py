"""Time anomaly volume fusion on synthetic multi-view captures of a sphere.

The listed voxels are every voxel that the sphere's surface passes through
(about 5 M with the defaults); 36 cameras on three rings look at the sphere
and their depth maps are ray-traced exactly. Fusion runs on random anomaly
maps and the script prints points per second (valid pixels back-projected and
fused per second) and pixels per second.

    python -m benchmarks.bench_volume                      # 36 views of 896 x 896, CPU
    python -m benchmarks.bench_volume --device cuda --repeats 5
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch

from anomalib_modmap.volume import fuse_anomaly_volume
from sim3d_datamodule.geometry import VoxelGrid


def sphere_surface_voxels(radius: float) -> torch.Tensor:
    """Return ``(M, 3)`` indices of the unit voxels whose inside a sphere of ``radius`` voxels at the origin crosses.

    For each column (x, y) the sphere's upper surface spans heights between
    ``sqrt(r^2 - d_max^2)`` and ``sqrt(r^2 - d_min^2)``, where ``d_min`` and
    ``d_max`` are the nearest and farthest horizontal distances of the column;
    every voxel in that span contains surface. The lower half is the mirror image.
    Voxels that the sphere only touches at a face or corner may be left out.
    """
    extent = math.ceil(radius)
    steps = torch.arange(-extent, extent, dtype=torch.float64)
    x, y = torch.meshgrid(steps, steps, indexing="ij")

    def nearest(low: torch.Tensor) -> torch.Tensor:
        return torch.where(low > 0, low, torch.where(low + 1 < 0, low + 1, torch.zeros_like(low)))

    def farthest(low: torch.Tensor) -> torch.Tensor:
        return torch.maximum(low.abs(), (low + 1).abs())

    near_sq = nearest(x) ** 2 + nearest(y) ** 2
    far_sq = farthest(x) ** 2 + farthest(y) ** 2
    crossing = near_sq <= radius**2
    top = torch.sqrt((radius**2 - near_sq[crossing]).clamp_min(0))
    bottom = torch.sqrt((radius**2 - far_sq[crossing]).clamp_min(0))
    first = torch.floor(bottom).to(torch.int64)
    count = torch.floor(top).to(torch.int64) - first + 1

    columns = torch.stack((x[crossing], y[crossing]), dim=-1).to(torch.int64)
    columns = torch.repeat_interleave(columns, count, dim=0)
    offsets = torch.arange(int(count.sum())) - torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
    heights = torch.repeat_interleave(first, count) + offsets
    upper = torch.cat((columns, heights[:, None]), dim=1)
    lower = torch.cat((columns, -heights[:, None] - 1), dim=1)
    # Heights are distinct within a column and the halves do not overlap, so no voxel repeats.
    return torch.cat((upper, lower))


def ring_cameras(num_views: int, distance: float, focal: float, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return intrinsics ``(V, 3, 3)`` and world_to_camera ``(V, 4, 4)`` of cameras on three rings aiming at the origin."""
    rings = (-30.0, 0.0, 30.0)
    intrinsics = torch.tensor([[focal, 0.0, (size - 1) / 2], [0.0, focal, (size - 1) / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    poses = []
    for view in range(num_views):
        elevation = math.radians(rings[view % len(rings)])
        azimuth = 2 * math.pi * view / num_views
        centre = distance * torch.tensor(
            [math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation)],
            dtype=torch.float64,
        )
        forward = -centre / centre.norm()
        right = torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
        right = right / right.norm()
        down = torch.linalg.cross(forward, right)
        pose = torch.eye(4, dtype=torch.float64)
        pose[:3, :3] = torch.stack((right, down, forward))
        pose[:3, 3] = -pose[:3, :3] @ centre
        poses.append(pose)
    return intrinsics.expand(num_views, 3, 3).clone(), torch.stack(poses)


def sphere_depth(intrinsics: torch.Tensor, world_to_camera: torch.Tensor, radius: float, size: int) -> torch.Tensor:
    """Ray-trace the sphere: depth ``(H, W)`` in metres, 0 where the ray misses."""
    v, u = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij")
    rays = torch.stack(((u - intrinsics[0, 2]) / intrinsics[0, 0], (v - intrinsics[1, 2]) / intrinsics[1, 1], torch.ones_like(u)), -1)
    rotation, translation = world_to_camera[:3, :3], world_to_camera[:3, 3]
    centre = -rotation.T @ translation
    directions = rays @ rotation  # world-frame direction of each ray, z-scaled to depth 1
    # |centre + t * direction|^2 = radius^2, smallest root.
    a = (directions**2).sum(-1)
    b = 2 * (directions @ centre)
    c = centre @ centre - radius**2
    discriminant = b**2 - 4 * a * c
    t = (-b - torch.sqrt(discriminant.clamp_min(0))) / (2 * a)
    return torch.where(discriminant > 0, t, torch.zeros_like(t))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=36, help="number of views (default 36)")
    parser.add_argument("--size", type=int, default=896, help="image side in pixels (default 896)")
    parser.add_argument("--radius-voxels", type=float, default=520.0, help="sphere radius in voxels; 520 gives about 5 M surface voxels")
    parser.add_argument("--voxel-size", type=float, default=0.0005, help="voxel edge in metres (default 0.0005)")
    parser.add_argument("--device", default="cpu", help="torch device for fusion, e.g. cpu or cuda")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up on two views (default 2)")
    args = parser.parse_args()

    radius = args.radius_voxels * args.voxel_size
    started = time.perf_counter()
    coords = sphere_surface_voxels(args.radius_voxels)
    grid = VoxelGrid(torch.zeros(3, dtype=torch.float64), args.voxel_size, coords)
    distance = 3.0 * radius
    focal = 0.8 * (args.size / 2) / math.tan(math.asin(1.0 / 3.0))
    intrinsics, world_to_camera = ring_cameras(args.views, distance, focal, args.size)
    depth = torch.stack([sphere_depth(intrinsics[view], world_to_camera[view], radius, args.size) for view in range(args.views)])
    valid = depth > 0
    anomaly_maps = torch.rand(args.views, args.size, args.size, generator=torch.Generator().manual_seed(0))
    print(f"setup: {grid.num_voxels:,} surface voxels, {int(valid.sum()):,} valid pixels in {time.perf_counter() - started:.1f} s")

    device = torch.device(args.device)
    inputs = [tensor.to(device) for tensor in (anomaly_maps, depth, valid, intrinsics, world_to_camera)]
    grid = grid.to(device)
    fuse_anomaly_volume(*[tensor[:2] for tensor in inputs], grid)  # warm-up

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timings = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tick = time.perf_counter()
        scores = fuse_anomaly_volume(*inputs, grid)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.append(time.perf_counter() - tick)

    best = min(timings)
    points = int(valid.sum())
    pixels = args.views * args.size * args.size
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    print(f"fusion of {args.views} views of {args.size}x{args.size} onto {grid.num_voxels:,} voxels: best {best:.2f} s of {args.repeats}")
    print(f"{points / best / 1e6:.2f} M points/s (valid pixels), {pixels / best / 1e6:.2f} M pixels/s")
    print(f"voxel scores: {scores.numel():,}")
    if device.type == "cuda":
        print(f"peak GPU memory during fusion: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
