"""Camera and voxel math: round trips and the pad/resize intrinsics update."""

import math

import torch

from sim3d_datamodule import geometry


def _camera(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    intrinsics = torch.tensor([[300.0, 0.0, 161.5], [0.0, 310.0, 118.25], [0.0, 0.0, 1.0]], dtype=torch.float64)
    angle = float(torch.rand(1, generator=generator)) * math.pi
    rotation = torch.tensor(
        [[math.cos(angle), 0.0, math.sin(angle)], [0.0, 1.0, 0.0], [-math.sin(angle), 0.0, math.cos(angle)]],
        dtype=torch.float64,
    )
    world_to_camera = torch.eye(4, dtype=torch.float64)
    world_to_camera[:3, :3] = rotation
    world_to_camera[:3, 3] = torch.tensor([0.1, -0.2, 1.5], dtype=torch.float64)
    return intrinsics, world_to_camera


def test_backproject_then_project_returns_pixels():
    intrinsics, world_to_camera = _camera()
    depth = 1.0 + torch.rand(24, 32, dtype=torch.float64)

    world = geometry.depth_to_world_points(depth, intrinsics, world_to_camera).reshape(-1, 3)
    camera = geometry.world_to_camera_points(world, world_to_camera)
    pixels = geometry.project_points(camera, intrinsics)

    expected = geometry.pixel_grid(24, 32, dtype=torch.float64).reshape(-1, 2)
    assert torch.allclose(pixels, expected, atol=1e-9)
    assert torch.allclose(camera[:, 2], depth.reshape(-1), atol=1e-12)


def test_square_padding_centres_shorter_side():
    assert geometry.square_padding(240, 320) == (40, 40, 0, 0)
    assert geometry.square_padding(5, 2) == (0, 0, 1, 2)
    assert geometry.square_padding(7, 7) == (0, 0, 0, 0)


def test_pad_resize_intrinsics_maps_pixel_centres():
    intrinsics, _ = _camera()
    height, width, size = 240, 320, 448
    updated = geometry.pad_resize_intrinsics(intrinsics, height, width, size)

    # A camera-frame point projects to u in the source and to (u + left + 0.5) * s - 0.5 after.
    point = torch.tensor([[0.13, -0.07, 1.3]], dtype=torch.float64)
    source = geometry.project_points(point, intrinsics)[0]
    target = geometry.project_points(point, updated)[0]
    scale = size / width
    assert torch.allclose(target[0], (source[0] + 0.0 + 0.5) * scale - 0.5)
    assert torch.allclose(target[1], (source[1] + 40.0 + 0.5) * scale - 0.5)


def test_voxel_keys_round_trip_and_order():
    coords = torch.tensor([[0, 0, 0], [-5, 7, 1023], [1048575, -1048576, 3]])
    keys = geometry.voxel_keys(coords)
    assert torch.equal(geometry.keys_to_voxels(keys), coords)
    assert len(set(keys.tolist())) == 3


def test_voxel_keys_reject_out_of_range():
    try:
        geometry.voxel_keys(torch.tensor([[1 << 20, 0, 0]]))
    except ValueError as error:
        assert "Voxel indices must lie in" in str(error)
    else:
        raise AssertionError("an index of 2**20 was accepted")


def test_points_to_voxels_floors_negative_offsets():
    origin = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    points = torch.tensor([[1.0, 0.99, 1.0299]], dtype=torch.float64)
    assert geometry.points_to_voxels(points, origin, 0.02).tolist() == [[0, -1, 1]]
