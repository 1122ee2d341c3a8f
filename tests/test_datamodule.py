"""SiM3D datamodule on the synthetic fixture: both setups, view selection, flattened and pair modes, bad inputs."""

import shutil

import numpy as np
import pytest
import torch
from anomalib.data import DepthBatch

from sim3d_datamodule import geometry, io, layout
from sim3d_datamodule.datamodule import SiM3D
from sim3d_datamodule.io import SiM3DFormatError
from sim3d_datamodule.items import MultiViewBatch, ViewBatch
from sim3d_datamodule.testing import FIXTURE_ORIGIN, FIXTURE_VOXEL_SIZE

IMAGE_SIZE = 32


@pytest.fixture
def writable_root(sim3d_root, tmp_path):
    """A private copy of the fixture that a test may corrupt."""
    shutil.copytree(sim3d_root / "toy", tmp_path / "toy")
    return tmp_path


def _setup(root, **kwargs) -> SiM3D:
    datamodule = SiM3D(root=root, category="toy", image_size=IMAGE_SIZE, **kwargs)
    datamodule.setup()
    return datamodule


@pytest.mark.parametrize("setup", ["real2real", "synth2real"])
def test_setups_load_train_and_test(sim3d_root, setup):
    datamodule = _setup(sim3d_root, setup=setup)
    assert len(datamodule.train_data) == 1
    assert len(datamodule.test_data) == 4
    assert len(datamodule.val_data) == 4

    train = next(iter(datamodule.train_dataloader()))
    assert isinstance(train, MultiViewBatch)
    assert train.image.shape == (1, 4, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert train.depth_map.shape == (1, 4, 1, IMAGE_SIZE, IMAGE_SIZE)
    assert train.valid_depth.dtype == torch.bool
    assert train.gt_volume is None
    assert train.instance == [f"toy_{'real' if setup == 'real2real' else 'synth'}"]
    # The sphere is 0.9 to 1.5 m from every camera, also after the mm-to-m conversion of the renders.
    valid_depth = train.depth_map[train.valid_depth]
    assert valid_depth.min() > 0.85
    assert valid_depth.max() < 1.5


def test_real_and_synth_training_views_agree(sim3d_root):
    real = _setup(sim3d_root, setup="real2real").train_data[0]
    synth = _setup(sim3d_root, setup="synth2real").train_data[0]
    assert torch.equal(real.valid_depth, synth.valid_depth)
    assert torch.allclose(real.depth_map, synth.depth_map, atol=1e-4)
    assert torch.allclose(real.intrinsics, synth.intrinsics)
    # 16-bit gray against 8-bit RGB of the same shading: equal up to quantisation.
    assert torch.allclose(real.image, synth.image, atol=0.05)


def test_test_items_carry_labels_and_volumes(sim3d_root):
    datamodule = _setup(sim3d_root)
    batches = list(datamodule.test_dataloader())
    by_instance = {batch.instance[0]: batch for batch in batches}
    assert sorted(by_instance) == ["toy_bad_01", "toy_bad_02", "toy_good_01", "toy_good_02"]

    for name, batch in by_instance.items():
        grid = batch.gt_volume[0]
        assert bool(batch.gt_label[0]) == ("bad" in name)
        assert grid.num_voxels > 100
        assert bool(grid.anomalous.any()) == ("bad" in name)
        assert batch.intrinsics.dtype == torch.float64
        assert batch.world_to_camera.shape == (1, 4, 4, 4)
        assert batch.view_names == [["C01", "C02", "C03", "C04"]]
        assert torch.equal(batch.view_index, torch.arange(4).unsqueeze(0))


def test_nominal_without_gt_is_voxelised(sim3d_root):
    datamodule = _setup(sim3d_root)
    index = list(datamodule.test_data.samples.instance).index("toy_good_02")
    grid = datamodule.test_data[index].gt_volume
    assert not (sim3d_root / "toy" / "toy_good_02" / "gt").exists()
    assert grid.voxel_size == pytest.approx(FIXTURE_VOXEL_SIZE)
    assert torch.allclose(grid.origin, torch.tensor(FIXTURE_ORIGIN, dtype=torch.float64))
    assert not grid.anomalous.any()

    # Every voxel is hit by a back-projected depth pixel of the instance, and every hit voxel is listed.
    cameras = io.read_cameras(sim3d_root / "toy" / "toy_good_02" / "cameras.json")
    keys = []
    for view in cameras.views:
        depth, valid = io.read_depth_npy(sim3d_root / "toy" / "toy_good_02" / "depth" / f"{view.name}.npy")
        points = geometry.depth_to_world_points(depth.double(), view.K, view.world_to_camera)[valid]
        keys.append(geometry.voxel_keys(geometry.points_to_voxels(points, grid.origin, grid.voxel_size)))
    assert torch.equal(torch.unique(torch.cat(keys)), torch.sort(geometry.voxel_keys(grid.coords)).values)


def test_gt_voxels_inside_backprojected_depth(sim3d_root):
    datamodule = SiM3D(root=sim3d_root, category="toy", image_size=64)
    datamodule.setup()
    for item in datamodule.test_data:
        grid = item.gt_volume
        points = geometry.depth_to_world_points(item.depth_map[:, 0].double(), item.intrinsics, item.world_to_camera)[item.valid_depth[:, 0]]
        hit = torch.isin(geometry.voxel_keys(grid.coords), geometry.voxel_keys(geometry.points_to_voxels(points, grid.origin, grid.voxel_size)))
        # At 64 pixels the views are not resampled (only padded), so every listed voxel is hit.
        assert hit.all(), f"{item.instance}: {int((~hit).sum())} of {grid.num_voxels} voxels not hit"


@pytest.mark.parametrize(
    ("views", "sampling", "expected"),
    [
        ("all", "even", [0, 1, 2, 3]),
        (2, "even", [0, 2]),
        (3, "first", [0, 1, 2]),
        ([3, 1], "even", [1, 3]),
    ],
)
def test_view_selection(sim3d_root, views, sampling, expected):
    datamodule = _setup(sim3d_root, views=views, view_sampling=sampling)
    item = datamodule.test_data[0]
    assert item.view_index.tolist() == expected
    assert item.view_names == [f"C{index + 1:02d}" for index in expected]
    assert item.image.shape[0] == len(expected)


def test_view_count_given_as_text():
    assert layout.select_views(8, "4") == [0, 2, 4, 6]


def test_random_view_sampling_is_seeded():
    first = layout.select_views(12, 5, "random", seed=3)
    again = layout.select_views(12, 5, "random", seed=3)
    other = layout.select_views(12, 5, "random", seed=4)
    assert first == again
    assert first == sorted(first)
    assert len(set(first)) == 5
    assert first != other


@pytest.mark.parametrize(("views", "message"), [(0, "out of range"), (5, "out of range"), ([0, 4], "out of range"), ([1, 1], "duplicates"), ("some", "'all'")])
def test_invalid_view_selection_raises(views, message):
    with pytest.raises(ValueError, match=message):
        layout.select_views(4, views)


def test_flatten_yields_depth_batches(sim3d_root):
    datamodule = _setup(sim3d_root, flatten=True)
    assert len(datamodule.train_data) == 4
    assert len(datamodule.test_data) == 16

    batch = next(iter(datamodule.test_dataloader()))
    assert isinstance(batch, ViewBatch)
    assert isinstance(batch, DepthBatch)
    assert batch.image.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch.depth_map.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)

    # The xyz map is the camera-frame back-projection: its z is the depth, 0 where invalid.
    multi_view = _setup(sim3d_root).test_data
    instance = list(multi_view.samples.instance).index(batch.instance[0])
    reference = multi_view[instance]
    view = int(batch.view_index[0])
    assert torch.allclose(batch.depth_map[0, 2], reference.depth_map[view, 0])
    assert torch.all(batch.depth_map[0][:, ~batch.valid_depth[0, 0]] == 0)


def test_train_pairs_cover_all_ordered_pairs(sim3d_root):
    datamodule = _setup(sim3d_root, train_pairs=True, views=3)
    pairs = [tuple(datamodule.train_data[index].view_index.tolist()) for index in range(len(datamodule.train_data))]
    assert sorted(pairs) == [(source, target) for source in (0, 1, 2) for target in (0, 1, 2)]

    batch = next(iter(datamodule.pair_dataloader(batch_size=4)))
    assert batch.image.shape == (4, 2, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_cached_views_match_fresh_loads(sim3d_root):
    cached = _setup(sim3d_root, train_pairs=True, cache_views=True).train_data
    fresh = _setup(sim3d_root, train_pairs=True).train_data
    for index in (0, 5, 5):
        assert torch.equal(cached[index].image, fresh[index].image)
        assert torch.equal(cached[index].depth_map, fresh[index].depth_map)
    # Pairs 0 and 5 are (C01, C01) and (C02, C02) in row-major order.
    assert sorted(cached._view_cache) == [("toy_real", "C01"), ("toy_real", "C02")]
    assert not fresh._view_cache


def test_unnormalised_images_lie_in_unit_range(sim3d_root):
    item = _setup(sim3d_root, normalize_image=False).train_data[0]
    assert item.image.min() >= 0
    assert item.image.max() == pytest.approx(1.0)


# --------------------------------------------------------------------------- invalid input


def test_unknown_setup_raises(sim3d_root):
    with pytest.raises(ValueError, match=r"Unknown setup 'synthetic'; choose one of \['real2real', 'synth2real'\]"):
        SiM3D(root=sim3d_root, category="toy", setup="synthetic")


def test_unknown_category_lists_existing(sim3d_root):
    datamodule = SiM3D(root=sim3d_root, category="plastic_stool")
    with pytest.raises(FileNotFoundError, match=r"Categories under .*: \['toy'\]"):
        datamodule.setup()


def test_missing_depth_partner_raises(writable_root):
    (writable_root / "toy" / "toy_good_01" / "depth" / "C03.npy").unlink()
    with pytest.raises(SiM3DFormatError, match=r"toy_good_01: views \['C03'\] have an image but no depth map"):
        _setup(writable_root)


def test_missing_image_partner_raises(writable_root):
    (writable_root / "toy" / "toy_synth" / "RGB" / "C02_2.png").unlink()
    with pytest.raises(SiM3DFormatError, match=r"toy_synth: views \['C02'\] have a depth map but no image"):
        _setup(writable_root, setup="synth2real")


def test_view_count_mismatch_raises(writable_root):
    instance = writable_root / "toy" / "toy_bad_02"
    (instance / "rgb" / "C04_2.png").unlink()
    (instance / "depth" / "C04.npy").unlink()
    with pytest.raises(SiM3DFormatError, match="Instance 'toy_bad_02' has 3 views but 'toy_real' has 4"):
        _setup(writable_root)
    # A subset of views that every instance has is accepted.
    assert _setup(writable_root, views=3, view_sampling="first").test_data[1].image.shape[0] == 3


def test_unreadable_view_stops_loading(writable_root):
    path = writable_root / "toy" / "toy_good_01" / "rgb" / "C02_2.png"
    path.write_bytes(path.read_bytes()[:100])
    datamodule = _setup(writable_root)
    with pytest.raises(SiM3DFormatError, match=r"toy_good_01/rgb/C02_2\.png: image is unreadable or truncated"):
        list(datamodule.test_dataloader())


def test_depth_without_valid_pixel_stops_loading(writable_root):
    np.save(writable_root / "toy" / "toy_bad_01" / "depth" / "C01.npy", np.zeros((48, 64), np.float32))
    datamodule = _setup(writable_root)
    with pytest.raises(SiM3DFormatError, match=r"C01\.npy: depth map has no valid pixel"):
        datamodule.test_data[0]


def test_missing_cameras_for_test_instance_raises(writable_root):
    (writable_root / "toy" / "toy_good_02" / "cameras.json").unlink()
    with pytest.raises(SiM3DFormatError, match="toy_good_02/cameras.json: cameras.json not found"):
        _setup(writable_root)


def test_cameras_missing_a_view_raises(writable_root):
    path = writable_root / "toy" / "toy_bad_01" / "cameras.json"
    cameras = io.read_cameras(path)
    io.write_cameras(path, cameras.views[:3], cameras.depth_scale)
    datamodule = _setup(writable_root)
    with pytest.raises(SiM3DFormatError, match=r"views \['C04'\] of instance 'toy_bad_01' have no entry"):
        datamodule.test_data[0]


def test_missing_ground_truth_of_anomalous_raises(writable_root):
    (writable_root / "toy" / "toy_bad_02" / "gt" / "anomaly_volume.npz").unlink()
    with pytest.raises(SiM3DFormatError, match="Anomalous instance 'toy_bad_02' needs it"):
        _setup(writable_root)


def test_ground_truth_length_mismatch_stops_loading(writable_root):
    path = writable_root / "toy" / "toy_bad_01" / "gt" / "anomaly_volume.npz"
    with np.load(path) as archive:
        content = dict(archive)
    content["anomalous"] = content["anomalous"][:-1]
    np.savez(path, **content)
    with pytest.raises(SiM3DFormatError, match="toy_bad_01/gt/anomaly_volume.npz: coords lists"):
        _setup(writable_root)


def test_camera_size_mismatch_raises(writable_root):
    path = writable_root / "toy" / "toy_real" / "cameras.json"
    cameras = io.read_cameras(path)
    cameras.views[0].width = 80
    io.write_cameras(path, cameras.views)
    datamodule = _setup(writable_root)
    with pytest.raises(SiM3DFormatError, match="size of 80x48 but .* is 64x48"):
        datamodule.train_data[0]


def test_unsupported_val_split_raises(sim3d_root):
    with pytest.raises(ValueError, match="val_split_mode 'synthetic' is not supported"):
        SiM3D(root=sim3d_root, category="toy", val_split_mode="synthetic")


@pytest.mark.slow
@pytest.mark.parametrize("folder", ["my_data", "SiM3D"])
def test_flatten_warns_when_visualizer_names_collide(sim3d_root, tmp_path, caplog, folder):
    from anomalib.utils.path import generate_output_filename

    root = tmp_path / folder
    shutil.copytree(sim3d_root / "toy", root / "toy")
    with caplog.at_level("WARNING", logger="sim3d_datamodule.datamodule"):
        datamodule = _setup(root, flatten=True)
    warned = "overwrite" in caplog.text
    names = {
        generate_output_filename(path, tmp_path / "images", datamodule.name, "toy", mkdir=False)
        for path in datamodule.test_data.samples.image_path
    }
    unique = len(names) == len(datamodule.test_data)
    # The warning fires exactly when anomalib would give two test views the same output file.
    assert warned == (folder == "my_data")
    assert unique == (folder == "SiM3D")
    if warned:
        assert str(root) in caplog.text


def test_flattened_views_train_anomalib_padim(sim3d_root, tmp_path):
    from anomalib.engine import Engine
    from anomalib.models import Padim

    datamodule = SiM3D(root=sim3d_root, category="toy", image_size=IMAGE_SIZE, flatten=True, normalize_image=False, train_batch_size=4, eval_batch_size=4)
    model = Padim(backbone="resnet18", pre_trained=False, layers=["layer1"], n_features=10)
    engine = Engine(max_epochs=1, accelerator="cpu", default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    engine.fit(model=model, datamodule=datamodule)
    results = engine.test(model=model, datamodule=datamodule, verbose=False)
    assert 0.0 <= results[0]["image_AUROC"] <= 1.0
