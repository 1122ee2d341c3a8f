"""Readers and writers of SiM3D files: round trips and every kind of invalid file."""

import json

import numpy as np
import pytest
import torch

from sim3d_datamodule import io
from sim3d_datamodule.geometry import VoxelGrid
from sim3d_datamodule.io import SiM3DFormatError
from sim3d_datamodule.testing import ring_cameras


def _grid(num_voxels: int = 5) -> VoxelGrid:
    coords = torch.stack([torch.arange(num_voxels), torch.zeros(num_voxels, dtype=torch.int64), -torch.arange(num_voxels)], dim=1)
    anomalous = torch.zeros(num_voxels, dtype=torch.bool)
    anomalous[1] = True
    return VoxelGrid(torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64), 0.02, coords, anomalous)


def test_gray_png_round_trip_8_and_16_bit(tmp_path):
    image = np.linspace(0, 1, 12 * 10).reshape(12, 10)
    for bit_depth, peak in ((8, 255), (16, 65535)):
        path = io.write_gray_png(tmp_path / f"image{bit_depth}.png", image, bit_depth=bit_depth)
        loaded = io.read_gray_png(path)
        assert loaded.shape == (12, 10)
        assert loaded.dtype == torch.float32
        assert torch.allclose(loaded, torch.from_numpy(np.rint(image * peak)).float())


def test_gray_png_converts_rgb(tmp_path):
    rgb = np.zeros((6, 7, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # blue in OpenCV's channel order
    io.cv2.imwrite(str(tmp_path / "rgb.png"), rgb)
    loaded = io.read_gray_png(tmp_path / "rgb.png")
    assert loaded.shape == (6, 7)
    assert torch.allclose(loaded, torch.full((6, 7), round(200 * 0.114), dtype=torch.float32), atol=1)


def test_depth_npy_marks_invalid_pixels(tmp_path):
    depth = np.full((4, 5), 1.5, dtype=np.float32)
    depth[0, 0], depth[0, 1], depth[0, 2], depth[0, 3] = np.inf, np.nan, 0.0, -1.0
    io.write_depth_npy(tmp_path / "d.npy", depth)
    loaded, valid = io.read_depth_npy(tmp_path / "d.npy", depth_scale=2.0)
    assert valid.sum() == 16
    assert not valid[0, :4].any()
    assert torch.all(loaded[~valid] == 0)
    assert torch.allclose(loaded[valid], torch.tensor(3.0))


def test_depth_exr_round_trip_with_background(tmp_path):
    depth = np.random.default_rng(0).uniform(0.5, 2.0, size=(9, 11)).astype(np.float32)
    depth[2, 3] = 0.0
    depth[4, 5] = np.nan
    io.write_depth_exr(tmp_path / "d.exr", depth)
    loaded, valid = io.read_depth_exr(tmp_path / "d.exr")
    assert not valid[2, 3]
    assert not valid[4, 5]
    assert valid.sum() == depth.size - 2
    assert torch.allclose(loaded[valid], torch.from_numpy(depth)[valid])


def test_depth_exr_takes_channel_zero_of_rgb(tmp_path):
    import OpenEXR

    depth = np.full((5, 6), 2.0, dtype=np.float32)
    depth[0, 0] = 1.0e10
    channels = {"R": depth * 3, "G": depth * 2, "B": depth}
    with OpenEXR.File({"type": OpenEXR.scanlineimage}, channels) as exr:
        exr.write(str(tmp_path / "rgb.exr"))
    loaded, valid = io.read_depth_exr(tmp_path / "rgb.exr")
    assert not valid[0, 0]
    assert torch.allclose(loaded[valid], torch.tensor(2.0))


def test_cameras_round_trip(tmp_path):
    views = ring_cameras(3, (20, 30))
    io.write_cameras(tmp_path / "cameras.json", views, depth_scale=0.001)
    cameras = io.read_cameras(tmp_path / "cameras.json")
    assert cameras.depth_scale == 0.001
    assert [view.name for view in cameras.views] == ["C01", "C02", "C03"]
    assert cameras["C02"].K.dtype == torch.float64
    assert torch.allclose(cameras["C02"].world_to_camera, views[1].world_to_camera)
    assert (cameras["C03"].width, cameras["C03"].height) == (30, 20)


def test_default_depth_scale_warns_on_millimetres(tmp_path, caplog):
    from sim3d_datamodule.datasets import load_view
    from sim3d_datamodule.layout import ViewFiles

    views = ring_cameras(2, (20, 30))
    path = io.write_cameras(tmp_path / "cameras.json", views)
    content = json.loads(path.read_text())
    del content["depth_scale"]
    path.write_text(json.dumps(content))
    cameras = io.read_cameras(path)
    assert cameras.depth_scale == 1.0
    for view in views:
        io.write_gray_png(tmp_path / f"{view.name}.png", np.full((20, 30), 0.5))
        io.write_depth_npy(tmp_path / f"{view.name}.npy", np.full((20, 30), 450.0))

    with caplog.at_level("WARNING", logger="sim3d_datamodule.io"):
        for view in views:
            load_view(ViewFiles(view.name, tmp_path / f"{view.name}.png", tmp_path / f"{view.name}.npy"), cameras, image_size=16)
    warnings = [record.getMessage() for record in caplog.records if "depth_scale" in record.getMessage()]
    assert len(warnings) == 1
    assert str(path) in warnings[0]
    assert "0.001" in warnings[0]


def test_given_depth_scale_does_not_warn(tmp_path, caplog):
    path = io.write_cameras(tmp_path / "cameras.json", ring_cameras(1, (20, 30)), depth_scale=1.0)
    cameras = io.read_cameras(path)
    with caplog.at_level("WARNING", logger="sim3d_datamodule.io"):
        io.warn_if_depth_looks_like_millimetres(cameras, torch.full((20, 30), 450.0), torch.ones(20, 30, dtype=torch.bool))
    assert not caplog.records


def test_ground_truth_round_trip(tmp_path):
    grid = _grid()
    io.write_ground_truth(tmp_path / "gt.npz", grid)
    loaded = io.read_ground_truth(tmp_path / "gt.npz")
    assert loaded.voxel_size == pytest.approx(0.02)
    assert torch.equal(loaded.coords, grid.coords)
    assert torch.equal(loaded.anomalous, grid.anomalous)
    assert loaded.coords.dtype == torch.int64


# --------------------------------------------------------------------------- invalid files


def _truncate(path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def test_truncated_png_raises(tmp_path):
    path = io.write_gray_png(tmp_path / "C01_2.png", np.random.default_rng(0).uniform(size=(40, 50)), bit_depth=16)
    _truncate(path)
    with pytest.raises(SiM3DFormatError, match=r"C01_2\.png: image is unreadable or truncated"):
        io.read_gray_png(path)


def test_truncated_npy_raises(tmp_path):
    path = io.write_depth_npy(tmp_path / "C01.npy", np.ones((40, 50)))
    _truncate(path)
    with pytest.raises(SiM3DFormatError, match=r"C01\.npy: depth map is unreadable or truncated"):
        io.read_depth_npy(path)


def test_pickled_npy_raises(tmp_path):
    np.save(tmp_path / "C01.npy", np.array([{"depth": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SiM3DFormatError, match="unreadable") as raised:
        io.read_depth_npy(tmp_path / "C01.npy")
    assert "allow_pickle" not in str(raised.value)


@pytest.mark.parametrize("name", ["C01.npy", "anomaly_volume.npz"])
def test_garbage_numpy_file_message_is_ours(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"garbage bytes, not numpy")
    reader = io.read_depth_npy if name.endswith(".npy") else io.read_ground_truth
    with pytest.raises(SiM3DFormatError, match="not a numeric NumPy array") as raised:
        reader(path)
    assert "allow_pickle" not in str(raised.value)
    assert name in str(raised.value)


def test_truncated_exr_raises(tmp_path):
    path = io.write_depth_exr(tmp_path / "C01_depth.exr", np.random.default_rng(0).uniform(1, 2, size=(64, 64)))
    _truncate(path)
    with pytest.raises(SiM3DFormatError, match=r"C01_depth\.exr: EXR file is unreadable or truncated"):
        io.read_depth_exr(path)


def test_garbage_exr_raises(tmp_path):
    (tmp_path / "C01_depth.exr").write_bytes(b"not an exr file")
    with pytest.raises(SiM3DFormatError, match="unreadable"):
        io.read_depth_exr(tmp_path / "C01_depth.exr")


def test_depth_without_valid_pixel_raises(tmp_path):
    io.write_depth_npy(tmp_path / "C01.npy", np.full((4, 4), np.inf))
    with pytest.raises(SiM3DFormatError, match="no valid pixel"):
        io.read_depth_npy(tmp_path / "C01.npy")


def test_exr_of_background_only_raises(tmp_path):
    io.write_depth_exr(tmp_path / "C01_depth.exr", np.zeros((4, 4)))
    with pytest.raises(SiM3DFormatError, match="no valid pixel"):
        io.read_depth_exr(tmp_path / "C01_depth.exr")


def test_missing_files_raise(tmp_path):
    with pytest.raises(SiM3DFormatError, match="image file not found"):
        io.read_gray_png(tmp_path / "C01_2.png")
    with pytest.raises(SiM3DFormatError, match="depth file not found"):
        io.read_depth_npy(tmp_path / "C01.npy")
    with pytest.raises(SiM3DFormatError, match="EXR depth file not found"):
        io.read_depth_exr(tmp_path / "C01_depth.exr")
    with pytest.raises(SiM3DFormatError, match="cameras.json not found"):
        io.read_cameras(tmp_path / "cameras.json")
    with pytest.raises(SiM3DFormatError, match="ground-truth file not found"):
        io.read_ground_truth(tmp_path / "gt.npz")


def _write_camera_json(path, mutate) -> None:
    io.write_cameras(path, ring_cameras(2, (20, 30)))
    content = json.loads(path.read_text())
    mutate(content)
    path.write_text(json.dumps(content))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["views"][1].__setitem__("K", [[1.0, 0.0], [0.0, 1.0]]), r"K of view 'C02' has shape \(2, 2\), expected \(3, 3\)"),
        (lambda c: c["views"][0].__setitem__("world_to_camera", [[1, 0, 0], [0, 1, 0], [0, 0, 1]]), r"world_to_camera of view 'C01' has shape \(3, 3\)"),
        (lambda c: c["views"][0]["K"][0].__setitem__(2, float("nan")), "K of view 'C01' contains non-finite values"),
        (lambda c: c["views"][1]["world_to_camera"][0].__setitem__(3, float("inf")), "world_to_camera of view 'C02' contains non-finite"),
        (lambda c: c["views"][0]["world_to_camera"][0].__setitem__(0, 3.0), "not a proper rotation"),
        (lambda c: c["views"][0].pop("K"), r"views\[0\] is missing keys \['K'\]"),
        (lambda c: c["views"][1].__setitem__("name", "C01"), r"views \['C01'\] are listed more than once"),
        (lambda c: c.__setitem__("depth_scale", -1), "depth_scale is -1"),
        (lambda c: c["views"][0].__setitem__("width", 0), "width 0"),
        (lambda c: c.__setitem__("views", []), "no non-empty 'views' list"),
    ],
)
def test_invalid_cameras_raise(tmp_path, mutate, message):
    path = tmp_path / "cameras.json"
    _write_camera_json(path, mutate)
    with pytest.raises(SiM3DFormatError, match=message):
        io.read_cameras(path)


def test_cameras_invalid_json_raises(tmp_path):
    (tmp_path / "cameras.json").write_text("{ not json")
    with pytest.raises(SiM3DFormatError, match="not valid JSON"):
        io.read_cameras(tmp_path / "cameras.json")


def test_ground_truth_length_mismatch_raises(tmp_path):
    np.savez(tmp_path / "gt.npz", origin=np.zeros(3), voxel_size=np.float64(0.02), coords=np.zeros((5, 3), np.int32), anomalous=np.zeros(4, bool))
    with pytest.raises(SiM3DFormatError, match="coords lists 5 voxels but anomalous has 4 entries"):
        io.read_ground_truth(tmp_path / "gt.npz")


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"origin": np.zeros(2)}, "origin has shape"),
        ({"voxel_size": np.float64(0.0)}, "voxel_size is 0.0"),
        ({"coords": np.zeros((3, 2), np.int32), "anomalous": np.zeros(3, bool)}, "coords has shape"),
        ({"coords": np.zeros((2, 3), np.float32), "anomalous": np.zeros(2, bool)}, "coords has shape"),
        ({"coords": np.zeros((2, 3), np.int32), "anomalous": np.zeros(2, bool)}, "more than once"),
    ],
)
def test_invalid_ground_truth_raises(tmp_path, arrays, message):
    content = {"origin": np.zeros(3), "voxel_size": np.float64(0.02), "coords": np.array([[0, 0, 0], [1, 0, 0]], np.int32), "anomalous": np.zeros(2, bool)}
    content.update(arrays)
    np.savez(tmp_path / "gt.npz", **content)
    with pytest.raises(SiM3DFormatError, match=message):
        io.read_ground_truth(tmp_path / "gt.npz")


def test_ground_truth_missing_key_raises(tmp_path):
    np.savez(tmp_path / "gt.npz", origin=np.zeros(3), coords=np.zeros((1, 3), np.int32), anomalous=np.zeros(1, bool))
    with pytest.raises(SiM3DFormatError, match=r"is missing keys \['voxel_size'\]"):
        io.read_ground_truth(tmp_path / "gt.npz")


def test_truncated_ground_truth_raises(tmp_path):
    io.write_ground_truth(tmp_path / "gt.npz", _grid(200))
    _truncate(tmp_path / "gt.npz")
    with pytest.raises(SiM3DFormatError, match="unreadable or truncated"):
        io.read_ground_truth(tmp_path / "gt.npz")
