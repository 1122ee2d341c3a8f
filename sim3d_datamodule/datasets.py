"""Datasets over SiM3D instances: whole instances, single views, and ordered view pairs.

All three share the same preprocessing, in training and in test:

1. the grayscale image is edge-padded to a square and resized bilinearly to
   ``image_size``, scaled to [0, 1] by its maximum, standardised with the
   SiM3D statistics (unless ``normalize_image`` is false) and repeated to 3
   channels;
2. depth is converted to metres with the ``depth_scale`` of ``cameras.json``,
   invalid pixels become 0, and it is padded with invalid pixels and resized
   with ``nearest-exact``, together with its valid mask;
3. intrinsics are updated for the padding and resize.

The datasets subclass anomalib's :class:`AnomalibDataset` so that anomalib's
label split and validation split work on them. Their ``samples`` frame keeps
the order it is given instead of sorting by path.

NOTE: the datasets ignore ``augmentations``. anomalib's datamodule puts the
model's resize there only to save worker memory, and the model's pre-processor
applies that resize to the batch anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from anomalib.data.datasets.base.image import AnomalibDataset
from pandas import DataFrame

from sim3d_datamodule import geometry
from sim3d_datamodule.io import (
    Cameras,
    SiM3DFormatError,
    read_cameras,
    read_depth,
    read_gray_png,
    read_ground_truth,
    warn_if_depth_looks_like_millimetres,
)
from sim3d_datamodule.items import MultiViewBatch, MultiViewItem, ViewBatch, ViewItem
from sim3d_datamodule.layout import InstanceFiles, ViewFiles
from sim3d_datamodule.transforms import normalize_gray, pad_resize_depth, pad_resize_image

logger = logging.getLogger(__name__)

_REQUIRED_COLUMNS = ("image_path", "split", "label_index", "instance")


@dataclass
class GridReference:
    """Origin and voxel size for voxelising nominal test instances that have no ground-truth file.

    Attributes:
        origin: ``(3,)`` float64 world position of voxel (0, 0, 0), metres.
        voxel_size: voxel edge length, metres.
        source: where the values come from, for messages.
    """

    origin: torch.Tensor
    voxel_size: float
    source: str


@dataclass
class LoadedView:
    """One view after reading and preprocessing.

    Attributes:
        image: ``(3, S, S)`` float32 image.
        depth: ``(S, S)`` float32 depth in metres, 0 where invalid.
        valid: ``(S, S)`` bool valid-depth mask.
        intrinsics: ``(3, 3)`` float64 intrinsics of the resized view, or ``None`` without calibration.
        world_to_camera: ``(4, 4)`` float64 pose, or ``None`` without calibration.
    """

    image: torch.Tensor
    depth: torch.Tensor
    valid: torch.Tensor
    intrinsics: torch.Tensor | None
    world_to_camera: torch.Tensor | None


def load_cameras(instance: InstanceFiles, required: bool) -> Cameras | None:
    """Read the instance's ``cameras.json`` and check that it lists every view found on disk."""
    if instance.cameras_path is None:
        if required:
            msg = f"{instance.directory / 'cameras.json'}: cameras.json not found. Instance '{instance.name}' needs calibration here."
            raise SiM3DFormatError(msg)
        return None
    cameras = read_cameras(instance.cameras_path)
    listed = {view.name for view in cameras.views}
    missing = [view.name for view in instance.views if view.name not in listed]
    if missing:
        msg = f"{instance.cameras_path}: views {missing} of instance '{instance.name}' have no entry. Add their calibration."
        raise SiM3DFormatError(msg)
    return cameras


def load_view(view: ViewFiles, cameras: Cameras | None, image_size: int, normalize_image: bool = True) -> LoadedView:
    """Read one view and apply the shared preprocessing (see the module docstring)."""
    gray = read_gray_png(view.image_path)
    depth_scale = cameras.depth_scale if cameras is not None else 1.0
    depth, valid = read_depth(view.depth_path, depth_scale)
    if cameras is not None:
        warn_if_depth_looks_like_millimetres(cameras, depth, valid)
    height, width = gray.shape
    if depth.shape != gray.shape:
        msg = f"{view.depth_path}: depth map is {tuple(depth.shape)} but image {view.image_path} is {tuple(gray.shape)}. Store both at the same resolution."
        raise SiM3DFormatError(msg)

    intrinsics = world_to_camera = None
    if cameras is not None:
        camera = cameras[view.name]
        if (camera.height, camera.width) != (height, width):
            msg = (
                f"cameras.json gives view '{view.name}' a size of {camera.width}x{camera.height} but {view.image_path} "
                f"is {width}x{height}. K must be for the stored resolution."
            )
            raise SiM3DFormatError(msg)
        intrinsics = geometry.pad_resize_intrinsics(camera.K, height, width, image_size)
        world_to_camera = camera.world_to_camera

    resized = pad_resize_image(gray, image_size).unsqueeze(0)
    if normalize_image:
        image = normalize_gray(resized)
    else:
        peak = resized.amax().clamp_min(torch.finfo(torch.float32).tiny)
        image = (resized / peak).expand(3, -1, -1).contiguous()
    resized_depth, resized_valid = pad_resize_depth(depth, valid, image_size)
    return LoadedView(image, resized_depth, resized_valid, intrinsics, world_to_camera)


def voxelize_instance(instance: InstanceFiles, cameras: Cameras, reference: GridReference) -> geometry.VoxelGrid:
    """Build the all-nominal voxel grid of an instance from every view's depth at native resolution."""
    depths, valids, intrinsics, poses = [], [], [], []
    for view in instance.views:
        depth, valid = read_depth(view.depth_path, cameras.depth_scale)
        camera = cameras[view.name]
        depths.append(depth)
        valids.append(valid)
        intrinsics.append(camera.K)
        poses.append(camera.world_to_camera)
    return geometry.voxelize_depth(depths, valids, intrinsics, poses, reference.origin, reference.voxel_size)


class _SiM3DDatasetBase(AnomalibDataset):
    """Shared bookkeeping: instance lookup by name and an order-keeping ``samples`` frame."""

    def __init__(
        self,
        instances: Sequence[InstanceFiles],
        view_indices: Sequence[int],
        image_size: int,
        normalize_image: bool = True,
    ) -> None:
        super().__init__(augmentations=None)
        self.instances = {instance.name: instance for instance in instances}
        self.view_indices = list(view_indices)
        self.image_size = int(image_size)
        self.normalize_image = normalize_image
        for instance in instances:
            beyond = [index for index in self.view_indices if index >= instance.num_views]
            if beyond:
                msg = f"Instance '{instance.name}' has {instance.num_views} views; requested view indices {beyond} do not exist."
                raise SiM3DFormatError(msg)

    @property
    def samples(self) -> DataFrame:
        """Sample table with columns ``image_path``, ``split``, ``label_index``, ``instance`` and more."""
        if self._samples is None:
            msg = f"{type(self).__name__} has no samples table yet."
            raise RuntimeError(msg)
        return self._samples

    @samples.setter
    def samples(self, samples: DataFrame) -> None:
        missing = [column for column in _REQUIRED_COLUMNS if column not in samples.columns]
        if missing:
            msg = f"samples lacks columns {missing}."
            raise ValueError(msg)
        attrs = dict(samples.attrs)
        self._samples = samples.reset_index(drop=True)
        self._samples.attrs.update(attrs)

    def __add__(self, other_dataset: AnomalibDataset) -> _SiM3DDatasetBase:
        """Concatenate two datasets of the same class, keeping the instances of both."""
        if not isinstance(other_dataset, type(self)):
            msg = f"Cannot concatenate {type(self).__name__} with {type(other_dataset).__name__}."
            raise TypeError(msg)
        combined = super().__add__(other_dataset)
        combined.instances = {**self.instances, **other_dataset.instances}
        return combined

    def _row(self, index: int) -> pd.Series:
        return self.samples.iloc[index]

    def _views(self, instance: InstanceFiles, indices: Sequence[int]) -> list[ViewFiles]:
        return [instance.views[index] for index in indices]


def _frame(rows: list[dict], task: str = "segmentation") -> DataFrame:
    frame = DataFrame(rows)
    frame.attrs["task"] = task
    return frame


class SiM3DInstanceDataset(_SiM3DDatasetBase):
    """One :class:`MultiViewItem` per instance, with the selected views.

    Args:
        instances: instances to serve, in order.
        view_indices: positions of the views to load, in each instance's sorted view list.
        image_size: side ``S`` of the square output images, pixels.
        normalize_image: standardise images with the SiM3D statistics; when
            false, images are gray in [0, 1].
        grid_reference: origin and voxel size used to voxelise nominal test
            instances without a ground-truth file; ``None`` leaves their
            ``gt_volume`` empty (``None``).
        cache_views: keep every preprocessed view in memory after its first
            load, in each loader process. One view takes about
            ``20 * S * S`` bytes (16 MB at ``S = 896``).
    """

    def __init__(
        self,
        instances: Sequence[InstanceFiles],
        view_indices: Sequence[int],
        image_size: int,
        normalize_image: bool = True,
        grid_reference: GridReference | None = None,
        cache_views: bool = False,
    ) -> None:
        super().__init__(instances, view_indices, image_size, normalize_image)
        self.grid_reference = grid_reference
        self.cache_views = cache_views
        self._grid_cache: dict[str, geometry.VoxelGrid] = {}
        self._view_cache: dict[tuple[str, str], LoadedView] = {}
        self.samples = _frame(
            [
                {"image_path": str(instance.directory), "split": instance.split, "label_index": instance.label, "instance": instance.name}
                for instance in instances
            ],
        )

    def __len__(self) -> int:
        return len(self.samples)

    def _ground_truth(self, instance: InstanceFiles, cameras: Cameras | None) -> geometry.VoxelGrid | None:
        if instance.split == "train":
            return None
        if instance.ground_truth_path is not None:
            return read_ground_truth(instance.ground_truth_path)
        if self.grid_reference is None or cameras is None:
            return None
        if instance.name not in self._grid_cache:
            self._grid_cache[instance.name] = voxelize_instance(instance, cameras, self.grid_reference)
        return self._grid_cache[instance.name]

    def _load_view(self, instance: InstanceFiles, view: ViewFiles, cameras: Cameras | None) -> LoadedView:
        key = (instance.name, view.name)
        if key in self._view_cache:
            return self._view_cache[key]
        loaded = load_view(view, cameras, self.image_size, self.normalize_image)
        if self.cache_views:
            self._view_cache[key] = loaded
        return loaded

    def load(self, instance: InstanceFiles, view_indices: Sequence[int]) -> MultiViewItem:
        """Load ``view_indices`` of ``instance`` into a :class:`MultiViewItem`."""
        cameras = load_cameras(instance, required=instance.split == "test")
        views = self._views(instance, view_indices)
        loaded = [self._load_view(instance, view, cameras) for view in views]
        calibrated = cameras is not None
        return MultiViewItem(
            image=torch.stack([view.image for view in loaded]),
            depth_map=torch.stack([view.depth for view in loaded]).unsqueeze(1),
            valid_depth=torch.stack([view.valid for view in loaded]).unsqueeze(1),
            intrinsics=torch.stack([view.intrinsics for view in loaded]) if calibrated else None,
            world_to_camera=torch.stack([view.world_to_camera for view in loaded]) if calibrated else None,
            view_index=torch.as_tensor(list(view_indices), dtype=torch.int64),
            view_names=[view.name for view in views],
            instance=instance.name,
            gt_label=torch.tensor(instance.label),
            gt_volume=self._ground_truth(instance, cameras),
            image_path=str(instance.directory),
        )

    def __getitem__(self, index: int) -> MultiViewItem:
        row = self._row(index)
        return self.load(self.instances[row.instance], self.view_indices)

    @property
    def collate_fn(self) -> Callable:
        """:meth:`MultiViewBatch.collate`."""
        return MultiViewBatch.collate


class SiM3DViewDataset(_SiM3DDatasetBase):
    """One :class:`ViewItem` per (instance, view) for single-view anomalib models.

    ``depth_map`` is the camera-frame xyz map ``(3, S, S)`` in metres computed
    from depth and the resized intrinsics, 0 at invalid pixels, as anomalib's
    RGB-D models (CFM) expect. Every instance needs ``cameras.json``.
    """

    def __init__(
        self,
        instances: Sequence[InstanceFiles],
        view_indices: Sequence[int],
        image_size: int,
        normalize_image: bool = True,
    ) -> None:
        super().__init__(instances, view_indices, image_size, normalize_image)
        rows = []
        for instance in instances:
            if instance.cameras_path is None:
                msg = f"{instance.directory / 'cameras.json'}: cameras.json not found. Per-view items need it to compute xyz maps."
                raise SiM3DFormatError(msg)
            for position in self.view_indices:
                view = instance.views[position]
                # NOTE: image_path is the real file, which anomalib's ImageVisualizer also uses to name its
                # output. Unique names need a folder named SiM3D in the root's path; the datamodule warns otherwise.
                rows.append(
                    {
                        "image_path": str(view.image_path),
                        "depth_path": str(view.depth_path),
                        "split": instance.split,
                        "label_index": instance.label,
                        "instance": instance.name,
                        "view_position": position,
                    },
                )
        self.samples = _frame(rows)
        self._cameras: dict[str, Cameras] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> ViewItem:
        row = self._row(index)
        instance = self.instances[row.instance]
        if instance.name not in self._cameras:
            self._cameras[instance.name] = load_cameras(instance, required=True)
        view = instance.views[int(row.view_position)]
        loaded = load_view(view, self._cameras[instance.name], self.image_size, self.normalize_image)

        points = geometry.depth_to_camera_points(loaded.depth.to(torch.float64), loaded.intrinsics)
        xyz = torch.where(loaded.valid.unsqueeze(-1), points, torch.zeros_like(points)).permute(2, 0, 1).to(torch.float32)
        return ViewItem(
            image=loaded.image,
            depth_map=xyz,
            valid_depth=loaded.valid.unsqueeze(0),
            instance=instance.name,
            view_index=int(row.view_position),
            gt_label=torch.tensor(instance.label),
            image_path=str(view.image_path),
            depth_path=str(view.depth_path),
        )

    @property
    def collate_fn(self) -> Callable:
        """:meth:`ViewBatch.collate`."""
        return ViewBatch.collate


class SiM3DViewPairDataset(SiM3DInstanceDataset):
    """Every ordered pair of selected views of each instance, a view with itself included.

    Each item is a :class:`MultiViewItem` with ``V = 2``: the source view first,
    the target view second. With ``N`` selected views an instance yields
    ``N * N`` items.
    """

    def __init__(
        self,
        instances: Sequence[InstanceFiles],
        view_indices: Sequence[int],
        image_size: int,
        normalize_image: bool = True,
        grid_reference: GridReference | None = None,
        cache_views: bool = False,
    ) -> None:
        super().__init__(instances, view_indices, image_size, normalize_image, grid_reference, cache_views)
        rows = []
        for instance in instances:
            for source in self.view_indices:
                for target in self.view_indices:
                    rows.append(
                        {
                            "image_path": str(instance.directory),
                            "split": instance.split,
                            "label_index": instance.label,
                            "instance": instance.name,
                            "source_view": source,
                            "target_view": target,
                        },
                    )
        self.samples = _frame(rows)

    def __getitem__(self, index: int) -> MultiViewItem:
        row = self._row(index)
        return self.load(self.instances[row.instance], [int(row.source_view), int(row.target_view)])
