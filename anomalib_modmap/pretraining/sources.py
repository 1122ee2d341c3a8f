"""Find and read the depth maps and grayscale images that pretraining learns from.

A data source is a path, optionally prefixed with its layout as ``layout:path``:

- ``sim3d``: SiM3D category folders; the training instances (folder names containing ``real``
  or ``synth``) give ``depth/*.npy`` and ``DEPTH/*_depth.exr`` (depth) or ``rgb/*.png`` and
  ``RGB/*.png`` (image). Test instances are left out because they hold the anomalies.
- ``mvtec3d``: MVTec 3D-AD; ``xyz/*.tiff`` (z channel) or ``rgb/*.png`` under ``train`` and
  ``validation``; the ``test`` split is left out.
- ``eyecandies``: Eyecandies; ``*_depth.png`` with ``*_info_depth.yaml`` (depth) or
  ``*_image_*.png`` (image), test splits left out.
- ``folder``: every matching file below the path: ``.npy``, ``.exr``, 16-bit ``.png``, ``.tif``/``.tiff``
  for depth, ``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``/``.tiff`` for images.

Without a prefix the layout is detected from the files found. Invalid depth (0, negative, NaN,
inf, and the maximum value of an EXR map, which renderers write as background) is returned as
``valid=False``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sim3d_datamodule.io import read_depth_exr

LAYOUTS: tuple[str, ...] = ("sim3d", "mvtec3d", "eyecandies", "folder")
DEPTH_SUFFIXES = (".npy", ".exr", ".png", ".tif", ".tiff")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_TEST_SPLIT_PREFIX = "test"


@dataclass(frozen=True)
class SourceFile:
    """One depth map or image on disk and the reader that decodes it.

    ``reader`` is one of ``npy``, ``exr``, ``png16``, ``tiff_xyz``,
    ``eyecandies_png`` (depth) or ``gray`` (image).
    """

    path: Path
    reader: str


def parse_source(spec: str) -> tuple[str | None, Path]:
    """Split ``"layout:path"`` into ``(layout, path)``; a spec without a known prefix has layout ``None``."""
    prefix, separator, rest = spec.partition(":")
    if separator and prefix in LAYOUTS:
        return prefix, Path(rest)
    return None, Path(spec)


def find_files(specs: list[str], modality: str, pattern: str | None = None) -> list[SourceFile]:
    """Collect the files of every source in ``specs`` for ``modality`` (``"depth"`` or ``"image"``).

    ``pattern`` is a file-name glob (for example ``"*.color.jpg"``) applied to ``folder`` sources.
    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` for a source without files.
    """
    if modality not in ("depth", "image"):
        msg = f"Unknown modality {modality!r}; use 'depth' or 'image'."
        raise ValueError(msg)
    if not specs:
        msg = "No data source given; pass at least one --data PATH."
        raise ValueError(msg)

    files: list[SourceFile] = []
    for spec in specs:
        layout, path = parse_source(spec)
        if not path.exists():
            msg = f"Data source {path} not found (from --data {spec!r})."
            raise FileNotFoundError(msg)
        layout = layout or detect_layout(path, modality)
        found = _FINDERS[layout](path, modality, pattern)
        if not found:
            expected = pattern or ", ".join(DEPTH_SUFFIXES if modality == "depth" else IMAGE_SUFFIXES)
            msg = (
                f"Data source {path} (layout {layout}) contains no {modality} files ({expected}); "
                "check the path, or give the layout explicitly as sim3d:PATH, mvtec3d:PATH, "
                "eyecandies:PATH or folder:PATH."
            )
            raise ValueError(msg)
        files.extend(found)
    return files


def detect_layout(path: Path, modality: str) -> str:
    """Guess the layout of ``path`` from the files it contains (``folder`` when nothing specific is found)."""
    if path.is_file():
        return "folder"
    if next(path.rglob("xyz/*.tiff"), None) is not None:
        return "mvtec3d"
    if next(path.rglob("*_info_depth.yaml"), None) is not None:
        return "eyecandies"
    for marker in ("depth/*.npy", "DEPTH/*_depth.exr"):
        if next(path.rglob(marker), None) is not None:
            return "sim3d"
    return "folder"


def _is_sim3d_training(folder: Path) -> bool:
    return "real" in folder.name or "synth" in folder.name


def _find_sim3d(path: Path, modality: str, pattern: str | None) -> list[SourceFile]:
    if modality == "depth":
        globs = (("depth", "*.npy", "npy"), ("DEPTH", "*_depth.exr", "exr"))
    else:
        globs = (("rgb", "*.png", "gray"), ("RGB", "*.png", "gray"))
    files = []
    for subfolder, glob, reader in globs:
        for found in sorted(path.rglob(f"{subfolder}/{glob}")):
            if _is_sim3d_training(found.parent.parent):
                files.append(SourceFile(found, reader))
    return files


def _outside_test_split(path: Path, root: Path) -> bool:
    return not any(part.startswith(_TEST_SPLIT_PREFIX) for part in path.relative_to(root).parts)


def _find_mvtec3d(path: Path, modality: str, pattern: str | None) -> list[SourceFile]:
    glob, reader = ("xyz/*.tiff", "tiff_xyz") if modality == "depth" else ("rgb/*.png", "gray")
    return [SourceFile(found, reader) for found in sorted(path.rglob(glob)) if _outside_test_split(found, path)]


def _find_eyecandies(path: Path, modality: str, pattern: str | None) -> list[SourceFile]:
    glob, reader = ("*_depth.png", "eyecandies_png") if modality == "depth" else ("*_image_*.png", "gray")
    return [SourceFile(found, reader) for found in sorted(path.rglob(glob)) if _outside_test_split(found, path)]


def _find_folder(path: Path, modality: str, pattern: str | None) -> list[SourceFile]:
    suffixes = DEPTH_SUFFIXES if modality == "depth" else IMAGE_SUFFIXES
    candidates = [path] if path.is_file() else sorted(found for found in path.rglob("*") if found.is_file())
    files = []
    for found in candidates:
        if found.suffix.lower() not in suffixes:
            continue
        if pattern is not None and not fnmatch.fnmatch(found.name, pattern):
            continue
        files.append(SourceFile(found, _folder_reader(found, modality)))
    return files


def _folder_reader(path: Path, modality: str) -> str:
    if modality == "image":
        return "gray"
    suffix = path.suffix.lower()
    return {".npy": "npy", ".exr": "exr", ".png": "png16", ".tif": "tiff_xyz", ".tiff": "tiff_xyz"}[suffix]


_FINDERS = {"sim3d": _find_sim3d, "mvtec3d": _find_mvtec3d, "eyecandies": _find_eyecandies, "folder": _find_folder}


def read_depth(source: SourceFile) -> tuple[np.ndarray, np.ndarray]:
    """Read a depth map; return ``(depth, valid)``, float32 and bool arrays of shape ``(H, W)``.

    Depth keeps the file's unit (metres, millimetres or normalised): pretraining normalises every
    view with ``normalize_depth``, which does not depend on the unit. Raises ``ValueError`` naming
    the file when its content cannot be depth.
    """
    path = source.path
    if source.reader == "npy":
        depth = _as_depth_plane(np.load(path), path)
    elif source.reader == "exr":
        # The project's EXR reader: the maximum value of the map is background.
        depth_tensor, valid_tensor = read_depth_exr(path)
        return depth_tensor.numpy().astype(np.float32), valid_tensor.numpy()
    elif source.reader == "png16":
        raw = _imread(path, cv2.IMREAD_UNCHANGED)
        if raw.dtype != np.uint16 or raw.ndim != 2:
            msg = (
                f"{path} is a {raw.dtype} PNG with shape {raw.shape}; depth PNGs must be single-channel 16-bit. "
                "Select only the depth files with --glob (for example --glob '*.depth.png')."
            )
            raise ValueError(msg)
        depth = raw.astype(np.float32)
    elif source.reader == "tiff_xyz":
        import tifffile

        depth = _as_depth_plane(tifffile.imread(path), path)
    elif source.reader == "eyecandies_png":
        depth = _read_eyecandies_depth(path)
    else:
        msg = f"{path}: reader {source.reader!r} does not read depth."
        raise ValueError(msg)

    depth = depth.astype(np.float32, copy=False)
    valid = np.isfinite(depth) & (depth > 0)
    return depth, valid


def read_gray(source: SourceFile) -> np.ndarray:
    """Read an image as float32 grayscale ``(H, W)`` in [0, 1] (colour files are converted to gray)."""
    image = _imread(source.path, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    elif image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        msg = f"{source.path} has shape {image.shape}; expected a grayscale, RGB or RGBA image."
        raise ValueError(msg)

    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    image = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(image.max())
    return np.clip(image / peak, 0.0, 1.0) if peak > 1.0 else np.clip(image, 0.0, 1.0)


def _imread(path: Path, flags: int) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    if image is None:
        msg = f"OpenCV could not read {path}; the file is missing, truncated or in an unsupported format."
        raise ValueError(msg)
    return image


def _as_depth_plane(array: np.ndarray, path: Path) -> np.ndarray:
    """Return the depth plane of a ``(H, W)`` map, or the z channel (index 2) of an ``(H, W, C>=3)`` one."""
    if array.ndim == 2:
        return array
    if array.ndim == 3 and array.shape[2] == 1:
        return array[..., 0]
    if array.ndim == 3 and array.shape[2] >= 3:
        # Index 2 is z in an organised point cloud (x, y, z).
        return array[..., 2]
    msg = f"{path} has shape {array.shape}; expected a depth map (H, W) or an organised point cloud (H, W, 3)."
    raise ValueError(msg)


def _read_eyecandies_depth(path: Path) -> np.ndarray:
    import yaml

    info_path = path.with_name(path.name.replace("_depth.png", "_info_depth.yaml"))
    if not info_path.is_file():
        msg = f"{info_path} not found; Eyecandies depth {path} needs it to map 16-bit values to depth."
        raise FileNotFoundError(msg)
    with info_path.open() as handle:
        info = yaml.safe_load(handle)
    try:
        low = float(info["normalization"]["min"])
        high = float(info["normalization"]["max"])
    except (KeyError, TypeError) as error:
        msg = f"{info_path} lacks normalization.min/max: {error}"
        raise ValueError(msg) from error

    raw = _imread(path, cv2.IMREAD_UNCHANGED)
    if raw.dtype != np.uint16 or raw.ndim != 2:
        msg = f"Eyecandies depth {path} is {raw.dtype} with shape {raw.shape}; expected a 16-bit single-channel PNG."
        raise ValueError(msg)
    return raw.astype(np.float32) / 65535.0 * (high - low) + low
