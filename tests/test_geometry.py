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


def test_look_at_points_camera_at_target():
    eye = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    target = torch.tensor([0.0, 0.0, 0.2], dtype=torch.float64)
    world_to_camera = geometry.look_at(eye, target, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    rotation = world_to_camera[:3, :3]
    assert torch.allclose(rotation @ rotation.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.det(rotation) > 0
    assert torch.allclose(geometry.camera_centers(world_to_camera), eye, atol=1e-12)
    in_camera = geometry.world_to_camera_points(target[None], world_to_camera)[0]
    assert torch.allclose(in_camera[:2], torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert in_camera[2] > 0
    # World up appears upward in the image, i.e. along negative camera y.
    above = geometry.world_to_camera_points((target + torch.tensor([0.0, 0.0, 0.1], dtype=torch.float64))[None], world_to_camera)[0]
    assert above[1] < 0


def test_look_at_rejects_parallel_up():
    eye = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    try:
        geometry.look_at(eye, torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    except ValueError as error:
        assert "parallel" in str(error)
    else:
        raise AssertionError("look_at accepted an up vector parallel to the viewing direction")


def test_camera_rays_parameter_is_depth():
    intrinsics, world_to_camera = _camera(3)
    origins, directions = geometry.camera_rays(intrinsics, world_to_camera, 24, 32)
    depth = 0.5 + torch.rand(24, 32, dtype=torch.float64)
    expected = geometry.depth_to_world_points(depth, intrinsics, world_to_camera)
    assert torch.allclose(origins + depth[..., None] * directions, expected, atol=1e-12)


def test_scale_intrinsics_keeps_pixel_centres():
    intrinsics, world_to_camera = _camera(4)
    point = torch.tensor([[0.05, -0.02, 0.3]], dtype=torch.float64)
    camera = geometry.world_to_camera_points(point, world_to_camera)
    full = geometry.project_points(camera, intrinsics)[0]
    half = geometry.project_points(camera, geometry.scale_intrinsics(intrinsics, 0.5, 0.5))[0]
    # Pixel u of the full image covers [u - 0.5, u + 0.5]; halving maps its centre to (u + 0.5) / 2 - 0.5.
    assert torch.allclose(half, (full + 0.5) / 2 - 0.5, atol=1e-9)


def test_voxelize_depth_labels_and_coverage():
    intrinsics, world_to_camera = _camera(5)
    depth = torch.full((2, 12, 16), 1.2, dtype=torch.float64)
    valid = torch.ones(2, 12, 16, dtype=torch.bool)
    valid[1, :, 8:] = False
    labels = torch.zeros(2, 12, 16, dtype=torch.bool)
    labels[0, 0, 0] = True
    origin = torch.tensor([-1.0, -1.0, -1.0], dtype=torch.float64)
    grid = geometry.voxelize_depth(depth, valid, intrinsics.expand(2, 3, 3), world_to_camera.expand(2, 4, 4), origin, 0.01, point_labels=labels)
    points = geometry.depth_to_world_points(depth[0], intrinsics, world_to_camera).reshape(-1, 3)
    keys = set(geometry.voxel_keys(geometry.points_to_voxels(points, grid.origin, 0.01)).tolist())
    assert set(geometry.voxel_keys(grid.coords).tolist()) == keys
    assert int(grid.anomalous.sum()) == 1
    marked = grid.coords[grid.anomalous][0]
    assert torch.equal(marked, geometry.points_to_voxels(points[0], grid.origin, 0.01))


def test_point_map_normals_of_plane_face_camera():
    intrinsics, world_to_camera = _camera(6)
    depth = torch.full((10, 12), 2.0, dtype=torch.float64)
    points = geometry.depth_to_world_points(depth, intrinsics, world_to_camera)
    center = geometry.camera_centers(world_to_camera)
    normals = geometry.point_map_normals(points, center)
    optical_axis = world_to_camera[2, :3]
    inner = normals[1:-1, 1:-1].reshape(-1, 3)
    assert torch.allclose(inner, -optical_axis.expand_as(inner), atol=1e-9)
    assert torch.isnan(normals[0]).all()
