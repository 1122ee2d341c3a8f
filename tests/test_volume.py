"""Anomaly volume fusion and export, checked against a per-pixel loop and synthetic cameras."""

from __future__ import annotations

import math

import numpy as np
import open3d as o3d
import pytest
import torch
from PIL import Image

from anomalib_modmap.heatmaps import colorize_scores, render_colorbar, save_view_overlays
from anomalib_modmap.volume import (
    AnomalyVolume,
    VoxelLookup,
    export_anomaly_volume,
    export_batch_volumes,
    fuse_anomaly_volume,
    fuse_batch_volumes,
)
from sim3d_datamodule.geometry import VoxelGrid

ORIGIN = np.array([-1.0, -1.0, 0.5])
VOXEL_SIZE = 0.05


def rotation_y(angle: float) -> np.ndarray:
    return np.array([[math.cos(angle), 0.0, math.sin(angle)], [0.0, 1.0, 0.0], [-math.sin(angle), 0.0, math.cos(angle)]])


def make_views(rng: np.random.Generator, num_views: int = 3, height: int = 12, width: int = 16) -> dict[str, np.ndarray]:
    """Random cameras around the origin, random depth, some invalid pixels of every kind."""
    intrinsics = np.zeros((num_views, 3, 3))
    poses = np.zeros((num_views, 4, 4))
    for view in range(num_views):
        intrinsics[view] = [[20.0 + view, 0.3, width / 2 - 0.5], [0.0, 21.0, height / 2 + 0.25], [0.0, 0.0, 1.0]]
        poses[view, :3, :3] = rotation_y(0.3 * view - 0.2)
        poses[view, :3, 3] = [0.05 * view, -0.02, 0.1]
        poses[view, 3, 3] = 1.0
    depth = rng.uniform(1.0, 1.4, size=(num_views, height, width))
    valid = rng.random((num_views, height, width)) > 0.1
    depth[0, 0, :4] = [np.inf, np.nan, 0.0, -1.0]
    valid[0, 0, :4] = True
    scores = rng.random((num_views, height, width))
    scores[~valid] = 5.0  # would win every voxel if invalid pixels leaked in
    return {"intrinsics": intrinsics, "world_to_camera": poses, "depth": depth, "valid": valid, "scores": scores}


def reference_points(depth: float, u: int, v: int, intrinsics: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Back-project one pixel with plain numpy: camera ray times depth, then camera to world."""
    fx, skew, cx = intrinsics[0]
    fy, cy = intrinsics[1, 1], intrinsics[1, 2]
    y = (v - cy) / fy
    x = (u - cx - skew * y) / fx
    camera = np.array([x * depth, y * depth, depth])
    return pose[:3, :3].T @ (camera - pose[:3, 3])


def reference_fusion(views: dict[str, np.ndarray], coords: np.ndarray) -> np.ndarray:
    """Loop over every pixel; a voxel keeps the maximum, unreached voxels the lowest fused pixel score."""
    index = {tuple(int(c) for c in voxel): i for i, voxel in enumerate(coords)}
    best = np.full(len(coords), -np.inf)
    fused = []
    num_views, height, width = views["depth"].shape
    for view in range(num_views):
        for v in range(height):
            for u in range(width):
                depth = views["depth"][view, v, u]
                if not views["valid"][view, v, u] or not np.isfinite(depth) or depth <= 0:
                    continue
                point = reference_points(depth, u, v, views["intrinsics"][view], views["world_to_camera"][view])
                voxel = tuple(int(c) for c in np.floor((point - ORIGIN) / VOXEL_SIZE))
                if voxel in index:
                    score = views["scores"][view, v, u]
                    best[index[voxel]] = max(best[index[voxel]], score)
                    fused.append(score)
    best[np.isneginf(best)] = min(fused) if fused else 0.0
    return best


def reached_voxels(views: dict[str, np.ndarray]) -> np.ndarray:
    """Unique voxels of all valid pixels, by the numpy back-projection."""
    voxels = set()
    num_views, height, width = views["depth"].shape
    for view in range(num_views):
        for v in range(height):
            for u in range(width):
                depth = views["depth"][view, v, u]
                if views["valid"][view, v, u] and np.isfinite(depth) and depth > 0:
                    point = reference_points(depth, u, v, views["intrinsics"][view], views["world_to_camera"][view])
                    voxels.add(tuple(int(c) for c in np.floor((point - ORIGIN) / VOXEL_SIZE)))
    return np.array(sorted(voxels))


def fuse(views: dict[str, np.ndarray], coords: np.ndarray, **kwargs) -> torch.Tensor:
    grid = VoxelGrid(torch.from_numpy(ORIGIN), VOXEL_SIZE, torch.from_numpy(coords))
    return fuse_anomaly_volume(
        torch.from_numpy(views["scores"]),
        torch.from_numpy(views["depth"]),
        torch.from_numpy(views["valid"]),
        torch.from_numpy(views["intrinsics"]),
        torch.from_numpy(views["world_to_camera"]),
        grid,
        **kwargs,
    )


def listed_subset(rng: np.random.Generator, views: dict[str, np.ndarray]) -> np.ndarray:
    """Most reached voxels (the rest become unlisted) plus a few voxels that no pixel reaches."""
    reached = reached_voxels(views)
    still_listed = reached[rng.random(len(reached)) > 0.2]
    unreached = reached.max(axis=0) + 5 + np.arange(4)[:, None]
    coords = np.concatenate([still_listed, unreached])
    return coords[rng.permutation(len(coords))]


# ---------------------------------------------------------------- fusion


@pytest.mark.parametrize("seed", [0, 1])
def test_fusion_matches_pixel_loop(seed):
    rng = np.random.default_rng(seed)
    views = make_views(rng)
    coords = listed_subset(rng, views)

    expected = reference_fusion(views, coords)
    fused = fuse(views, coords)

    assert fused.dtype == torch.float64
    np.testing.assert_array_equal(fused.numpy(), expected)
    assert fused.max() < 5.0


def test_fusion_ignores_view_order():
    rng = np.random.default_rng(4)
    views = make_views(rng, num_views=4)
    coords = listed_subset(rng, views)
    order = [2, 0, 3, 1]
    shuffled = {key: value[order] for key, value in views.items()}
    torch.testing.assert_close(fuse(shuffled, coords), fuse(views, coords), rtol=0, atol=0)


def test_fusion_plane_seen_by_two_views():
    height, width, focal = 40, 60, 50.0
    intrinsics = np.array([[[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]]] * 2)
    poses = np.array([np.eye(4), np.eye(4)])
    # Camera 1 sits 0.4 m right of camera 0; the plane z = 2 m faces both.
    poses[1, 0, 3] = -0.4
    depth = np.full((2, height, width), 2.0)
    views = {
        "intrinsics": intrinsics,
        "world_to_camera": poses,
        "depth": depth,
        "valid": np.ones((2, height, width), dtype=bool),
        "scores": np.stack([np.full((height, width), 0.2), np.full((height, width), 0.7)]),
    }
    # Listed voxels: the plane's layer from x = -2.5 m to 2.5 m, wider than both views.
    plane_layer = int(np.floor((2.0 - ORIGIN[2]) / VOXEL_SIZE))
    xs, ys = np.meshgrid(np.arange(-30, 70), np.arange(0, 40), indexing="ij")
    coords = np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, plane_layer)], axis=1)

    fused = fuse(views, coords).numpy()
    centres = ORIGIN + (coords + 0.5) * VOXEL_SIZE

    def inside(camera: int, margin: float) -> np.ndarray:
        x_camera = centres[:, 0] + poses[camera, 0, 3]
        u = focal * x_camera / 2.0 + (width - 1) / 2
        v = focal * centres[:, 1] / 2.0 + (height - 1) / 2
        return (u > -0.5 + margin) & (u < width - 0.5 - margin) & (v > -0.5 + margin) & (v < height - 0.5 - margin)

    seen_by_1 = inside(1, margin=1.5)
    only_0 = inside(0, margin=1.5) & ~inside(1, margin=-1.5)
    unseen = ~inside(0, margin=-1.5) & ~inside(1, margin=-1.5)
    assert seen_by_1.sum() > 50
    assert only_0.sum() > 50
    assert unseen.sum() > 50
    assert np.all(fused[seen_by_1] == 0.7)
    assert np.all(fused[only_0] == 0.2)
    assert np.all(fused[unseen] == 0.2)  # the lowest fused pixel score

    pinned = fuse(views, coords, fill_value=-1.0).numpy()
    assert np.all(pinned[unseen] == -1.0)
    assert np.all(pinned[seen_by_1] == 0.7)


def test_fusion_without_any_hit_fills_zero():
    rng = np.random.default_rng(2)
    views = make_views(rng, num_views=1)
    far_away = np.array([[500, 500, 500], [501, 500, 500]])
    assert fuse(views, far_away).tolist() == [0.0, 0.0]


def test_fusion_accepts_channel_dimension_and_float32():
    rng = np.random.default_rng(3)
    views = make_views(rng, num_views=2)
    coords = listed_subset(rng, views)
    grid = VoxelGrid(torch.from_numpy(ORIGIN), VOXEL_SIZE, torch.from_numpy(coords))
    fused = fuse_anomaly_volume(
        torch.from_numpy(views["scores"]).float().unsqueeze(1),
        torch.from_numpy(views["depth"]).unsqueeze(1),
        torch.from_numpy(views["valid"]).unsqueeze(1),
        torch.from_numpy(views["intrinsics"]),
        torch.from_numpy(views["world_to_camera"]),
        grid,
    )
    assert fused.dtype == torch.float32
    np.testing.assert_allclose(fused.numpy(), reference_fusion(views, coords), rtol=1e-6)


def test_fusion_rejects_bad_input():
    rng = np.random.default_rng(5)
    views = make_views(rng, num_views=2)
    coords = listed_subset(rng, views)

    with pytest.raises(ValueError, match="depth has shape"):
        fuse({**views, "depth": views["depth"][:, :-1]}, coords)
    with pytest.raises(ValueError, match="intrinsics must have shape"):
        fuse({**views, "intrinsics": views["intrinsics"][:1]}, coords)
    with pytest.raises(ValueError, match="more than once"):
        fuse(views, np.concatenate([coords, coords[:1]]))
    scores = views["scores"].copy()
    scores[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fuse({**views, "scores": scores}, coords)


def test_lookup_returns_minus_one_outside():
    grid = VoxelGrid(torch.zeros(3, dtype=torch.float64), 0.1, torch.tensor([[0, 0, 0], [3, 1, 2]]))
    points = torch.tensor([[0.05, 0.05, 0.05], [0.35, 0.15, 0.25], [0.15, 0.05, 0.05], [1e9, 0.0, 0.0]], dtype=torch.float64)
    assert VoxelLookup(grid).find(points).tolist() == [0, 1, -1, -1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fusion_on_gpu_matches_cpu():
    rng = np.random.default_rng(6)
    views = make_views(rng)
    coords = listed_subset(rng, views)
    grid = VoxelGrid(torch.from_numpy(ORIGIN), VOXEL_SIZE, torch.from_numpy(coords))
    arguments = [torch.from_numpy(views[key]) for key in ("scores", "depth", "valid", "intrinsics", "world_to_camera")]
    on_gpu = fuse_anomaly_volume(*[argument.cuda() for argument in arguments], grid.to("cuda"))
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), fuse_anomaly_volume(*arguments, grid), rtol=0, atol=0)


# ---------------------------------------------------------------- export


def small_volume() -> AnomalyVolume:
    coords = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 2, 1], [4, 4, 4]])
    grid = VoxelGrid(torch.tensor([0.5, -0.5, 1.0], dtype=torch.float64), 0.02, coords, torch.tensor([False, True, True, False]))
    return AnomalyVolume(grid, torch.tensor([0.1, 0.9, 0.5, 0.3]), instance="demo_bad_01")


def test_npz_round_trip_keeps_ground_truth_keys(tmp_path):
    volume = small_volume()
    path = volume.save_npz(tmp_path / "volume.npz")

    with np.load(path) as data:
        assert sorted(data.files) == ["anomalous", "coords", "origin", "scores", "voxel_size"]
        assert data["coords"].dtype == np.int32
        assert data["origin"].dtype == np.float64
        assert data["voxel_size"].shape == ()
        assert data["anomalous"].dtype == bool

    loaded = AnomalyVolume.load_npz(path)
    assert torch.equal(loaded.grid.coords, volume.grid.coords)
    assert torch.equal(loaded.grid.anomalous, volume.grid.anomalous)
    assert torch.equal(loaded.scores, volume.scores)
    assert loaded.grid.voxel_size == 0.02


def test_volume_rejects_misaligned_scores():
    volume = small_volume()
    with pytest.raises(ValueError, match="demo_bad_01"):
        AnomalyVolume(volume.grid, volume.scores[:-1], instance="demo_bad_01")


def test_ply_has_centres_colours_and_scores(tmp_path):
    volume = small_volume()
    path = volume.save_ply(tmp_path / "volume.ply")
    cloud = o3d.t.io.read_point_cloud(str(path))

    positions = cloud.point.positions.numpy()
    np.testing.assert_allclose(positions, volume.voxel_centres().numpy())
    np.testing.assert_allclose(positions[1], [0.5 + 1.5 * 0.02, -0.5 + 0.5 * 0.02, 1.0 + 0.5 * 0.02])
    colours = cloud.point.colors.numpy()
    # Jet runs from dark blue (lowest score) to dark red (highest).
    assert colours[0].tolist() == [0, 0, 128]
    assert colours[1].tolist() == [128, 0, 0]
    np.testing.assert_allclose(cloud.point.scores.numpy().ravel(), volume.scores.numpy())


def test_colorize_clips_to_range():
    colours = colorize_scores(np.array([-1.0, 0.0, 1.0, 2.0]), score_range=(0.0, 1.0))
    assert colours[0].tolist() == colours[1].tolist()
    assert colours[2].tolist() == colours[3].tolist()
    assert colorize_scores(np.array([3.0, 3.0])).tolist() == [[0, 0, 128], [0, 0, 128]]


def test_overlays_blend_only_valid_pixels(tmp_path):
    images = torch.linspace(0, 1, 2 * 6 * 8).reshape(2, 1, 6, 8).expand(2, 3, 6, 8)
    maps = torch.zeros(2, 6, 8)
    maps[1, 2:4, 3:5] = 1.0
    valid = torch.ones(2, 6, 8, dtype=torch.bool)
    valid[:, 0, :] = False

    paths = save_view_overlays(tmp_path, images, maps, valid=valid, view_names=["C01", "C02"], colorbar=False)
    assert [path.name for path in paths] == ["C01.png", "C02.png"]
    overlay = np.asarray(Image.open(paths[1]))
    assert overlay.shape == (6, 8, 3)
    # Invalid rows show the gray image; hot pixels lean red, cold ones blue.
    assert overlay[0, 0, 0] == overlay[0, 0, 1] == overlay[0, 0, 2]
    assert overlay[2, 3, 0] > overlay[2, 3, 2]
    assert overlay[5, 0, 2] > overlay[5, 0, 0]

    with pytest.raises(ValueError, match="view_names has 1 entries"):
        save_view_overlays(tmp_path, images, maps, view_names=["C01"])


def test_overlay_colorbar_shows_range(tmp_path):
    images = torch.zeros(1, 3, 120, 100)
    maps = torch.zeros(1, 120, 100)
    plain = save_view_overlays(tmp_path / "plain", images, maps, score_range=(0.0, 2.5), colorbar=False)[0]
    barred = save_view_overlays(tmp_path / "barred", images, maps, score_range=(0.0, 2.5))[0]
    plain_pixels = np.asarray(Image.open(plain))
    overlay = np.asarray(Image.open(barred))

    assert overlay.shape == (120, 164, 3)
    np.testing.assert_array_equal(overlay[:, :100], plain_pixels)
    bar = overlay[:, 100:].astype(int)
    # jet: the top of the bar is red (high scores), the bottom blue (low scores).
    column = bar[:, 10]
    assert column[10, 0] > column[10, 2]
    assert column[-10, 2] > column[-10, 0]
    # White tick labels right of the bar.
    assert (bar[:, 25:] > 200).all(axis=-1).sum() > 20


def test_colorbar_label_values_change_with_range():
    first = render_colorbar((0.0, 1.0), 120)
    second = render_colorbar((0.0, 7.0), 120)
    assert first.shape == (120, 64, 3)
    assert not np.array_equal(first, second)
    assert render_colorbar((0.0, 1.0), 20).shape == (96, 64, 3)


def test_export_writes_all_three(tmp_path):
    volume = small_volume()
    images = torch.rand(3, 3, 10, 12)
    maps = torch.rand(3, 10, 12)
    written = export_anomaly_volume(tmp_path / "volumes" / "demo_bad_01", volume, images=images, anomaly_maps=maps)

    assert written["npz"].is_file()
    assert written["ply"].is_file()
    assert [path.name for path in written["overlays"]] == ["view_000.png", "view_001.png", "view_002.png"]
    assert all(path.is_file() for path in written["overlays"])
    assert len(o3d.t.io.read_point_cloud(str(written["ply"])).point.positions) == 4


def test_batch_fusion_and_export(tmp_path):
    from types import SimpleNamespace

    rng = np.random.default_rng(8)
    views = make_views(rng, num_views=2)
    coords = listed_subset(rng, views)
    grid = VoxelGrid(torch.from_numpy(ORIGIN), VOXEL_SIZE, torch.from_numpy(coords), torch.from_numpy(rng.random(len(coords)) < 0.1))
    stacked = {key: torch.from_numpy(np.stack([value, value])) for key, value in views.items()}
    batch = SimpleNamespace(
        anomaly_map=stacked["scores"],
        depth_map=stacked["depth"].unsqueeze(2),
        valid_depth=stacked["valid"].unsqueeze(2),
        intrinsics=stacked["intrinsics"],
        world_to_camera=stacked["world_to_camera"],
        gt_volume=[grid, None],
        image=torch.rand(2, 2, 3, 12, 16),
        view_names=[["C01", "C02"], ["C01", "C02"]],
        instance=["part_bad_01", "part_good_01"],
    )

    batch.pred_volume = fuse_batch_volumes(batch)
    assert batch.pred_volume[1] is None
    np.testing.assert_array_equal(batch.pred_volume[0].numpy(), reference_fusion(views, coords))

    written = export_batch_volumes(tmp_path, batch)
    assert len(written) == 1
    folder = tmp_path / "volumes" / "part_bad_01"
    assert written[0]["npz"] == folder / "anomaly_volume.npz"
    assert sorted(path.name for path in (folder / "overlays").iterdir()) == ["C01.png", "C02.png"]
    assert not (tmp_path / "volumes" / "part_good_01").exists()

    with pytest.raises(ValueError, match="has no world_to_camera"):
        fuse_batch_volumes(SimpleNamespace(**{**vars(batch), "world_to_camera": None}))
