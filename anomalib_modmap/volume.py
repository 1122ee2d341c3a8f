"""Anomaly volumes: per-view anomaly maps fused onto the voxels of an instance, and their export.

Every valid pixel of every view is back-projected through its depth and
calibration (``sim3d_datamodule.geometry``) into the world frame. A listed
voxel of the instance's ``VoxelGrid`` takes the maximum score of the pixels
that land in it. Pixels with invalid depth, background pixels (marked invalid
by the data layer) and pixels that land in unlisted voxels contribute nothing.

Export writes, for one instance, the volume as ``.npz`` (the ground-truth keys
plus ``scores``), a coloured point cloud ``.ply`` of the voxel centres and one
heatmap overlay PNG per view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from anomalib_modmap.heatmaps import DEFAULT_COLORMAP, as_view_maps, colorize_scores, save_view_overlays, score_limits
from sim3d_datamodule.geometry import VoxelGrid, depth_to_world_points, points_to_voxels, voxel_keys


class VoxelLookup:
    """Map world points to the index of the listed voxel they fall in.

    The listed voxels of ``grid`` are packed into int64 keys
    (``geometry.voxel_keys``) and sorted once. :meth:`find` then maps
    ``(N, 3)`` world points (metres) to ``(N,)`` int64 indices into
    ``grid.coords``, or -1 for a point outside every listed voxel.

    Args:
        grid: the instance's voxel grid; its ``coords`` must not repeat a voxel.
        device: where the key table lives; defaults to the device of ``grid.coords``.

    Raises:
        ValueError: if ``grid.coords`` is not ``(M, 3)`` or lists a voxel twice.
    """

    def __init__(self, grid: VoxelGrid, device: torch.device | str | None = None) -> None:
        device = torch.device(device) if device is not None else grid.coords.device
        coords = grid.coords.to(device=device, dtype=torch.int64)
        if coords.ndim != 2 or coords.shape[1] != 3:
            msg = f"VoxelGrid.coords must have shape (M, 3); got {tuple(coords.shape)}."
            raise ValueError(msg)

        self.origin = grid.origin.to(device=device, dtype=torch.float64)
        self.voxel_size = float(grid.voxel_size)
        self.num_voxels = int(coords.shape[0])
        self.device = device

        keys = voxel_keys(coords)
        self.sorted_keys, self.order = torch.sort(keys)
        if self.num_voxels > 1:
            repeats = int((self.sorted_keys[1:] == self.sorted_keys[:-1]).sum())
            if repeats:
                msg = (
                    f"VoxelGrid.coords lists {repeats} voxel(s) more than once; every surface voxel "
                    "must appear once (deduplicate the ground truth, e.g. with numpy.unique(coords, axis=0))."
                )
                raise ValueError(msg)

        if self.num_voxels:
            self.lower = coords.min(dim=0).values
            self.upper = coords.max(dim=0).values
        else:
            self.lower = self.upper = torch.zeros(3, dtype=torch.int64, device=device)

    def find(self, points: torch.Tensor) -> torch.Tensor:
        """Return the listed-voxel index ``(N,)`` of each world point ``(N, 3)``, -1 where none.

        Points must be finite; mask invalid depth before calling.
        """
        result = torch.full((points.shape[0],), -1, dtype=torch.int64, device=points.device)
        if self.num_voxels == 0 or points.shape[0] == 0:
            return result

        indices = points_to_voxels(points, self.origin.to(points.device), self.voxel_size)
        # Points outside the bounding box of the listed voxels cannot hit one. Dropping them
        # first also keeps far-away points clear of the key range of geometry.voxel_keys.
        lower = self.lower.to(points.device)
        upper = self.upper.to(points.device)
        inside = ((indices >= lower) & (indices <= upper)).all(dim=-1)
        candidates = inside.nonzero().squeeze(-1)
        if candidates.numel() == 0:
            return result

        # Sorted queries make the binary searches walk the key table in order, which is
        # several times faster on CPU than searching in pixel order.
        keys, query_order = torch.sort(voxel_keys(indices[candidates]))
        candidates = candidates[query_order]
        sorted_keys = self.sorted_keys.to(points.device)
        position = torch.searchsorted(sorted_keys, keys).clamp_max(self.num_voxels - 1)
        hit = sorted_keys[position] == keys
        result[candidates[hit]] = self.order.to(points.device)[position[hit]]
        return result


def _validate_views(
    anomaly_maps: torch.Tensor,
    depth: torch.Tensor,
    valid: torch.Tensor,
    intrinsics: torch.Tensor,
    world_to_camera: torch.Tensor,
) -> None:
    """Raise ``ValueError`` naming the argument whose shape disagrees with the anomaly maps."""
    num_views = anomaly_maps.shape[0]
    if depth.shape != anomaly_maps.shape:
        msg = (
            f"depth has shape {tuple(depth.shape)} but anomaly_maps has {tuple(anomaly_maps.shape)}; "
            "resize the anomaly maps to the depth resolution before fusing."
        )
        raise ValueError(msg)
    if valid.shape != anomaly_maps.shape:
        msg = f"valid has shape {tuple(valid.shape)} but anomaly_maps has {tuple(anomaly_maps.shape)}."
        raise ValueError(msg)
    if tuple(intrinsics.shape) != (num_views, 3, 3):
        msg = f"intrinsics must have shape ({num_views}, 3, 3) for {num_views} views; got {tuple(intrinsics.shape)}."
        raise ValueError(msg)
    if tuple(world_to_camera.shape) != (num_views, 4, 4):
        msg = (
            f"world_to_camera must have shape ({num_views}, 4, 4) for {num_views} views; "
            f"got {tuple(world_to_camera.shape)}."
        )
        raise ValueError(msg)
    if torch.isnan(anomaly_maps).any():
        msg = "anomaly_maps contains NaN; every pixel score must be a number (mark pixels to skip in valid)."
        raise ValueError(msg)


def fuse_anomaly_volume(
    anomaly_maps: torch.Tensor,
    depth: torch.Tensor,
    valid: torch.Tensor,
    intrinsics: torch.Tensor,
    world_to_camera: torch.Tensor,
    grid: VoxelGrid,
    fill_value: float | None = None,
    compute_dtype: torch.dtype = torch.float64,
    progress: bool = False,
) -> torch.Tensor:
    """Fuse per-view anomaly maps into one score per listed voxel, by maximum.

    Views are processed one at a time, so peak memory is set by one view
    (``H * W`` points) and the ``M`` voxel scores, whatever the number of views.
    Runs on the device of ``anomaly_maps`` (CPU or GPU); the other inputs are
    moved there.

    Args:
        anomaly_maps: ``(V, H, W)`` pixel scores, any real range; ``(V, 1, H, W)`` is accepted too.
        depth: ``(V, H, W)`` camera-frame z in metres; non-finite or non-positive values are invalid.
        valid: ``(V, H, W)`` bool, false for invalid depth and background pixels.
        intrinsics: ``(V, 3, 3)`` pinhole matrices for the ``H x W`` images.
        world_to_camera: ``(V, 4, 4)`` camera poses.
        grid: the instance's listed voxels (``coords`` ``(M, 3)``, ``origin``, ``voxel_size``).
        fill_value: score of a listed voxel that no pixel reaches. ``None`` (default)
            uses the minimum score among the pixels that landed in a listed voxel,
            so an unreached voxel never outranks a reached one. It is 0 when no
            pixel landed in a listed voxel.
        compute_dtype: floating dtype of the back-projection; float64 (default)
            keeps points near voxel faces in the right voxel.
        progress: show a tqdm progress bar over the views.

    Returns:
        ``(M,)`` voxel scores in the dtype of ``anomaly_maps`` (float32 for integer maps),
        aligned with ``grid.coords``.

    Raises:
        ValueError: on mismatched shapes, NaN scores or a grid that lists a voxel twice.
    """
    anomaly_maps = as_view_maps(anomaly_maps, "anomaly_maps")
    depth = as_view_maps(depth, "depth")
    valid = as_view_maps(valid, "valid")
    _validate_views(anomaly_maps, depth, valid, intrinsics, world_to_camera)

    device = anomaly_maps.device
    score_dtype = anomaly_maps.dtype if anomaly_maps.is_floating_point() else torch.float32
    lookup = VoxelLookup(grid, device=device)
    scores = torch.full((lookup.num_voxels,), float("-inf"), dtype=score_dtype, device=device)
    lowest_fused = torch.tensor(float("inf"), dtype=score_dtype, device=device)
    num_fused = 0

    views = range(anomaly_maps.shape[0])
    for view in tqdm(views, desc="Fusing views", unit="view", disable=not progress):
        view_depth = depth[view].to(device=device, dtype=compute_dtype)
        usable = valid[view].to(device=device, dtype=torch.bool) & torch.isfinite(view_depth) & (view_depth > 0)
        view_depth = torch.where(usable, view_depth, torch.zeros_like(view_depth))

        points = depth_to_world_points(
            view_depth,
            intrinsics[view].to(device=device, dtype=compute_dtype),
            world_to_camera[view].to(device=device, dtype=compute_dtype),
        )
        pixels = usable.reshape(-1).nonzero().squeeze(-1)
        targets = lookup.find(points.reshape(-1, 3)[pixels])
        landed = targets >= 0

        pixel_scores = anomaly_maps[view].reshape(-1)[pixels[landed]].to(score_dtype)
        if pixel_scores.numel():
            scores.scatter_reduce_(0, targets[landed], pixel_scores, reduce="amax", include_self=True)
            lowest_fused = torch.minimum(lowest_fused, pixel_scores.min())
            num_fused += pixel_scores.numel()

    if fill_value is None:
        fill_value = float(lowest_fused) if num_fused else 0.0
    # Only unreached voxels are still at the -inf start value, unless a pixel scored -inf itself:
    # such a voxel ends at the fill value too, which is at least as low.
    scores[scores == float("-inf")] = fill_value
    return scores


@dataclass
class AnomalyVolume:
    """Voxel anomaly volume of one instance.

    Attributes:
        grid: the instance's voxel grid (``coords`` ``(M, 3)``, ``origin`` ``(3,)`` metres,
            ``voxel_size`` metres, ``anomalous`` ``(M,)`` bool or ``None``).
        scores: ``(M,)`` float anomaly score per voxel, aligned with ``grid.coords``.
        instance: name of the instance, used in messages and file names; optional.
    """

    grid: VoxelGrid
    scores: torch.Tensor
    instance: str | None = None

    def __post_init__(self) -> None:
        if self.scores.ndim != 1 or self.scores.shape[0] != self.grid.num_voxels:
            msg = (
                f"scores of instance {self.instance or '<unnamed>'} must have shape ({self.grid.num_voxels},) "
                f"to match the grid's voxels; got {tuple(self.scores.shape)}."
            )
            raise ValueError(msg)

    @classmethod
    def from_views(
        cls,
        anomaly_maps: torch.Tensor,
        depth: torch.Tensor,
        valid: torch.Tensor,
        intrinsics: torch.Tensor,
        world_to_camera: torch.Tensor,
        grid: VoxelGrid,
        instance: str | None = None,
        **fuse_kwargs: object,
    ) -> AnomalyVolume:
        """Fuse per-view anomaly maps with :func:`fuse_anomaly_volume` and wrap the result."""
        scores = fuse_anomaly_volume(anomaly_maps, depth, valid, intrinsics, world_to_camera, grid, **fuse_kwargs)
        return cls(grid=grid, scores=scores, instance=instance)

    def voxel_centres(self) -> torch.Tensor:
        """Return the world positions ``(M, 3)`` float64 of the voxel centres, metres."""
        origin = self.grid.origin.detach().cpu().to(torch.float64)
        coords = self.grid.coords.detach().cpu().to(torch.float64)
        return origin + (coords + 0.5) * float(self.grid.voxel_size)

    def save_npz(self, path: str | Path) -> Path:
        """Write the volume as ``.npz`` with the ground-truth keys plus ``scores``.

        Keys: ``origin`` float64 (3,), ``voxel_size`` float64 (), ``coords`` int32 (M, 3),
        ``anomalous`` bool (M,) (left out when the grid has no ground truth) and
        ``scores`` (M,) in the dtype of :attr:`scores`.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        coords = self.grid.coords.detach().cpu()
        if coords.numel() and (coords.abs().max() > np.iinfo(np.int32).max):
            msg = f"voxel indices of instance {self.instance or '<unnamed>'} exceed int32; they cannot be stored."
            raise ValueError(msg)

        arrays = {
            "origin": self.grid.origin.detach().cpu().numpy().astype(np.float64),
            "voxel_size": np.asarray(self.grid.voxel_size, dtype=np.float64),
            "coords": coords.numpy().astype(np.int32),
        }
        if self.grid.anomalous is not None:
            arrays["anomalous"] = self.grid.anomalous.detach().cpu().numpy().astype(bool)
        arrays["scores"] = self.scores.detach().cpu().numpy()
        np.savez_compressed(path, **arrays)
        return path

    @classmethod
    def load_npz(cls, path: str | Path, instance: str | None = None) -> AnomalyVolume:
        """Read a volume written by :meth:`save_npz`; raise ``ValueError`` naming a missing key."""
        path = Path(path)
        with np.load(path) as data:
            missing = [key for key in ("origin", "voxel_size", "coords", "scores") if key not in data]
            if missing:
                msg = f"{path} is not an anomaly volume: missing key(s) {missing}."
                raise ValueError(msg)
            anomalous = torch.from_numpy(data["anomalous"].astype(bool)) if "anomalous" in data else None
            grid = VoxelGrid(
                origin=torch.from_numpy(data["origin"].astype(np.float64)),
                voxel_size=float(data["voxel_size"]),
                coords=torch.from_numpy(data["coords"].astype(np.int64)),
                anomalous=anomalous,
            )
            scores = torch.from_numpy(data["scores"].copy())
        return cls(grid=grid, scores=scores, instance=instance)

    def save_ply(
        self,
        path: str | Path,
        score_range: tuple[float, float] | None = None,
        colormap: str = DEFAULT_COLORMAP,
    ) -> Path:
        """Write the voxel centres as a coloured point cloud ``.ply`` with open3d.

        Colours (8-bit RGB) come from the matplotlib ``colormap`` (default ``"jet"``,
        blue = low, red = high) over ``score_range``; the default range is the
        minimum and maximum of :attr:`scores`. Scores outside the range are clipped.
        Each point also carries its raw score as the float32 vertex property ``scores``.
        """
        import open3d as o3d  # noqa: PLC0415 - open3d is slow to import; only exports need it.

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        scores = self.scores.detach().cpu().to(torch.float64).numpy()
        colours = colorize_scores(scores, score_range=score_range, colormap=colormap)

        cloud = o3d.t.geometry.PointCloud()
        cloud.point.positions = o3d.core.Tensor(self.voxel_centres().numpy())
        cloud.point.colors = o3d.core.Tensor(colours)
        cloud.point.scores = o3d.core.Tensor(scores.astype(np.float32).reshape(-1, 1))
        if not o3d.t.io.write_point_cloud(str(path), cloud):
            msg = f"open3d failed to write the point cloud {path}; check that the folder is writable."
            raise OSError(msg)
        return path


def export_anomaly_volume(
    folder: str | Path,
    volume: AnomalyVolume,
    images: torch.Tensor | None = None,
    anomaly_maps: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    view_names: Sequence[str | int] | None = None,
    score_range: tuple[float, float] | None = None,
    colormap: str = DEFAULT_COLORMAP,
) -> dict[str, Path | list[Path]]:
    """Write one instance's results into ``folder``: volume ``.npz``, point cloud ``.ply``, view overlays.

    Files: ``anomaly_volume.npz`` (:meth:`AnomalyVolume.save_npz`),
    ``anomaly_volume.ply`` (:meth:`AnomalyVolume.save_ply`) and
    ``overlays/<view>.png`` (:func:`save_view_overlays`, written only when
    ``images`` and ``anomaly_maps`` are given). Point cloud and overlays share
    one colour scale: ``score_range`` if given, else the minimum and maximum of
    the anomaly maps over the valid pixels (of the voxel scores without maps).
    A typical folder is ``<results>/volumes/<instance>/``.

    Returns:
        Paths by kind: ``"npz"``, ``"ply"`` and ``"overlays"`` (a list, empty without maps).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    has_views = images is not None and anomaly_maps is not None
    if score_range is None:
        if has_views:
            mask = None if valid is None else as_view_maps(valid, "valid")
            score_range = score_limits(as_view_maps(anomaly_maps, "anomaly_maps"), mask)
        else:
            score_range = score_limits(volume.scores)

    written: dict[str, Path | list[Path]] = {
        "npz": volume.save_npz(folder / "anomaly_volume.npz"),
        "ply": volume.save_ply(folder / "anomaly_volume.ply", score_range=score_range, colormap=colormap),
        "overlays": [],
    }
    if has_views:
        written["overlays"] = save_view_overlays(
            folder / "overlays",
            images,
            anomaly_maps,
            valid=valid,
            view_names=view_names,
            score_range=score_range,
            colormap=colormap,
        )
    return written


def fuse_batch_volumes(batch: object, progress: bool = False) -> list[torch.Tensor | None]:
    """Fuse the anomaly volume of every instance of a multi-view batch.

    Reads ``anomaly_map`` ``(B, V, H, W)``, ``depth_map`` and ``valid_depth``
    ``(B, V, 1, H, W)``, ``intrinsics`` ``(B, V, 3, 3)``, ``world_to_camera``
    ``(B, V, 4, 4)`` and ``gt_volume`` (list of ``B`` grids) from ``batch``.

    Returns:
        One ``(M_i,)`` score tensor per instance, ``None`` where the instance has
        no voxel grid; assign it to ``batch.pred_volume``.
    """
    missing = [name for name in ("anomaly_map", "depth_map", "valid_depth", "intrinsics", "world_to_camera", "gt_volume") if getattr(batch, name, None) is None]
    if missing:
        msg = f"Cannot fuse anomaly volumes: the batch has no {', '.join(missing)}. Test batches need calibrated views and voxel grids."
        raise ValueError(msg)

    volumes: list[torch.Tensor | None] = []
    for index, grid in enumerate(batch.gt_volume):
        if grid is None:
            volumes.append(None)
            continue
        volumes.append(
            fuse_anomaly_volume(
                batch.anomaly_map[index],
                batch.depth_map[index],
                batch.valid_depth[index],
                batch.intrinsics[index],
                batch.world_to_camera[index],
                grid,
                progress=progress,
            )
        )
    return volumes


def export_batch_volumes(results_dir: str | Path, batch: object, colormap: str = DEFAULT_COLORMAP) -> list[dict[str, Path | list[Path]]]:
    """Export every instance of a multi-view batch that has a fused volume to ``<results_dir>/volumes/<instance>/``.

    Reads ``pred_volume``, ``gt_volume`` and ``instance`` (names) from ``batch``,
    plus ``image``, ``anomaly_map``, ``valid_depth`` and ``view_names`` for the
    overlays when present. Instances whose ``pred_volume`` is ``None`` are skipped.

    Returns:
        The paths written, one :func:`export_anomaly_volume` result per exported instance.
    """
    if getattr(batch, "pred_volume", None) is None or getattr(batch, "gt_volume", None) is None:
        msg = "Cannot export anomaly volumes: the batch has no pred_volume or gt_volume; fuse the volumes first."
        raise ValueError(msg)

    names = getattr(batch, "instance", None) or [f"instance_{index:03d}" for index in range(len(batch.pred_volume))]
    images = getattr(batch, "image", None)
    maps = getattr(batch, "anomaly_map", None)
    valid = getattr(batch, "valid_depth", None)
    view_names = getattr(batch, "view_names", None)

    written = []
    for index, (scores, grid) in enumerate(zip(batch.pred_volume, batch.gt_volume, strict=True)):
        if scores is None or grid is None:
            continue
        volume = AnomalyVolume(grid=grid, scores=scores, instance=str(names[index]))
        written.append(
            export_anomaly_volume(
                Path(results_dir) / "volumes" / str(names[index]),
                volume,
                images=None if images is None else images[index],
                anomaly_maps=None if maps is None else maps[index],
                valid=None if valid is None else valid[index],
                view_names=None if view_names is None else view_names[index],
                colormap=colormap,
            )
        )
    return written
