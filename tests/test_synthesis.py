"""Data synthesis: renders agree with the mesh, defects carry exact ground truth, imports keep the layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import torch

from sim3d_datamodule import geometry
from sim3d_datamodule.io import read_cameras, write_cameras
from sim3d_datamodule.synthesis.defects import DEFECT_KINDS, Defect
from sim3d_datamodule.synthesis.demo import make_demo_dataset
from sim3d_datamodule.synthesis.mesh_defects import apply_defects_to_mesh, subdivide_triangles
from sim3d_datamodule.synthesis.procedural import DEMO_OBJECTS
from sim3d_datamodule.synthesis.render import Shading, bounding_sphere, make_scene, render_views
from sim3d_datamodule.synthesis.rig import make_rig
from sim3d_datamodule.synthesis.view_defects import apply_defects_to_views

REPO_ROOT = Path(__file__).resolve().parents[1]


def _world_points(depth: np.ndarray, camera) -> np.ndarray:
    valid = np.isfinite(depth)
    points = geometry.depth_to_world_points(
        torch.from_numpy(np.where(valid, depth, 0.0).astype(np.float64)),
        camera.K,
        camera.world_to_camera,
    ).numpy()
    return points[valid]


def _reached_keys(instance: Path) -> set[int]:
    """Voxel keys reached by the back-projected depth of every view of an instance on disk."""
    grid = np.load(instance / "gt" / "anomaly_volume.npz")
    keys: set[int] = set()
    for camera in read_cameras(instance / "cameras.json").views:
        depth = np.load(instance / "depth" / f"{camera.name}.npy")
        points = torch.from_numpy(_world_points(depth, camera))
        voxels = geometry.points_to_voxels(points, torch.from_numpy(grid["origin"]), float(grid["voxel_size"]))
        keys.update(geometry.voxel_keys(voxels).tolist())
    return keys


def test_render_depth_lies_on_mesh():
    mesh, albedo = DEMO_OBJECTS["vase"]()
    center, radius = bounding_sphere(mesh)
    cameras = make_rig("sphere", 3, center, radius, 96, 72)
    renders = render_views(mesh, cameras, Shading(albedo=albedo))
    scene = make_scene(mesh)
    voxel_size = radius / 60.0
    for camera, render in zip(cameras, renders):
        assert render.hit.sum() > 500
        points = _world_points(render.depth, camera)
        distance = scene.compute_distance(o3d.core.Tensor(points.astype(np.float32))).numpy()
        assert distance.max() < 0.01 * voxel_size
        assert np.all(render.gray[~render.hit] == 0.0)


def test_render_lights_change_shading():
    mesh, albedo = DEMO_OBJECTS["bin"]()
    center, radius = bounding_sphere(mesh)
    cameras = make_rig("ring", 1, center, radius, 64, 64)
    dim = render_views(mesh, cameras, Shading(albedo=albedo, ambient=0.05))[0]
    bright = render_views(mesh, cameras, Shading(albedo=albedo, ambient=0.3))[0]
    assert bright.gray[bright.hit].mean() > dim.gray[dim.hit].mean() + 0.05
    np.testing.assert_array_equal(dim.depth, bright.depth)


def test_subdivision_keeps_mesh_closed():
    box = o3d.geometry.TriangleMesh.create_box(1.0, 1.0, 1.0)
    vertices = np.asarray(box.vertices)
    triangles = np.asarray(box.triangles)
    selected = np.zeros(len(triangles), dtype=bool)
    selected[0] = True
    new_vertices, new_triangles, parents = subdivide_triangles(vertices, triangles, selected)
    refined = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(new_vertices), o3d.utility.Vector3iVector(new_triangles.astype(np.int32)))
    assert len(new_triangles) > len(triangles)
    assert refined.is_edge_manifold()
    assert refined.is_watertight()
    assert abs(refined.get_surface_area() - box.get_surface_area()) < 1e-9
    assert parents.max() < len(triangles)


@pytest.mark.parametrize("kind", ["dent", "bump", "chip"])
def test_mesh_offset_defects_move_surface(kind):
    box = o3d.geometry.TriangleMesh.create_box(0.3, 0.3, 0.3)
    defect = Defect(kind, center=[0.15, 0.15, 0.3], normal=[0.0, 0.0, 1.0], radius=0.04, depth=0.01)
    damaged, _ = apply_defects_to_mesh(box, [defect])
    vertices = np.asarray(damaged.vertices)
    central = vertices[(np.linalg.norm(vertices[:, :2] - 0.15, axis=1) < 0.002) & (vertices[:, 2] > 0.2), 2]
    extreme = central.max() if kind == "bump" else central.min()
    assert abs(extreme - (0.31 if kind == "bump" else 0.29)) < 1e-3
    assert damaged.is_edge_manifold()


def test_mesh_hole_removes_material_and_stain_keeps_it():
    box = o3d.geometry.TriangleMesh.create_box(0.3, 0.3, 0.3)
    hole = Defect("hole", center=[0.15, 0.15, 0.3], normal=[0.0, 0.0, 1.0], radius=0.04)
    stain = Defect("stain", center=[0.15, 0.15, 0.3], normal=[0.0, 0.0, 1.0], radius=0.04, albedo_scale=0.5)
    holed, _ = apply_defects_to_mesh(box, [hole])
    stained, _ = apply_defects_to_mesh(box, [stain])
    assert holed.get_surface_area() < box.get_surface_area() - 0.9 * np.pi * 0.04**2
    np.testing.assert_allclose(np.asarray(stained.vertices), np.asarray(box.vertices))
    assert stain.albedo_factor(np.array([[0.15, 0.15, 0.3]]))[0] == pytest.approx(0.5)


def test_view_defect_consistent_across_views():
    # A plane z = 0 seen by two cameras; a bump of height h must lift both views' points to z = h at the centre.
    plane = o3d.geometry.TriangleMesh.create_box(1.0, 1.0, 0.01)
    plane.translate([-0.5, -0.5, -0.01])
    cameras = make_rig("ring", 2, np.zeros(3), 0.3, 80, 80, elevation_degrees=60.0)
    renders = render_views(plane, cameras)
    depths = np.stack([render.depth for render in renders])
    grays = np.stack([render.gray for render in renders])
    intrinsics = np.stack([camera.K.numpy() for camera in cameras])
    poses = np.stack([camera.world_to_camera.numpy() for camera in cameras])
    bump = Defect("bump", center=[0.0, 0.0, 0.0], normal=[0.0, 0.0, 1.0], radius=0.1, depth=0.02)
    new_depths, _, labels = apply_defects_to_views(depths, grays, intrinsics, poses, [bump])
    for view, camera in enumerate(cameras):
        moved = _world_points(new_depths[view], camera)
        original = _world_points(depths[view], camera)
        near_center = np.linalg.norm(original[:, :2], axis=1) < 0.01
        assert near_center.any()
        assert np.abs(moved[near_center, 2] - 0.02).max() < 2e-3
        assert labels[view].sum() > 0
        outside = np.linalg.norm(original[:, :2], axis=1) > 0.1
        np.testing.assert_allclose(moved[outside], original[outside], atol=1e-5)


def test_demo_ground_truth_reached_by_depth(tmp_path):
    folder = make_demo_dataset(tmp_path, "demo_cabinet", views=4, image_size=96, nominal=1, anomalous=3, synth=True, progress=False)
    names = sorted(path.name for path in folder.iterdir())
    assert names == ["demo_cabinet_bad_01", "demo_cabinet_bad_02", "demo_cabinet_bad_03", "demo_cabinet_good_01", "demo_cabinet_real", "demo_cabinet_synth"]
    for instance in folder.glob("demo_cabinet_*_0*"):
        grid = np.load(instance / "gt" / "anomaly_volume.npz")
        assert grid["coords"].dtype == np.int32
        reached = _reached_keys(instance)
        keys = geometry.voxel_keys(torch.from_numpy(grid["coords"].astype(np.int64))).tolist()
        anomalous = [key for key, flag in zip(keys, grid["anomalous"]) if flag]
        assert set(keys) <= reached
        assert all(key in reached for key in anomalous)
        assert (len(anomalous) > 0) == ("bad" in instance.name)
    real = np.load(folder / "demo_cabinet_real" / "depth" / "C01.npy")
    good = np.load(folder / "demo_cabinet_good_01" / "depth" / "C01.npy")
    assert not np.array_equal(np.isfinite(real), np.isfinite(good)) or not np.allclose(real, good)
    assert len(list((folder / "demo_cabinet_synth" / "DEPTH").glob("*_depth.exr"))) == 4


def test_demo_rejects_unknown_category(tmp_path):
    with pytest.raises(ValueError, match="demo_stool"):
        make_demo_dataset(tmp_path, "demo_teapot")


def test_demo_all_defect_kinds_visible(tmp_path):
    folder = make_demo_dataset(tmp_path, "demo_bin", views=4, image_size=80, nominal=0, anomalous=len(DEFECT_KINDS), progress=False)
    for index in range(len(DEFECT_KINDS)):
        grid = np.load(folder / f"demo_bin_bad_{index + 1:02d}" / "gt" / "anomaly_volume.npz")
        assert grid["anomalous"].sum() > 0, DEFECT_KINDS[index]


@pytest.mark.shared_data
def test_render_cli_on_cad_mesh(shared_data, tmp_path):
    import OpenEXR

    mesh = shared_data / "cad" / "fandisk.obj"
    command = [sys.executable, "-m", "sim3d_datamodule.cli", "render", "--mesh", str(mesh), "--out", str(tmp_path), "--category", "fandisk"]
    command += ["--views", "3", "--units", "m", "--size", "80x60", "--up", "y", "--light", "head:0.7", "--light", "0,1,0:0.3"]
    result = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    synth = tmp_path / "fandisk" / "fandisk_synth"
    cameras = json.loads((synth / "cameras.json").read_text())["views"]
    assert [view["name"] for view in cameras] == ["C01", "C02", "C03"]
    scene = make_scene(o3d.io.read_triangle_mesh(str(mesh)))
    for camera in read_cameras(synth / "cameras.json").views:
        assert (synth / "RGB" / f"{camera.name}_2.png").is_file()
        with OpenEXR.File(str(synth / "DEPTH" / f"{camera.name}_depth.exr")) as exr:
            depth = next(iter(exr.channels().values())).pixels.astype(np.float64)
        background = depth == depth.max()
        assert 0 < background.sum() < depth.size
        depth[background] = np.inf
        points = _world_points(depth, camera)
        assert np.abs(scene.compute_distance(o3d.core.Tensor(points.astype(np.float32))).numpy()).max() < 1e-4


def test_render_cli_rejects_bad_light(tmp_path):
    box = o3d.geometry.TriangleMesh.create_box(0.1, 0.1, 0.1)
    mesh_path = tmp_path / "box.ply"
    o3d.io.write_triangle_mesh(str(mesh_path), box)
    command = [sys.executable, "-m", "sim3d_datamodule.cli", "render", "--mesh", str(mesh_path), "--out", str(tmp_path), "--category", "box", "--light", "up:1"]
    result = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert "X,Y,Z:INTENSITY" in result.stderr


@pytest.mark.shared_data
def test_import_rgbd_redkitchen(shared_data, tmp_path):
    from sim3d_datamodule.synthesis.rgbd import import_rgbd, instance_offsets

    folder = import_rgbd(shared_data / "redkitchen", tmp_path, "kitchen", views=3, nominal=1, anomalous=2, downsample=4, progress=False)
    assert sorted(path.name for path in folder.iterdir()) == ["kitchen_bad_01", "kitchen_bad_02", "kitchen_good_01", "kitchen_real"]
    cameras = read_cameras(folder / "kitchen_real" / "cameras.json").views
    assert [camera.width for camera in cameras] == [160] * 3
    assert float(cameras[0].K[0, 0]) == pytest.approx(585.0 / 4)
    nominal_offsets, anomalous_offsets = instance_offsets(1, 2, 3)
    assert sorted(nominal_offsets + anomalous_offsets) == [-6, -3, 3]
    # The first view slot sits as far from the sequence start as the largest offset.
    pose = np.loadtxt(shared_data / "redkitchen" / "frame-000006.pose.txt")
    np.testing.assert_allclose(cameras[0].world_to_camera.numpy() @ pose, np.eye(4), atol=1e-9)
    good = read_cameras(folder / "kitchen_good_01" / "cameras.json").views
    pose = np.loadtxt(shared_data / "redkitchen" / "frame-000003.pose.txt")
    np.testing.assert_allclose(good[0].world_to_camera.numpy() @ pose, np.eye(4), atol=1e-9)
    depth = np.load(folder / "kitchen_real" / "depth" / "C01.npy")
    assert depth.shape == (120, 160)
    assert np.isfinite(depth).mean() > 0.5
    assert 0.3 < np.nanmedian(depth[np.isfinite(depth)]) < 5.0
    for instance in ("kitchen_bad_01", "kitchen_bad_02"):
        grid = np.load(folder / instance / "gt" / "anomaly_volume.npz")
        keys = geometry.voxel_keys(torch.from_numpy(grid["coords"].astype(np.int64))).tolist()
        reached = _reached_keys(folder / instance)
        anomalous = [key for key, flag in zip(keys, grid["anomalous"]) if flag]
        assert anomalous
        assert all(key in reached for key in anomalous)


def test_make_demo_cli_writes_category(tmp_path):
    command = [sys.executable, "-m", "sim3d_datamodule.cli", "make-demo", "--out", str(tmp_path), "--category", "demo_vase"]
    command += ["--views", "3", "--image-size", "64", "--nominal", "1", "--anomalous", "1", "--kind", "bump"]
    result = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "demo_vase"
    assert sorted(path.name for path in folder.iterdir()) == ["demo_vase_bad_01", "demo_vase_good_01", "demo_vase_real"]
    assert sorted(path.name for path in (folder / "demo_vase_real" / "rgb").iterdir()) == ["C01_2.png", "C02_2.png", "C03_2.png"]
    assert (tmp_path / "demo_vase_preview.png").is_file()
    assert np.load(folder / "demo_vase_bad_01" / "gt" / "anomaly_volume.npz")["anomalous"].any()


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [(["--defect-size", "-1"], "--defect-size"), (["--nominal", "0", "--anomalous", "0"], "at least one test instance")],
)
def test_make_demo_cli_rejects_bad_sizes(tmp_path, arguments, expected):
    from click.testing import CliRunner

    from sim3d_datamodule.cli import main

    result = CliRunner().invoke(main, ["make-demo", "--out", str(tmp_path), *arguments])
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert not (tmp_path / "demo_stool").exists()


def test_demo_rejects_category_without_test_instances(tmp_path):
    with pytest.raises(ValueError, match="at least one test instance"):
        make_demo_dataset(tmp_path, nominal=0, anomalous=0, progress=False)
    with pytest.raises(ValueError, match="defect_size=-1"):
        make_demo_dataset(tmp_path, defect_size=-1.0, progress=False)


def test_demo_same_seed_same_files(tmp_path):
    settings = {"views": 2, "image_size": 48, "nominal": 0, "anomalous": 1, "progress": False}
    first = make_demo_dataset(tmp_path / "a", "demo_vase", seed=3, **settings)
    second = make_demo_dataset(tmp_path / "b", "demo_vase", seed=3, **settings)
    other = make_demo_dataset(tmp_path / "c", "demo_vase", seed=4, **settings)
    name = "demo_vase_bad_01/depth/C01.npy"
    np.testing.assert_array_equal(np.load(first / name), np.load(second / name))
    assert not np.array_equal(np.load(first / name), np.load(other / name))


def test_render_from_cameras_json(tmp_path):
    from sim3d_datamodule.synthesis.mesh_category import render_mesh_category

    mesh, _ = DEMO_OBJECTS["cabinet"]()
    mesh_path = tmp_path / "cabinet.ply"
    o3d.io.write_triangle_mesh(str(mesh_path), mesh)
    center, radius = bounding_sphere(mesh)
    cameras = make_rig("sphere", 2, center, radius, 50, 40)
    cameras[1].name = "top"
    write_cameras(tmp_path / "rig.json", cameras)
    written = render_mesh_category(mesh_path, tmp_path / "out", "cabinet", cameras_path=tmp_path / "rig.json", units="m", progress=False)
    synth = written[0]
    rendered = read_cameras(synth / "cameras.json").views
    assert [camera.name for camera in rendered] == ["C01", "top"]
    np.testing.assert_allclose(rendered[1].world_to_camera.numpy(), cameras[1].world_to_camera.numpy())
    assert (synth / "RGB" / "top_2.png").is_file()
    assert (synth / "DEPTH" / "top_depth.exr").is_file()


def test_render_names_views_without_surface(tmp_path):
    from sim3d_datamodule.synthesis.mesh_category import render_mesh_category

    # A vertical triangle in the x-z plane: a level ring sees it face-on from two sides and edge-on from two.
    corners = np.array([[-0.1, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, 0.1]])
    triangle = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(corners), o3d.utility.Vector3iVector(np.array([[0, 1, 2]])))
    mesh_path = tmp_path / "triangle.ply"
    o3d.io.write_triangle_mesh(str(mesh_path), triangle)
    with pytest.raises(ValueError, match="views see no surface") as raised:
        render_mesh_category(mesh_path, tmp_path / "out", "tri", views=4, units="m", size=(40, 30), elevation=0.0, progress=False)
    message = str(raised.value)
    assert "2 of 4 views" in message
    assert "C01, C03" in message
    assert "triangle.ply" in message
    assert "--up" in message
    assert "--units" in message
    assert not (tmp_path / "out").exists()


def test_load_mesh_rejects_point_cloud(tmp_path):
    from sim3d_datamodule.synthesis.render import load_mesh

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.random.default_rng(0).random((20, 3))))
    path = tmp_path / "scan.ply"
    o3d.io.write_point_cloud(str(path), cloud)
    with pytest.raises(ValueError, match="no triangles"):
        load_mesh(path)
    with pytest.raises(ValueError, match="units"):
        load_mesh(path, units="inch")
    with pytest.raises(FileNotFoundError, match="missing.stl"):
        load_mesh(tmp_path / "missing.stl")


def test_load_mesh_scales_units(tmp_path):
    from sim3d_datamodule.synthesis.render import load_mesh

    path = tmp_path / "box.stl"
    box = o3d.geometry.TriangleMesh.create_box(100.0, 50.0, 20.0)
    box.compute_triangle_normals()
    o3d.io.write_triangle_mesh(str(path), box)
    extent = load_mesh(path, units="mm").get_axis_aligned_bounding_box().get_extent()
    np.testing.assert_allclose(extent, [0.1, 0.05, 0.02], rtol=1e-6)


def test_check_ground_truth_flags_unreached_voxel(tmp_path):
    from sim3d_datamodule.synthesis.checks import check_ground_truth

    folder = make_demo_dataset(tmp_path, "demo_bin", views=2, image_size=64, nominal=0, anomalous=1, kinds=["bump"], progress=False)
    instance = folder / "demo_bin_bad_01"
    result = check_ground_truth(instance)
    assert result.ok
    assert result.anomalous > 0
    assert result.unreached == 0

    path = instance / "gt" / "anomaly_volume.npz"
    arrays = dict(np.load(path))
    far = arrays["coords"].max(axis=0) + 50
    arrays["coords"] = np.concatenate((arrays["coords"], far[None].astype(np.int32)))
    arrays["anomalous"] = np.concatenate((arrays["anomalous"], [True]))
    np.savez(path, **arrays)
    broken = check_ground_truth(instance)
    assert not broken.ok
    assert broken.unreached_anomalous == 1

    command = [sys.executable, "-m", "sim3d_datamodule.cli", "check-gt", str(folder)]
    result = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    assert "demo_bin_bad_01" in result.stdout


def _first_batches(root: Path, category: str, setup: str):
    from sim3d_datamodule.datamodule import SiM3D

    datamodule = SiM3D(root=root, category=category, setup=setup, image_size=56)
    datamodule.prepare_data()
    datamodule.setup()
    return next(iter(datamodule.train_dataloader())), next(iter(datamodule.test_dataloader()))


def test_datamodule_loads_demo_both_setups(tmp_path):
    make_demo_dataset(tmp_path, "demo_stool", views=3, image_size=64, nominal=1, anomalous=1, synth=True, kinds=["dent"], progress=False)
    for setup in ("real2real", "synth2real"):
        train, test = _first_batches(tmp_path, "demo_stool", setup)
        assert train.image.shape == (1, 3, 3, 56, 56)
        assert bool(train.valid_depth.any())
        assert test.gt_volume[0] is not None


@pytest.mark.shared_data
def test_datamodule_loads_rendered_cad_mesh(shared_data, tmp_path):
    from sim3d_datamodule.synthesis.mesh_category import render_mesh_category

    render_mesh_category(
        shared_data / "cad" / "featuretype.STL", tmp_path, "feature", views=3, units="m", size=(64, 48), defect_kinds=["bump"], progress=False
    )
    train, test = _first_batches(tmp_path, "feature", "synth2real")
    assert train.depth_map.shape == (1, 3, 1, 56, 56)
    assert bool(train.valid_depth.any())
    assert not bool(train.valid_depth.all())
    assert test.instance == ["feature_bad_render"]
    assert bool(test.gt_volume[0].anomalous.any())


def test_ensure_demo_dataset_reuses_complete_copy(tmp_path):
    from sim3d_datamodule.synthesis.demo import ensure_demo_dataset

    settings = {"views": 2, "image_size": 40, "nominal": 1, "anomalous": 1}
    folder = ensure_demo_dataset(tmp_path, "demo_vase", progress=False, **settings)
    marker = folder / "demo_vase_good_01" / "rgb" / "C01_2.png"
    stamp = marker.stat().st_mtime_ns
    assert ensure_demo_dataset(tmp_path, "demo_vase", progress=False, **settings) == folder
    assert marker.stat().st_mtime_ns == stamp

    ensure_demo_dataset(tmp_path, "demo_vase", progress=False, **{**settings, "nominal": 2})
    assert (folder / "demo_vase_good_02").is_dir()
    assert marker.stat().st_mtime_ns != stamp
