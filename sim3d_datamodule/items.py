"""Multi-view and per-view item and batch dataclasses built on anomalib's depth dataclasses.

anomalib 2.7 validates every field through a descriptor that calls
``validate_<field>`` on assignment, including assignments made by
``update()``. Its depth validators accept one view only, so the classes here
override them for per-view tensors. Its ``BatchIterateMixin.collate`` passes
every field through ``default_collate`` and its ``items`` property goes through
``dataclasses.asdict``. Neither keeps a list of :class:`VoxelGrid` intact, so
:class:`MultiViewBatch` overrides both. Lightning's device transfer walks
dataclasses field by field, so the voxel grids in ``gt_volume`` move to the
device with the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from anomalib.data.dataclasses.generic import FieldDescriptor
from anomalib.data.dataclasses.torch.depth import DepthBatch, DepthItem
from torch.utils.data import default_collate
from torchvision.tv_tensors import Image, Mask

from sim3d_datamodule.geometry import VoxelGrid


def _require_tensor(value: object, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        msg = f"{name} must be a torch.Tensor, got {type(value).__name__}."
        raise TypeError(msg)
    return value


def _require_shape(tensor: torch.Tensor, name: str, ndim: int, expected: str, sizes: dict[int, int] | None = None) -> None:
    """Check ``tensor.ndim`` and the sizes of chosen axes, given as ``{axis: size}``."""
    sizes = sizes or {}
    if tensor.ndim != ndim or any(tensor.shape[axis] != size for axis, size in sizes.items()):
        msg = f"{name} must have shape {expected}, got {tuple(tensor.shape)}."
        raise ValueError(msg)


def _squeeze_channel(tensor: torch.Tensor, channel_axis: int, name: str, expected: str) -> torch.Tensor:
    """Drop a singleton channel axis at ``channel_axis`` when present."""
    if tensor.ndim == channel_axis + 3:
        if tensor.shape[channel_axis] != 1:
            msg = f"{name} must have shape {expected}, got {tuple(tensor.shape)}."
            raise ValueError(msg)
        return tensor.squeeze(channel_axis)
    return tensor


class _MultiViewValidator:
    """Validators for one multi-view item; ``V`` views of ``H`` x ``W`` pixels."""

    @staticmethod
    def validate_image(image: torch.Tensor) -> Image:
        image = _require_tensor(image, "image")
        _require_shape(image, "image", 4, "(V, 3, H, W)", sizes={1: 3})
        return Image(image.to(torch.float32))

    @staticmethod
    def validate_depth_map(depth_map: torch.Tensor | None) -> torch.Tensor | None:
        if depth_map is None:
            return None
        depth_map = _require_tensor(depth_map, "depth_map")
        _require_shape(depth_map, "depth_map", 4, "(V, 1, H, W)", sizes={1: 1})
        return depth_map.to(torch.float32)

    @staticmethod
    def validate_valid_depth(valid_depth: torch.Tensor | None) -> torch.Tensor | None:
        if valid_depth is None:
            return None
        valid_depth = _require_tensor(valid_depth, "valid_depth")
        _require_shape(valid_depth, "valid_depth", 4, "(V, 1, H, W)", sizes={1: 1})
        return valid_depth.to(torch.bool)

    @staticmethod
    def validate_intrinsics(intrinsics: torch.Tensor | None) -> torch.Tensor | None:
        if intrinsics is None:
            return None
        intrinsics = _require_tensor(intrinsics, "intrinsics")
        _require_shape(intrinsics, "intrinsics", 3, "(V, 3, 3)", sizes={1: 3, 2: 3})
        return intrinsics.to(torch.float64)

    @staticmethod
    def validate_world_to_camera(world_to_camera: torch.Tensor | None) -> torch.Tensor | None:
        if world_to_camera is None:
            return None
        world_to_camera = _require_tensor(world_to_camera, "world_to_camera")
        _require_shape(world_to_camera, "world_to_camera", 3, "(V, 4, 4)", sizes={1: 4, 2: 4})
        return world_to_camera.to(torch.float64)

    @staticmethod
    def validate_view_index(view_index: torch.Tensor | Sequence[int] | None) -> torch.Tensor | None:
        if view_index is None:
            return None
        view_index = torch.as_tensor(view_index)
        _require_shape(view_index, "view_index", 1, "(V,)")
        return view_index.to(torch.int64)

    @staticmethod
    def validate_view_names(view_names: Sequence[str] | None) -> list[str] | None:
        if view_names is None:
            return None
        if isinstance(view_names, str) or not all(isinstance(name, str) for name in view_names):
            msg = f"view_names must be a list of strings, got {view_names!r}."
            raise TypeError(msg)
        return list(view_names)

    @staticmethod
    def validate_instance(instance: str | None) -> str | None:
        if instance is not None and not isinstance(instance, str):
            msg = f"instance must be a string, got {type(instance).__name__}."
            raise TypeError(msg)
        return instance

    @staticmethod
    def validate_gt_volume(gt_volume: VoxelGrid | None) -> VoxelGrid | None:
        if gt_volume is not None and not isinstance(gt_volume, VoxelGrid):
            msg = f"gt_volume must be a VoxelGrid or None, got {type(gt_volume).__name__}."
            raise TypeError(msg)
        return gt_volume

    @staticmethod
    def validate_pred_volume(pred_volume: torch.Tensor | None) -> torch.Tensor | None:
        if pred_volume is None:
            return None
        pred_volume = _require_tensor(pred_volume, "pred_volume")
        _require_shape(pred_volume, "pred_volume", 1, "(M,)")
        return pred_volume.to(torch.float32)

    @staticmethod
    def validate_anomaly_map(anomaly_map: torch.Tensor | None) -> Mask | None:
        if anomaly_map is None:
            return None
        anomaly_map = _squeeze_channel(_require_tensor(anomaly_map, "anomaly_map"), 1, "anomaly_map", "(V, H, W)")
        _require_shape(anomaly_map, "anomaly_map", 3, "(V, H, W)")
        return Mask(anomaly_map, dtype=torch.float32)

    @staticmethod
    def validate_gt_mask(gt_mask: torch.Tensor | None) -> Mask | None:
        if gt_mask is None:
            return None
        gt_mask = _squeeze_channel(_require_tensor(gt_mask, "gt_mask"), 1, "gt_mask", "(V, H, W)")
        _require_shape(gt_mask, "gt_mask", 3, "(V, H, W)")
        return Mask(gt_mask, dtype=torch.bool)

    @staticmethod
    def validate_pred_mask(pred_mask: torch.Tensor | None) -> Mask | None:
        if pred_mask is None:
            return None
        pred_mask = _squeeze_channel(_require_tensor(pred_mask, "pred_mask"), 1, "pred_mask", "(V, H, W)")
        _require_shape(pred_mask, "pred_mask", 3, "(V, H, W)")
        return Mask(pred_mask, dtype=torch.bool)


class _MultiViewBatchValidator:
    """Validators for a batch of ``B`` multi-view items."""

    @staticmethod
    def validate_image(image: torch.Tensor) -> Image:
        image = _require_tensor(image, "image")
        _require_shape(image, "image", 5, "(B, V, 3, H, W)", sizes={2: 3})
        return Image(image.to(torch.float32))

    @staticmethod
    def validate_depth_map(depth_map: torch.Tensor | None) -> torch.Tensor | None:
        if depth_map is None:
            return None
        depth_map = _require_tensor(depth_map, "depth_map")
        _require_shape(depth_map, "depth_map", 5, "(B, V, 1, H, W)", sizes={2: 1})
        return depth_map.to(torch.float32)

    @staticmethod
    def validate_valid_depth(valid_depth: torch.Tensor | None) -> torch.Tensor | None:
        if valid_depth is None:
            return None
        valid_depth = _require_tensor(valid_depth, "valid_depth")
        _require_shape(valid_depth, "valid_depth", 5, "(B, V, 1, H, W)", sizes={2: 1})
        return valid_depth.to(torch.bool)

    @staticmethod
    def validate_intrinsics(intrinsics: torch.Tensor | None) -> torch.Tensor | None:
        if intrinsics is None:
            return None
        intrinsics = _require_tensor(intrinsics, "intrinsics")
        _require_shape(intrinsics, "intrinsics", 4, "(B, V, 3, 3)", sizes={2: 3, 3: 3})
        return intrinsics.to(torch.float64)

    @staticmethod
    def validate_world_to_camera(world_to_camera: torch.Tensor | None) -> torch.Tensor | None:
        if world_to_camera is None:
            return None
        world_to_camera = _require_tensor(world_to_camera, "world_to_camera")
        _require_shape(world_to_camera, "world_to_camera", 4, "(B, V, 4, 4)", sizes={2: 4, 3: 4})
        return world_to_camera.to(torch.float64)

    @staticmethod
    def validate_view_index(view_index: torch.Tensor | None) -> torch.Tensor | None:
        if view_index is None:
            return None
        view_index = torch.as_tensor(view_index)
        _require_shape(view_index, "view_index", 2, "(B, V)")
        return view_index.to(torch.int64)

    @staticmethod
    def validate_view_names(view_names: Sequence[Sequence[str]] | None) -> list[list[str]] | None:
        if view_names is None:
            return None
        return [_MultiViewValidator.validate_view_names(names) for names in view_names]

    @staticmethod
    def validate_instance(instance: Sequence[str] | None) -> list[str] | None:
        if instance is None:
            return None
        if isinstance(instance, str) or not all(isinstance(name, str) for name in instance):
            msg = f"instance must be a list of strings, got {instance!r}."
            raise TypeError(msg)
        return list(instance)

    @staticmethod
    def validate_gt_volume(gt_volume: Sequence[VoxelGrid | None] | None) -> list[VoxelGrid | None] | None:
        if gt_volume is None:
            return None
        return [_MultiViewValidator.validate_gt_volume(grid) for grid in gt_volume]

    @staticmethod
    def validate_pred_volume(pred_volume: Sequence[torch.Tensor | None] | None) -> list[torch.Tensor | None] | None:
        if pred_volume is None:
            return None
        if isinstance(pred_volume, torch.Tensor):
            msg = "pred_volume of a batch must be a list of (M,) tensors, one per instance, because M differs."
            raise TypeError(msg)
        return [_MultiViewValidator.validate_pred_volume(scores) for scores in pred_volume]

    @staticmethod
    def validate_anomaly_map(anomaly_map: torch.Tensor | None) -> Mask | None:
        if anomaly_map is None:
            return None
        anomaly_map = _squeeze_channel(_require_tensor(anomaly_map, "anomaly_map"), 2, "anomaly_map", "(B, V, H, W)")
        _require_shape(anomaly_map, "anomaly_map", 4, "(B, V, H, W)")
        return Mask(anomaly_map, dtype=torch.float32)

    @staticmethod
    def validate_gt_mask(gt_mask: torch.Tensor | None) -> Mask | None:
        if gt_mask is None:
            return None
        gt_mask = _squeeze_channel(_require_tensor(gt_mask, "gt_mask"), 2, "gt_mask", "(B, V, H, W)")
        _require_shape(gt_mask, "gt_mask", 4, "(B, V, H, W)")
        return Mask(gt_mask, dtype=torch.bool)

    @staticmethod
    def validate_pred_mask(pred_mask: torch.Tensor | None) -> Mask | None:
        if pred_mask is None:
            return None
        pred_mask = _squeeze_channel(_require_tensor(pred_mask, "pred_mask"), 2, "pred_mask", "(B, V, H, W)")
        _require_shape(pred_mask, "pred_mask", 4, "(B, V, H, W)")
        return Mask(pred_mask, dtype=torch.bool)


# Fields whose tensors carry a leading view axis, checked for a common size V.
_VIEW_FIELDS = ("image", "depth_map", "valid_depth", "intrinsics", "world_to_camera", "view_index", "anomaly_map")


def _check_view_counts(obj: Any, view_axis: int) -> None:  # noqa: ANN401
    counts = {}
    for name in _VIEW_FIELDS:
        value = getattr(obj, name, None)
        if isinstance(value, torch.Tensor):
            counts[name] = int(value.shape[view_axis])
    names = getattr(obj, "view_names", None)
    if names is not None and view_axis == 0:
        counts["view_names"] = len(names)
    if len(set(counts.values())) > 1:
        msg = f"{type(obj).__name__} fields disagree on the number of views: {counts}."
        raise ValueError(msg)


# The extra fields live in small dataclasses of their own: anomalib's FieldDescriptor
# resolves its default through typing.get_type_hints of the owning class, which
# fails on the annotations of anomalib's BatchIterateMixin when run on a subclass.


@dataclass
class _MultiViewItemFields:
    valid_depth: FieldDescriptor[torch.Tensor | None] = FieldDescriptor(validator_name="validate_valid_depth")
    intrinsics: FieldDescriptor[torch.Tensor | None] = FieldDescriptor(validator_name="validate_intrinsics")
    world_to_camera: FieldDescriptor[torch.Tensor | None] = FieldDescriptor(validator_name="validate_world_to_camera")
    view_index: FieldDescriptor[torch.Tensor | None] = FieldDescriptor(validator_name="validate_view_index")
    view_names: FieldDescriptor[list[str] | None] = FieldDescriptor(validator_name="validate_view_names")
    instance: FieldDescriptor[str | None] = FieldDescriptor(validator_name="validate_instance")
    gt_volume: FieldDescriptor[VoxelGrid | None] = FieldDescriptor(validator_name="validate_gt_volume")
    pred_volume: FieldDescriptor[torch.Tensor | None] = FieldDescriptor(validator_name="validate_pred_volume")


@dataclass
class _MultiViewBatchFields:
    valid_depth: FieldDescriptor[torch.Tensor | None] = FieldDescriptor(validator_name="validate_valid_depth")
    intrinsics: FieldDescriptor[torch.Tensor | None] = FieldDescriptor(validator_name="validate_intrinsics")
    world_to_camera: FieldDescriptor[torch.Tensor | None] = FieldDescriptor(validator_name="validate_world_to_camera")
    view_index: FieldDescriptor[torch.Tensor | None] = FieldDescriptor(validator_name="validate_view_index")
    view_names: FieldDescriptor[list[list[str]] | None] = FieldDescriptor(validator_name="validate_view_names")
    instance: FieldDescriptor[list[str] | None] = FieldDescriptor(validator_name="validate_instance")
    gt_volume: FieldDescriptor[list[VoxelGrid | None] | None] = FieldDescriptor(validator_name="validate_gt_volume")
    pred_volume: FieldDescriptor[list[torch.Tensor | None] | None] = FieldDescriptor(validator_name="validate_pred_volume")


@dataclass
class _ViewItemFields:
    valid_depth: FieldDescriptor[torch.Tensor | None] = FieldDescriptor(validator_name="validate_valid_depth")
    instance: FieldDescriptor[str | None] = FieldDescriptor(validator_name="validate_instance")
    view_index: FieldDescriptor[torch.Tensor | None] = FieldDescriptor(validator_name="validate_view_index")


@dataclass
class _ViewBatchFields:
    valid_depth: FieldDescriptor[torch.Tensor | None] = FieldDescriptor(validator_name="validate_valid_depth")
    instance: FieldDescriptor[list[str] | None] = FieldDescriptor(validator_name="validate_instance")
    view_index: FieldDescriptor[torch.Tensor | None] = FieldDescriptor(validator_name="validate_view_index")


@dataclass
class MultiViewItem(_MultiViewValidator, _MultiViewItemFields, DepthItem):
    """All views of one instance, resized to a square ``image_size`` (``S``).

    Attributes:
        image: ``(V, 3, S, S)`` float32 normalised grayscale repeated to 3 channels.
        depth_map: ``(V, 1, S, S)`` float32 depth in metres, 0 where invalid.
        valid_depth: ``(V, 1, S, S)`` bool, true where the depth is valid.
        intrinsics: ``(V, 3, 3)`` float64 intrinsics of the resized views, pixels.
        world_to_camera: ``(V, 4, 4)`` float64 camera poses, metres.
        view_index: ``(V,)`` int64 position of each view in the instance's sorted view list.
        view_names: the ``V`` view names (file stems).
        instance: instance folder name.
        gt_label: scalar bool, true for an anomalous instance.
        gt_volume: ground-truth voxel grid, or ``None`` (training instances).
        image_path: instance folder.
        anomaly_map: ``(V, S, S)`` float32 per-view anomaly maps (model output).
        pred_score: scalar float32 instance score (model output).
        pred_volume: ``(M,)`` float32 voxel scores aligned with ``gt_volume.coords`` (model output).
        pred_mask: ``(V, S, S)`` bool per-view masks (post-processing output).
    """

    def __post_init__(self) -> None:
        """Check that every per-view field has the same number of views."""
        _check_view_counts(self, view_axis=0)

    def to_numpy(self) -> Any:  # noqa: ANN401
        """Reject the conversion: anomalib's numpy dataclasses have no per-view fields."""
        msg = f"{type(self).__name__} has no numpy counterpart; read its torch tensors directly."
        raise NotImplementedError(msg)


# Batch fields kept as Python lists because their items differ in size or type.
_LIST_FIELDS = frozenset({"gt_volume", "pred_volume", "view_names", "instance", "image_path", "depth_path", "mask_path", "explanation"})


def _collate_fields(cls: type, items: Sequence[Any]) -> Any:  # noqa: ANN401
    """Collate dataclass items field by field: lists for ``_LIST_FIELDS``, ``default_collate`` for the rest."""
    if not items:
        msg = f"Cannot collate an empty list into a {cls.__name__}."
        raise ValueError(msg)

    collated: dict[str, Any] = {}
    for field in fields(items[0]):
        values = [getattr(item, field.name) for item in items]
        if all(value is None for value in values):
            continue
        if field.name in _LIST_FIELDS:
            collated[field.name] = values
            continue
        missing = [index for index, value in enumerate(values) if value is None]
        if missing:
            msg = f"Cannot collate field '{field.name}': items {missing} have no value while others do."
            raise ValueError(msg)
        collated[field.name] = default_collate(values)
    return cls(**collated)


def _split_items(batch: Any) -> list[Any]:  # noqa: ANN401
    """Split a batch into items without ``dataclasses.asdict``, which would turn voxel grids into dicts."""
    items = []
    for index in range(batch.batch_size):
        values = {}
        for field in fields(batch):
            value = getattr(batch, field.name)
            if value is not None:
                values[field.name] = value[index]
        items.append(batch.item_class(**values))
    return items


@dataclass
class MultiViewBatch(_MultiViewBatchValidator, _MultiViewBatchFields, DepthBatch):
    """A batch of ``B`` multi-view items with ``V`` views each.

    Tensor fields gain a leading batch axis: ``image`` ``(B, V, 3, S, S)``,
    ``depth_map`` and ``valid_depth`` ``(B, V, 1, S, S)``, ``intrinsics``
    ``(B, V, 3, 3)``, ``world_to_camera`` ``(B, V, 4, 4)``, ``view_index``
    ``(B, V)``, ``gt_label`` and ``pred_score`` ``(B,)``, ``anomaly_map`` and
    ``pred_mask`` ``(B, V, S, S)``. ``instance``, ``view_names``,
    ``gt_volume`` and ``pred_volume`` are lists of length ``B``.
    """

    item_class: ClassVar[type[MultiViewItem]] = MultiViewItem

    def __post_init__(self) -> None:
        """Check that every per-view field has the same number of views."""
        _check_view_counts(self, view_axis=1)

    @classmethod
    def collate(cls, items: list[MultiViewItem]) -> MultiViewBatch:
        """Stack multi-view items into a batch; voxel grids and names stay lists."""
        return _collate_fields(cls, items)

    @property
    def items(self) -> list[MultiViewItem]:
        """The batch split back into :class:`MultiViewItem` objects."""
        return _split_items(self)

    def to_numpy(self) -> Any:  # noqa: ANN401
        """Reject the conversion: anomalib's numpy dataclasses have no per-view fields."""
        msg = f"{type(self).__name__} has no numpy counterpart; read its torch tensors directly."
        raise NotImplementedError(msg)


@dataclass
class ViewItem(_ViewItemFields, DepthItem):
    """One view of one instance for single-view anomalib models (flattened mode).

    Attributes:
        image: ``(3, S, S)`` float32 normalised grayscale repeated to 3 channels.
        depth_map: ``(3, S, S)`` float32 camera-frame xyz map in metres, 0 where invalid.
        valid_depth: ``(1, S, S)`` bool, true where the depth is valid.
        instance: instance folder name.
        view_index: scalar int64 position of the view in the instance's sorted view list.
        gt_label: scalar bool, the label of the instance.
        image_path: the view's image file; ``depth_path``: its depth file.
    """

    @staticmethod
    def validate_valid_depth(valid_depth: torch.Tensor | None) -> torch.Tensor | None:
        if valid_depth is None:
            return None
        valid_depth = _require_tensor(valid_depth, "valid_depth")
        _require_shape(valid_depth, "valid_depth", 3, "(1, H, W)", sizes={0: 1})
        return valid_depth.to(torch.bool)

    @staticmethod
    def validate_instance(instance: str | None) -> str | None:
        return _MultiViewValidator.validate_instance(instance)

    @staticmethod
    def validate_view_index(view_index: torch.Tensor | int | None) -> torch.Tensor | None:
        if view_index is None:
            return None
        view_index = torch.as_tensor(view_index)
        _require_shape(view_index, "view_index", 0, "()")
        return view_index.to(torch.int64)

    def to_numpy(self) -> Any:  # noqa: ANN401
        """Reject the conversion: anomalib's numpy dataclasses have no per-view fields."""
        msg = f"{type(self).__name__} has no numpy counterpart; read its torch tensors directly."
        raise NotImplementedError(msg)


@dataclass
class ViewBatch(_ViewBatchFields, DepthBatch):
    """A batch of :class:`ViewItem`: ``image`` and ``depth_map`` ``(B, 3, S, S)``, ``valid_depth`` ``(B, 1, S, S)``.

    ``instance`` is a list of ``B`` names and ``view_index`` a ``(B,)`` int64
    tensor. Every other field follows anomalib's :class:`DepthBatch`, so
    single-view models read ``image`` and ``depth_map`` unchanged.
    """

    item_class: ClassVar[type[ViewItem]] = ViewItem

    @staticmethod
    def validate_valid_depth(valid_depth: torch.Tensor | None) -> torch.Tensor | None:
        if valid_depth is None:
            return None
        valid_depth = _require_tensor(valid_depth, "valid_depth")
        _require_shape(valid_depth, "valid_depth", 4, "(B, 1, H, W)", sizes={1: 1})
        return valid_depth.to(torch.bool)

    @staticmethod
    def validate_instance(instance: Sequence[str] | None) -> list[str] | None:
        return _MultiViewBatchValidator.validate_instance(instance)

    @staticmethod
    def validate_view_index(view_index: torch.Tensor | None) -> torch.Tensor | None:
        if view_index is None:
            return None
        view_index = torch.as_tensor(view_index)
        _require_shape(view_index, "view_index", 1, "(B,)")
        return view_index.to(torch.int64)

    @classmethod
    def collate(cls, items: list[ViewItem]) -> ViewBatch:
        """Stack single-view items into a batch; names and paths stay lists."""
        return _collate_fields(cls, items)

    @property
    def items(self) -> list[ViewItem]:
        """The batch split back into :class:`ViewItem` objects."""
        return _split_items(self)

    def to_numpy(self) -> Any:  # noqa: ANN401
        """Reject the conversion: anomalib's numpy dataclasses have no per-view fields."""
        msg = f"{type(self).__name__} has no numpy counterpart; read its torch tensors directly."
        raise NotImplementedError(msg)


__all__ = ["MultiViewBatch", "MultiViewItem", "ViewBatch", "ViewItem"]
