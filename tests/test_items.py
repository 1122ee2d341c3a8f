"""Multi-view and per-view dataclasses: validation, collation, splitting and device transfer."""

import pytest
import torch
from lightning.pytorch.utilities import move_data_to_device

from sim3d_datamodule.geometry import VoxelGrid
from sim3d_datamodule.items import MultiViewBatch, MultiViewItem, ViewBatch, ViewItem

VIEWS, SIZE = 3, 8


def _item(index: int, num_voxels: int) -> MultiViewItem:
    grid = VoxelGrid(torch.zeros(3, dtype=torch.float64), 0.02, torch.arange(num_voxels * 3).reshape(-1, 3), torch.zeros(num_voxels, dtype=torch.bool))
    return MultiViewItem(
        image=torch.rand(VIEWS, 3, SIZE, SIZE),
        depth_map=torch.rand(VIEWS, 1, SIZE, SIZE),
        valid_depth=torch.ones(VIEWS, 1, SIZE, SIZE, dtype=torch.bool),
        intrinsics=torch.eye(3).repeat(VIEWS, 1, 1),
        world_to_camera=torch.eye(4).repeat(VIEWS, 1, 1),
        view_index=torch.arange(VIEWS),
        view_names=["C01", "C02", "C03"],
        instance=f"toy_{index}",
        gt_label=index % 2,
        gt_volume=grid,
        image_path="/data/toy",
    )


def test_item_converts_dtypes():
    item = _item(0, 4)
    assert item.intrinsics.dtype == torch.float64
    assert item.world_to_camera.dtype == torch.float64
    assert item.view_index.dtype == torch.int64
    assert item.gt_label.dtype == torch.bool


def test_collate_keeps_voxel_grids_as_list():
    batch = MultiViewBatch.collate([_item(0, 4), _item(1, 7)])
    assert batch.batch_size == 2
    assert batch.image.shape == (2, VIEWS, 3, SIZE, SIZE)
    assert batch.intrinsics.shape == (2, VIEWS, 3, 3)
    assert batch.instance == ["toy_0", "toy_1"]
    assert batch.view_names == [["C01", "C02", "C03"]] * 2
    assert [grid.num_voxels for grid in batch.gt_volume] == [4, 7]
    assert batch.gt_label.tolist() == [False, True]


def test_batch_outputs_split_into_items():
    batch = MultiViewBatch.collate([_item(0, 4), _item(1, 7)])
    batch.update(anomaly_map=torch.rand(2, VIEWS, SIZE, SIZE), pred_score=torch.rand(2), pred_volume=[torch.rand(4), torch.rand(7)])
    items = batch.items
    assert [type(item) for item in items] == [MultiViewItem, MultiViewItem]
    assert items[1].anomaly_map.shape == (VIEWS, SIZE, SIZE)
    assert items[1].pred_volume.shape == (7,)
    assert items[1].gt_volume.num_voxels == 7
    assert items[0].instance == "toy_0"


def test_batch_moves_voxel_grids_to_device():
    batch = MultiViewBatch.collate([_item(0, 4)])
    moved = move_data_to_device(batch, torch.device("cpu"))
    assert isinstance(moved, MultiViewBatch)
    assert isinstance(moved.gt_volume[0], VoxelGrid)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("image", torch.rand(3, SIZE, SIZE), r"image must have shape \(V, 3, H, W\)"),
        ("depth_map", torch.rand(VIEWS, SIZE, SIZE), r"depth_map must have shape \(V, 1, H, W\)"),
        ("intrinsics", torch.rand(VIEWS, 4, 4), r"intrinsics must have shape \(V, 3, 3\)"),
        ("anomaly_map", torch.rand(SIZE, SIZE), r"anomaly_map must have shape \(V, H, W\)"),
        ("pred_volume", torch.rand(2, 3), r"pred_volume must have shape \(M,\)"),
    ],
)
def test_item_rejects_wrong_shapes(field, value, message):
    item = _item(0, 4)
    with pytest.raises(ValueError, match=message):
        setattr(item, field, value)


def test_item_rejects_inconsistent_view_counts():
    with pytest.raises(ValueError, match="disagree on the number of views"):
        MultiViewItem(image=torch.rand(VIEWS, 3, SIZE, SIZE), view_index=torch.arange(VIEWS + 1))


def test_batch_rejects_stacked_pred_volume():
    batch = MultiViewBatch.collate([_item(0, 4)])
    with pytest.raises(TypeError, match="list of"):
        batch.update(pred_volume=torch.rand(1, 4))


def test_collate_rejects_partly_missing_tensor():
    second = _item(1, 4)
    second.intrinsics = None
    with pytest.raises(ValueError, match="items \\[1\\] have no value"):
        MultiViewBatch.collate([_item(0, 4), second])


def test_view_batch_is_depth_batch_compatible():
    items = [ViewItem(image=torch.rand(3, SIZE, SIZE), depth_map=torch.rand(3, SIZE, SIZE), instance="toy", view_index=index, gt_label=0) for index in range(2)]
    batch = ViewBatch.collate(items)
    assert batch.depth_map.shape == (2, 3, SIZE, SIZE)
    assert batch.view_index.tolist() == [0, 1]
    assert batch.instance == ["toy", "toy"]
    batch.update(anomaly_map=torch.rand(2, SIZE, SIZE), pred_score=torch.rand(2))
    assert batch.items[1].view_index == 1
