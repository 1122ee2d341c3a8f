"""Import of posed RGB-D sequences (7-Scenes file naming) into the SiM3D layout.

A sequence folder contains ``frame-XXXXXX.color.jpg`` (or ``.png``),
``frame-XXXXXX.depth.png`` (16-bit, millimetres by default) and
``frame-XXXXXX.pose.txt`` (camera-to-world 4x4) per frame, and one 3x3
``camera-intrinsics.txt``. The import picks ``views`` view slots spread along
the trajectory; instance j takes, for every slot, the frame ``offset_j``
frames away from the slot's centre, so view k of every instance comes from
nearly the same camera pose.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from sim3d_datamodule import geometry
from sim3d_datamodule.io import CameraView, write_ground_truth
from sim3d_datamodule.synthesis.defects import DEFECT_KINDS, sample_defect
from sim3d_datamodule.synthesis.demo import ground_truth_from_views, write_instance
from sim3d_datamodule.synthesis.preview import write_preview
from sim3d_datamodule.synthesis.rig import view_name
from sim3d_datamodule.synthesis.view_defects import apply_defects_to_views, surface_samples

FRAME_PATTERN = re.compile(r"^frame-(\d+)\.pose\.txt$")
# Kinds that make sense on a real capture; mesh holes become deep pits here.
RGBD_DEFECT_KINDS: tuple[str, ...] = ("bump", "dent", "stain", "crack", "scratch", "chip", "hole")


@dataclass
class Frame:
    """One posed RGB-D frame: index, file paths and ``(4, 4)`` camera-to-world pose in metres."""

    index: int
    color: Path
    depth: Path
    camera_to_world: np.ndarray


def read_matrix(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Read a whitespace-separated matrix of ``shape`` from a text file, naming the file on failure."""
    try:
        matrix = np.loadtxt(path, dtype=np.float64)
    except (OSError, ValueError) as error:
        msg = f"Cannot read a {shape[0]}x{shape[1]} matrix from {path}: {error}"
        raise ValueError(msg) from error
    if matrix.shape != shape or not np.isfinite(matrix).all():
        msg = f"{path} must hold a finite {shape[0]}x{shape[1]} matrix; got shape {matrix.shape}."
        raise ValueError(msg)
    return matrix


def read_sequence(source: Path, intrinsics_file: Path | None = None) -> tuple[np.ndarray, list[Frame]]:
    """Return the intrinsics ``(3, 3)`` and the frames, sorted by index, of a sequence folder."""
    source = Path(source)
    if not source.is_dir():
        msg = f"RGB-D sequence folder not found: {source}."
        raise FileNotFoundError(msg)
    intrinsics_file = intrinsics_file or source / "camera-intrinsics.txt"
    if not intrinsics_file.is_file():
        msg = f"Intrinsics file not found: {intrinsics_file}; pass --intrinsics with a 3x3 K matrix file."
        raise FileNotFoundError(msg)
    intrinsics = read_matrix(intrinsics_file, (3, 3))
    frames = []
    for pose_path in sorted(source.iterdir()):
        match = FRAME_PATTERN.match(pose_path.name)
        if match is None:
            continue
        stem = f"frame-{match.group(1)}"
        color = next((source / f"{stem}.color{suffix}" for suffix in (".jpg", ".png") if (source / f"{stem}.color{suffix}").is_file()), None)
        depth = source / f"{stem}.depth.png"
        if color is None or not depth.is_file():
            msg = f"Frame {stem} in {source} has a pose but no {stem}.color.jpg/.png or {stem}.depth.png."
            raise FileNotFoundError(msg)
        frames.append(Frame(int(match.group(1)), color, depth, read_matrix(pose_path, (4, 4))))
    if not frames:
        msg = f"No frame-XXXXXX.pose.txt found in {source}."
        raise FileNotFoundError(msg)
    return intrinsics, sorted(frames, key=lambda frame: frame.index)


def instance_offsets(nominal: int, anomalous: int, stride: int) -> tuple[list[int], list[int]]:
    """Return the frame offsets of the nominal and anomalous test instances from the training frames.

    Pair p (1-based) gets offsets ``-p * stride`` and ``+p * stride``, the
    signs swapping from pair to pair, so that the camera drift they cause is
    spread evenly over both labels.
    """
    nominal_offsets, anomalous_offsets = [], []
    step = 1
    while len(nominal_offsets) < nominal or len(anomalous_offsets) < anomalous:
        sign = -1 if step % 2 else 1
        if len(nominal_offsets) < nominal:
            nominal_offsets.append(sign * step * stride)
        if len(anomalous_offsets) < anomalous:
            anomalous_offsets.append(-sign * step * stride)
        step += 1
    return nominal_offsets, anomalous_offsets


def choose_view_slots(num_frames: int, views: int, max_offset: int) -> np.ndarray:
    """Return ``views`` centre frame positions spread evenly, ``max_offset`` clear of both ends."""
    if views < 1 or num_frames - 2 * max_offset < views:
        msg = (
            f"Cannot place {views} view slots in {num_frames} frames with offsets up to {max_offset}; "
            "use fewer views or instances, or a smaller --frame-stride."
        )
        raise ValueError(msg)
    return np.rint(np.linspace(max_offset, num_frames - 1 - max_offset, views)).astype(int)


def _downsample_depth(depth: np.ndarray, factor: int) -> np.ndarray:
    """Reduce depth ``(H, W)`` by an integer ``factor`` with the median of each block's valid values.

    A block with fewer than half its pixels valid becomes invalid (NaN).
    """
    if factor == 1:
        return depth
    height, width = depth.shape[0] // factor, depth.shape[1] // factor
    blocks = depth[: height * factor, : width * factor].reshape(height, factor, width, factor).transpose(0, 2, 1, 3).reshape(height, width, -1)
    enough = np.isfinite(blocks).sum(axis=-1) * 2 >= factor * factor
    with warnings.catch_warnings():
        # All-NaN blocks warn in nanmedian; they are marked invalid just below.
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(blocks, axis=-1)
    median[~enough] = np.nan
    return median


def load_frame(frame: Frame, factor: int, depth_scale: float, max_depth: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Return gray ``(H, W)`` in [0, 1] and depth ``(H, W)`` in metres (inf where invalid), reduced by ``factor``."""
    color = cv2.imread(str(frame.color), cv2.IMREAD_COLOR)
    raw = cv2.imread(str(frame.depth), cv2.IMREAD_UNCHANGED)
    if color is None or raw is None:
        msg = f"Cannot read {frame.color if color is None else frame.depth}."
        raise ValueError(msg)
    if raw.dtype != np.uint16 or raw.ndim != 2:
        msg = f"{frame.depth} must be a single-channel 16-bit PNG; got {raw.dtype} with shape {raw.shape}."
        raise ValueError(msg)
    if color.shape[:2] != raw.shape:
        msg = f"{frame.color} is {color.shape[1]}x{color.shape[0]} but {frame.depth} is {raw.shape[1]}x{raw.shape[0]}; colour and depth must be registered."
        raise ValueError(msg)
    depth = raw.astype(np.float64) * depth_scale
    # 0 and 65535 mark missing depth in 7-Scenes and TUM depth images.
    invalid = (raw == 0) | (raw == np.iinfo(np.uint16).max)
    if max_depth is not None:
        invalid |= depth > max_depth
    depth[invalid] = np.nan
    depth = _downsample_depth(depth, factor)
    gray = cv2.cvtColor(color, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
    if factor > 1:
        gray = cv2.resize(gray, (depth.shape[1], depth.shape[0]), interpolation=cv2.INTER_AREA)
    depth[~np.isfinite(depth)] = np.inf
    return gray, depth.astype(np.float32)


def import_rgbd(
    source: Path,
    root: Path,
    category: str,
    views: int = 8,
    nominal: int = 4,
    anomalous: int = 4,
    frame_stride: int = 3,
    downsample: int = 2,
    depth_scale: float = 0.001,
    max_depth: float | None = None,
    voxel_size: float = 0.02,
    kinds: Sequence[str] = ("bump", "dent", "stain"),
    defect_radius: float = 0.08,
    severity: float = 1.0,
    seed: int = 0,
    intrinsics_file: Path | None = None,
    progress: bool = True,
) -> Path:
    """Convert a posed RGB-D sequence into a category under ``root/category``.

    Writes ``<category>_real`` from the slot-centre frames, ``nominal``
    ``<category>_good_XX`` and ``anomalous`` ``<category>_bad_XX`` instances
    from frames ``frame_stride`` apart (see :func:`instance_offsets`). Every
    anomalous instance gets one defect of each of ``kinds`` in turn, radius
    about ``defect_radius`` metres, defined in 3-D and applied to all its views.
    Test instances get ground truth at ``voxel_size`` metres. Images are
    reduced by the integer factor ``downsample``; depth is stored in metres
    (raw value times ``depth_scale``), ``inf`` where missing or beyond
    ``max_depth``. A contact sheet with the defects outlined goes to
    ``root/<category>_preview.png``.

    Returns:
        The category folder.
    """
    unknown = sorted(set(kinds) - set(DEFECT_KINDS))
    if unknown:
        msg = f"Unknown defect kinds {unknown}; choose from {DEFECT_KINDS}."
        raise ValueError(msg)
    if anomalous and not kinds:
        msg = "Anomalous instances need at least one defect kind."
        raise ValueError(msg)
    if downsample < 1:
        msg = f"downsample must be a positive integer; got {downsample}."
        raise ValueError(msg)
    intrinsics, frames = read_sequence(source, intrinsics_file)
    nominal_offsets, anomalous_offsets = instance_offsets(nominal, anomalous, frame_stride)
    max_offset = max((abs(offset) for offset in nominal_offsets + anomalous_offsets), default=0)
    slots = choose_view_slots(len(frames), views, max_offset)

    instances = [(f"{category}_real", 0, False)]
    instances += [(f"{category}_good_{index + 1:02d}", offset, False) for index, offset in enumerate(nominal_offsets)]
    instances += [(f"{category}_bad_{index + 1:02d}", offset, True) for index, offset in enumerate(anomalous_offsets)]
    scaled = geometry.scale_intrinsics(torch.from_numpy(intrinsics), 1.0 / downsample, 1.0 / downsample).numpy()
    folder = Path(root) / category
    bad_index = 0
    preview_rows = []
    for index, (instance, offset, is_bad) in enumerate(tqdm(instances, desc=f"import {category}", unit="instance", disable=not progress)):
        chosen = [frames[slot + offset] for slot in slots]
        loaded = [load_frame(frame, downsample, depth_scale, max_depth) for frame in chosen]
        grays = np.stack([gray for gray, _ in loaded])
        depths = np.stack([depth for _, depth in loaded])
        height, width = depths.shape[1:]
        cameras = [
            CameraView(view_name(view), torch.from_numpy(scaled.copy()), torch.from_numpy(np.linalg.inv(frame.camera_to_world)), width, height)
            for view, frame in enumerate(chosen)
        ]
        labels = None
        if is_bad:
            rng = np.random.default_rng([seed, index])
            stacked_k = np.stack([camera.K.numpy() for camera in cameras])
            stacked_pose = np.stack([camera.world_to_camera.numpy() for camera in cameras])
            points, normals = surface_samples(depths, stacked_k, stacked_pose, 20000, rng)
            kind = kinds[bad_index % len(kinds)]
            defect = sample_defect(kind, points, normals, 1.0, rng, defect_radius, severity)
            depths, grays, labels = apply_defects_to_views(depths, grays, stacked_k, stacked_pose, [defect])
            bad_index += 1
        write_instance(folder / instance, cameras, list(grays), list(depths))
        if index > 0:
            # The world origin anchors one voxel lattice shared by every instance of the category.
            grid = ground_truth_from_views(list(depths), None if labels is None else list(labels), cameras, voxel_size, origin=np.zeros(3))
            write_ground_truth(folder / instance / "gt" / "anomaly_volume.npz", grid)
        preview_rows.append((instance, grays, labels))
    write_preview(Path(root) / f"{category}_preview.png", preview_rows)
    return folder
