"""Square padding and resizing of views: back-projection stays exact."""

import pytest
import torch

from sim3d_datamodule import geometry
from sim3d_datamodule.testing import ring_cameras
from sim3d_datamodule.transforms import pad_resize_depth, pad_resize_image, pad_resize_mask

HEIGHT, WIDTH = 48, 64


@pytest.mark.parametrize("size", [37, 64, 150, 896])
def test_resized_pixels_backproject_to_their_source(size):
    camera = ring_cameras(1, (HEIGHT, WIDTH))[0]
    # Unique depth values identify the source pixel of every resized pixel.
    depth = 1.0 + torch.arange(HEIGHT * WIDTH, dtype=torch.float64).reshape(HEIGHT, WIDTH) * 1e-4
    valid = torch.ones(HEIGHT, WIDTH, dtype=torch.bool)
    valid[0, :5] = False
    resized_depth, resized_valid = pad_resize_depth(depth, valid, size)
    intrinsics = geometry.pad_resize_intrinsics(camera.K, HEIGHT, WIDTH, size)

    world = geometry.depth_to_world_points(resized_depth, intrinsics, camera.world_to_camera)[resized_valid]
    pixels = geometry.project_points(geometry.world_to_camera_points(world, camera.world_to_camera), camera.K)

    source = torch.searchsorted(depth.reshape(-1), resized_depth[resized_valid])
    source_uv = torch.stack((source % WIDTH, source // WIDTH), dim=-1).to(torch.float64)
    assert torch.equal(depth.reshape(-1)[source], resized_depth[resized_valid])
    assert (pixels - source_uv).abs().max() <= 0.5 + 1e-9


def test_world_point_projects_consistently():
    camera = ring_cameras(2, (HEIGHT, WIDTH))[1]
    size = 301
    points = torch.tensor([[0.05, -0.1, 0.2], [-0.2, 0.1, 0.0], [0.0, 0.0, 0.29]], dtype=torch.float64)
    camera_points = geometry.world_to_camera_points(points, camera.world_to_camera)
    original = geometry.project_points(camera_points, camera.K)
    resized = geometry.project_points(camera_points, geometry.pad_resize_intrinsics(camera.K, HEIGHT, WIDTH, size))

    top, _, left, _ = geometry.square_padding(HEIGHT, WIDTH)
    scale = size / max(HEIGHT, WIDTH)
    expected = (original + torch.tensor([left, top], dtype=torch.float64) + 0.5) * scale - 0.5
    assert torch.allclose(resized, expected, atol=1e-9)


def test_padding_is_invalid_depth_and_edge_image():
    depth = torch.full((HEIGHT, WIDTH), 2.0)
    valid = torch.ones(HEIGHT, WIDTH, dtype=torch.bool)
    resized_depth, resized_valid = pad_resize_depth(depth, valid, WIDTH)
    top, bottom, _, _ = geometry.square_padding(HEIGHT, WIDTH)
    assert not resized_valid[:top].any()
    assert not resized_valid[WIDTH - bottom :].any()
    assert torch.all(resized_depth[:top] == 0)
    assert resized_valid[top : WIDTH - bottom].all()

    image = torch.arange(WIDTH, dtype=torch.float32).expand(HEIGHT, WIDTH)
    padded = pad_resize_image(image, WIDTH)
    assert torch.equal(padded[0], image[0])
    assert torch.equal(padded[-1], image[-1])


def test_mask_resize_keeps_dtype_and_values():
    mask = torch.zeros(3, HEIGHT, WIDTH, dtype=torch.bool)
    mask[:, 10:20, 30:40] = True
    resized = pad_resize_mask(mask, 128)
    assert resized.dtype == torch.bool
    assert resized.shape == (3, 128, 128)
    expected_fraction = float(mask.float().sum()) / (3 * WIDTH * WIDTH)
    assert float(resized.float().mean()) == pytest.approx(expected_fraction, rel=0.05)
