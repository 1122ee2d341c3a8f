"""Readers and writers for the files of a SiM3D-layout folder, with validation.

Every reader checks what it loads and raises :class:`SiM3DFormatError` naming
the file, what is wrong and what to do about it. The writers produce files that
the readers accept, so tools that convert or synthesise data can use them.

File kinds:

- grayscale images (8- or 16-bit PNG; RGB and RGBA files are converted to gray);
- depth maps as ``.npy`` (real captures) or OpenEXR (renders: the depth sits in
  one channel and the maximum value of the map marks background);
- ``cameras.json``: intrinsics and ``world_to_camera`` pose per view;
- ``gt/anomaly_volume.npz``: the ground-truth voxel grid of one instance.

Depth maps are returned in metres with every invalid pixel (inf, NaN, zero,
negative, EXR background) set to 0, together with the boolean valid mask.

NOTE: the opencv-python wheels of OpenCV 5.1 ship without OpenEXR support, so
EXR files go through the ``OpenEXR`` bindings of the Academy Software
Foundation instead of ``cv2``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sim3d_datamodule.geometry import VoxelGrid, voxel_keys

logger = logging.getLogger(__name__)

# Set before cv2 is imported so that builds that do have an EXR codec allow it.
os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
import cv2  # noqa: E402

PathLike = str | os.PathLike

# Background value written into EXR depth maps: larger than any real depth, so
# it is the maximum of the map and is read back as background.
EXR_BACKGROUND = 1.0e10

# Absolute tolerance for the checks that a rotation is orthonormal and that the
# last row of a pose is (0, 0, 0, 1).
_POSE_TOLERANCE = 1.0e-3


class SiM3DFormatError(ValueError):
    """Invalid or missing file in a SiM3D-layout folder; the message names the file and the fix."""


def _fail(path: PathLike, problem: str, fix: str) -> SiM3DFormatError:
    return SiM3DFormatError(f"{path}: {problem}. {fix}")


def _numpy_load_problem(error: Exception) -> str:
    """Describe a ``numpy.load`` failure without numpy's advice to enable ``allow_pickle``, which would run untrusted code."""
    if "pickle" in str(error):
        return "not a numeric NumPy array: the file is not in .npy/.npz format or stores Python objects"
    return str(error)


def _as_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _require_file(path: Path, what: str, fix: str) -> None:
    if not path.is_file():
        raise _fail(path, f"{what} not found", fix)


# --------------------------------------------------------------------------- images


def read_gray_png(path: PathLike) -> torch.Tensor:
    """Read a grayscale image as a float32 tensor ``(H, W)`` holding the stored values.

    8-bit files give values in [0, 255] and 16-bit files in [0, 65535]; the
    caller scales by the maximum. RGB and RGBA files are converted to gray with
    OpenCV's luma weights, and the alpha channel is dropped.
    """
    path = Path(path)
    _require_file(path, "image file", "Check the view's rgb/RGB folder and the file name '<view>_2.png'")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise _fail(path, "image is unreadable or truncated", "Re-export the image as an 8- or 16-bit PNG")
    if image.dtype not in (np.uint8, np.uint16):
        raise _fail(path, f"image has pixel type {image.dtype}", "Store images as 8- or 16-bit PNG")

    if image.ndim == 3:
        if image.shape[2] == 1:
            image = image[..., 0]
        elif image.shape[2] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
        else:
            raise _fail(path, f"image has {image.shape[2]} channels", "Store images as gray, RGB or RGBA PNG")
    return torch.from_numpy(image.astype(np.float32))


def write_gray_png(path: PathLike, image: np.ndarray | torch.Tensor, bit_depth: int = 8) -> Path:
    """Write a grayscale image ``(H, W)`` as PNG and return its path.

    uint8 and uint16 arrays are written unchanged. Floating-point images must
    lie in [0, 1] and are scaled to ``bit_depth`` (8 or 16) bits.
    """
    path = Path(path)
    array = _as_numpy(image)
    if array.ndim != 2:
        msg = f"write_gray_png expects an (H, W) image for {path}, got shape {array.shape}."
        raise ValueError(msg)

    if array.dtype in (np.uint8, np.uint16):
        encoded = array
    elif np.issubdtype(array.dtype, np.floating):
        if bit_depth not in (8, 16):
            msg = f"bit_depth must be 8 or 16, got {bit_depth}."
            raise ValueError(msg)
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            msg = f"Floating-point image for {path} must be finite and lie in [0, 1]; scale it before writing."
            raise ValueError(msg)
        peak = 255 if bit_depth == 8 else 65535
        encoded = np.rint(array * peak).astype(np.uint8 if bit_depth == 8 else np.uint16)
    else:
        msg = f"Cannot write an image of dtype {array.dtype} to {path}; pass uint8, uint16 or float in [0, 1]."
        raise ValueError(msg)

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), encoded):
        msg = f"OpenCV failed to write {path}."
        raise OSError(msg)
    return path


# --------------------------------------------------------------------------- depth


def _clean_depth(raw: np.ndarray, depth_scale: float, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale stored depth to metres, zero the invalid pixels and reject a map with none valid."""
    depth = raw.astype(np.float64) * depth_scale
    valid = np.isfinite(depth) & (depth > 0.0)
    if not valid.any():
        raise _fail(
            path,
            "depth map has no valid pixel (all are inf, NaN, zero, negative or background)",
            "Re-export the depth map or leave this view out with the 'views' option",
        )
    depth = np.where(valid, depth, 0.0).astype(np.float32)
    return torch.from_numpy(depth), torch.from_numpy(valid)


def read_depth_npy(path: PathLike, depth_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a ``.npy`` depth map; return depth ``(H, W)`` float32 in metres and the valid mask ``(H, W)`` bool.

    Stored values are multiplied by ``depth_scale``. Invalid pixels (inf, NaN,
    zero, negative) are set to 0. A map with no valid pixel raises.
    """
    path = Path(path)
    _require_file(path, "depth file", "Check the view's depth folder and the file name '<view>.npy'")
    try:
        raw = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise _fail(path, f"depth map is unreadable or truncated ({_numpy_load_problem(error)})", "Re-save it with numpy.save") from error

    if raw.ndim == 3 and raw.shape[-1] == 1:
        raw = raw[..., 0]
    if raw.ndim != 2:
        raise _fail(path, f"depth map has shape {raw.shape}, expected (H, W)", "Save one depth value per pixel")
    if not (np.issubdtype(raw.dtype, np.floating) or np.issubdtype(raw.dtype, np.integer)):
        raise _fail(path, f"depth map has dtype {raw.dtype}", "Save depth as a float or integer array")
    return _clean_depth(raw, depth_scale, path)


def write_depth_npy(path: PathLike, depth: np.ndarray | torch.Tensor) -> Path:
    """Write depth ``(H, W)`` as float32 ``.npy``; invalid pixels should hold 0, inf or NaN."""
    path = Path(path)
    array = _as_numpy(depth)
    if array.ndim != 2:
        msg = f"write_depth_npy expects an (H, W) depth map for {path}, got shape {array.shape}."
        raise ValueError(msg)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array.astype(np.float32))
    return path


def _select_exr_channel(channels: dict[str, np.ndarray], path: Path) -> np.ndarray:
    """Pick the depth channel: the only one, else ``Z``, else ``B`` (what OpenCV calls channel 0)."""
    if len(channels) == 1:
        return next(iter(channels.values()))
    for name in ("Z", "B"):
        if name in channels:
            return channels[name]
    raise _fail(
        path,
        f"EXR file has channels {sorted(channels)} and none of them is the depth channel",
        "Store depth in a single channel, in 'Z', or in all of 'R', 'G', 'B'",
    )


def read_depth_exr(path: PathLike, depth_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an OpenEXR depth map; return depth ``(H, W)`` float32 in metres and the valid mask.

    Pixels equal to the maximum value of the map are background, as renderers
    write a far value there. A map without background therefore loses its
    farthest pixels. Inf, NaN, zero and negative values are invalid too.
    """
    import OpenEXR

    path = Path(path)
    _require_file(path, "EXR depth file", "Check the view's DEPTH folder and the file name '<view>_depth.exr'")
    try:
        with OpenEXR.File(str(path), separate_channels=True) as exr:
            channels = {name: np.asarray(channel.pixels) for name, channel in exr.channels().items()}
    except (RuntimeError, ValueError, OSError) as error:
        raise _fail(path, f"EXR file is unreadable or truncated ({error})", "Re-render or re-export it") from error
    if not channels:
        raise _fail(path, "EXR file is unreadable or truncated (no channel data)", "Re-render or re-export it")

    raw = _select_exr_channel(channels, path).astype(np.float64)
    if raw.ndim != 2:
        raise _fail(path, f"EXR depth channel has shape {raw.shape}, expected (H, W)", "Store one depth per pixel")

    finite = np.isfinite(raw)
    if finite.any():
        background = raw == raw[finite].max()
        raw = np.where(background, np.nan, raw)
    return _clean_depth(raw, depth_scale, path)


def write_depth_exr(path: PathLike, depth: np.ndarray | torch.Tensor, background: float = EXR_BACKGROUND) -> Path:
    """Write depth ``(H, W)`` to a single-channel (``Z``) float32 OpenEXR file.

    Invalid pixels (0, negative, inf, NaN) are stored as ``background``, which
    must exceed every valid depth so that readers find it as the maximum.
    """
    import OpenEXR

    path = Path(path)
    array = _as_numpy(depth).astype(np.float32)
    if array.ndim != 2:
        msg = f"write_depth_exr expects an (H, W) depth map for {path}, got shape {array.shape}."
        raise ValueError(msg)
    valid = np.isfinite(array) & (array > 0)
    if valid.any() and array[valid].max() >= background:
        msg = f"Background value {background} for {path} must exceed the largest depth {array[valid].max()}."
        raise ValueError(msg)

    stored = np.ascontiguousarray(np.where(valid, array, np.float32(background)).astype(np.float32))
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    path.parent.mkdir(parents=True, exist_ok=True)
    with OpenEXR.File(header, {"Z": stored}) as exr:
        exr.write(str(path))
    return path


def read_depth(path: PathLike, depth_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a ``.npy`` or ``.exr`` depth map by its suffix; see :func:`read_depth_npy` and :func:`read_depth_exr`."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        return read_depth_npy(path, depth_scale)
    if suffix == ".exr":
        return read_depth_exr(path, depth_scale)
    raise _fail(path, f"unknown depth file type '{suffix}'", "Store depth as .npy or .exr")


# --------------------------------------------------------------------------- cameras


@dataclass
class CameraView:
    """Calibration of one view from ``cameras.json``.

    Attributes:
        name: view name, equal to the file stem of its image and depth map.
        K: ``(3, 3)`` float64 pinhole intrinsics for the stored resolution, pixels.
        world_to_camera: ``(4, 4)`` float64 rigid transform, metres (OpenCV axes).
        width: stored image width, pixels.
        height: stored image height, pixels.
    """

    name: str
    K: torch.Tensor  # noqa: N815 - the standard symbol for intrinsics
    world_to_camera: torch.Tensor
    width: int
    height: int

    @property
    def intrinsics(self) -> torch.Tensor:
        """The ``(3, 3)`` intrinsics, an alias of ``K``."""
        return self.K


@dataclass
class Cameras:
    """Contents of one ``cameras.json``.

    Attributes:
        depth_scale: factor from stored depth values to metres.
        views: calibration per view, in file order.
        path: the file read, or ``None`` for cameras built in memory.
        depth_scale_given: whether the file sets ``depth_scale`` (else it is the 1.0 default).
    """

    depth_scale: float
    views: list[CameraView]
    path: Path | None = None
    depth_scale_given: bool = True

    def by_name(self) -> dict[str, CameraView]:
        """Return the views keyed by name."""
        return {view.name: view for view in self.views}

    def __getitem__(self, name: str) -> CameraView:
        """Return the view called ``name``; a missing view raises ``KeyError`` naming the ones present."""
        for view in self.views:
            if view.name == name:
                return view
        msg = f"View '{name}' is not in cameras.json; it lists {[view.name for view in self.views]}."
        raise KeyError(msg)


def _parse_matrix(value: object, shape: tuple[int, int], what: str, path: Path) -> torch.Tensor:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise _fail(path, f"{what} is not a numeric matrix", f"Write it as a {shape[0]}x{shape[1]} list of numbers") from error
    if array.shape != shape:
        raise _fail(path, f"{what} has shape {array.shape}, expected {shape}", f"Write it as a {shape[0]}x{shape[1]} list of numbers")
    if not np.isfinite(array).all():
        raise _fail(path, f"{what} contains non-finite values", "Replace NaN and inf by the calibrated values")
    return torch.from_numpy(array)


def _check_intrinsics(intrinsics: torch.Tensor, what: str, path: Path) -> None:
    if intrinsics[0, 0] <= 0 or intrinsics[1, 1] <= 0:
        raise _fail(path, f"{what} has non-positive focal lengths", "Check fx and fy in K")
    if not torch.allclose(intrinsics[2], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)):
        raise _fail(path, f"{what} has last row {intrinsics[2].tolist()}, expected [0, 0, 1]", "Write K in pinhole form")


def _check_pose(pose: torch.Tensor, what: str, path: Path) -> None:
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    if not torch.allclose(pose[3], bottom, atol=_POSE_TOLERANCE):
        raise _fail(path, f"{what} has last row {pose[3].tolist()}, expected [0, 0, 0, 1]", "Write a rigid 4x4 transform")
    rotation = pose[:3, :3]
    identity = torch.eye(3, dtype=torch.float64)
    if not torch.allclose(rotation @ rotation.T, identity, atol=_POSE_TOLERANCE) or torch.det(rotation) <= 0:
        raise _fail(path, f"{what} has a rotation block that is not a proper rotation", "Write a rigid 4x4 transform")


def _parse_camera_view(entry: object, index: int, path: Path) -> CameraView:
    if not isinstance(entry, dict):
        raise _fail(path, f"views[{index}] is not an object", "Write each view as {name, K, world_to_camera, width, height}")
    missing = [key for key in ("name", "K", "world_to_camera", "width", "height") if key not in entry]
    if missing:
        raise _fail(path, f"views[{index}] is missing keys {missing}", "Add the missing keys")

    name = entry["name"]
    if not isinstance(name, str) or not name:
        raise _fail(path, f"views[{index}] has name {name!r}", "Use the view's file stem as its name")
    width, height = entry["width"], entry["height"]
    if not all(isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in (width, height)):
        raise _fail(path, f"view '{name}' has width {width!r} and height {height!r}", "Use positive integer pixel counts")

    intrinsics = _parse_matrix(entry["K"], (3, 3), f"K of view '{name}'", path)
    _check_intrinsics(intrinsics, f"K of view '{name}'", path)
    pose = _parse_matrix(entry["world_to_camera"], (4, 4), f"world_to_camera of view '{name}'", path)
    _check_pose(pose, f"world_to_camera of view '{name}'", path)
    return CameraView(name=name, K=intrinsics, world_to_camera=pose, width=width, height=height)


def read_cameras(path: PathLike) -> Cameras:
    """Read and validate a ``cameras.json`` file.

    ``depth_scale`` defaults to 1.0 when absent. Raises :class:`SiM3DFormatError`
    for a missing file, invalid JSON, a missing key, a matrix of the wrong shape
    or with non-finite values, a non-rigid pose or a duplicate view name.
    """
    path = Path(path)
    _require_file(path, "cameras.json", "Add the instance's calibration file (see the cameras.json format in the README)")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _fail(path, f"file is not valid JSON ({error})", "Fix or regenerate the calibration file") from error
    if not isinstance(content, dict) or not isinstance(content.get("views"), list) or not content["views"]:
        raise _fail(path, "file has no non-empty 'views' list", "Write {'depth_scale': ..., 'views': [...]}")

    depth_scale = content.get("depth_scale", 1.0)
    if isinstance(depth_scale, bool) or not isinstance(depth_scale, int | float) or not math.isfinite(depth_scale) or depth_scale <= 0:
        raise _fail(path, f"depth_scale is {depth_scale!r}", "Use a positive number: stored depth times depth_scale gives metres")

    views = [_parse_camera_view(entry, index, path) for index, entry in enumerate(content["views"])]
    names = [view.name for view in views]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise _fail(path, f"views {duplicates} are listed more than once", "Keep one entry per view")
    return Cameras(depth_scale=float(depth_scale), views=views, path=path, depth_scale_given="depth_scale" in content)


# Median depth above which metres are implausible for an inspection set-up and millimetres are likely.
MILLIMETRE_DEPTH_THRESHOLD = 20.0
_warned_depth_scale: set[Path] = set()


def warn_if_depth_looks_like_millimetres(cameras: Cameras, depth: torch.Tensor, valid: torch.Tensor) -> None:
    """Log a warning, once per ``cameras.json``, when its default ``depth_scale`` of 1.0 meets depth that looks like millimetres.

    ``depth`` and ``valid`` are one view's ``(H, W)`` depth map after scaling, in metres, and its valid mask.
    """
    if cameras.depth_scale_given or cameras.path is None or cameras.path in _warned_depth_scale or not valid.any():
        return
    median = float(depth[valid].median())
    if median <= MILLIMETRE_DEPTH_THRESHOLD:
        return
    _warned_depth_scale.add(cameras.path)
    logger.warning(
        "%s sets no depth_scale, so depth is read as metres, but the median depth is %.1f m. "
        'If the depth maps store millimetres, add "depth_scale": 0.001 to this file.',
        cameras.path,
        median,
    )


def write_cameras(path: PathLike, views: Sequence[CameraView], depth_scale: float = 1.0) -> Path:
    """Write ``cameras.json`` for ``views``; the result reads back with :func:`read_cameras`."""
    path = Path(path)
    content = {
        "depth_scale": float(depth_scale),
        "views": [
            {
                "name": view.name,
                "K": _as_numpy(view.K).astype(np.float64).tolist(),
                "world_to_camera": _as_numpy(view.world_to_camera).astype(np.float64).tolist(),
                "width": int(view.width),
                "height": int(view.height),
            }
            for view in views
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=1), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- ground truth

_GROUND_TRUTH_KEYS = ("origin", "voxel_size", "coords", "anomalous")


def read_ground_truth(path: PathLike) -> VoxelGrid:
    """Read and validate ``gt/anomaly_volume.npz`` into a :class:`VoxelGrid`.

    Raises :class:`SiM3DFormatError` for a missing or unreadable file, a
    missing key, wrong shapes or dtypes, a non-positive voxel size,
    ``coords``/``anomalous`` of different lengths, or a voxel listed twice.
    """
    path = Path(path)
    _require_file(path, "ground-truth file", "Anomalous instances need gt/anomaly_volume.npz")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in _GROUND_TRUTH_KEYS if key not in archive.files]
            if missing:
                raise _fail(path, f"ground truth is missing keys {missing}", f"Store all of {list(_GROUND_TRUTH_KEYS)}")
            arrays = {key: archive[key] for key in _GROUND_TRUTH_KEYS}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        if isinstance(error, SiM3DFormatError):
            raise
        raise _fail(path, f"ground truth is unreadable or truncated ({_numpy_load_problem(error)})", "Re-save it with numpy.savez") from error

    origin, voxel_size = arrays["origin"], arrays["voxel_size"]
    coords, anomalous = arrays["coords"], arrays["anomalous"]
    if origin.shape != (3,) or not np.issubdtype(origin.dtype, np.number) or not np.isfinite(origin).all():
        raise _fail(path, f"origin has shape {origin.shape} or non-finite values", "Store origin as 3 finite floats")
    if voxel_size.size != 1 or not np.issubdtype(voxel_size.dtype, np.number):
        raise _fail(path, f"voxel_size has shape {voxel_size.shape}", "Store voxel_size as one float")
    size = float(voxel_size.reshape(()))
    if not math.isfinite(size) or size <= 0:
        raise _fail(path, f"voxel_size is {size}", "Use a positive edge length in metres")
    if coords.ndim != 2 or coords.shape[1] != 3 or not np.issubdtype(coords.dtype, np.integer):
        raise _fail(path, f"coords has shape {coords.shape} and dtype {coords.dtype}", "Store coords as integer (M, 3)")
    if anomalous.ndim != 1 or not (anomalous.dtype == np.bool_ or np.issubdtype(anomalous.dtype, np.integer)):
        raise _fail(path, f"anomalous has shape {anomalous.shape} and dtype {anomalous.dtype}", "Store anomalous as bool (M,)")
    if anomalous.shape[0] != coords.shape[0]:
        raise _fail(
            path,
            f"coords lists {coords.shape[0]} voxels but anomalous has {anomalous.shape[0]} entries",
            "Store one anomalous flag per voxel in coords",
        )
    if anomalous.dtype != np.bool_ and not np.isin(anomalous, (0, 1)).all():
        raise _fail(path, "anomalous contains values other than 0 and 1", "Store anomalous as bool")

    coords_tensor = torch.from_numpy(coords.astype(np.int64))
    keys = voxel_keys(coords_tensor)
    if torch.unique(keys).numel() != keys.numel():
        raise _fail(path, "coords lists some voxels more than once", "Keep one entry per voxel")
    return VoxelGrid(
        origin=torch.from_numpy(origin.astype(np.float64)),
        voxel_size=size,
        coords=coords_tensor,
        anomalous=torch.from_numpy(anomalous.astype(bool)),
    )


def write_ground_truth(path: PathLike, grid: VoxelGrid) -> Path:
    """Write ``grid`` as ``anomaly_volume.npz``; a grid without ``anomalous`` is written all nominal."""
    path = Path(path)
    coords = _as_numpy(grid.coords)
    anomalous = np.zeros(coords.shape[0], dtype=bool) if grid.anomalous is None else _as_numpy(grid.anomalous).astype(bool)
    if coords.ndim != 2 or coords.shape[1] != 3 or anomalous.shape != (coords.shape[0],):
        msg = f"Ground truth for {path} needs coords (M, 3) and anomalous (M,); got {coords.shape} and {anomalous.shape}."
        raise ValueError(msg)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        origin=_as_numpy(grid.origin).astype(np.float64).reshape(3),
        voxel_size=np.float64(grid.voxel_size),
        coords=coords.astype(np.int32),
        anomalous=anomalous,
    )
    return path
