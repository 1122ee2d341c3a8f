"""Writers for the SiM3D folder layout used by the synthesis tools.

TODO: switch to the readers and writers of ``sim3d_datamodule.io`` once they
land, and delete this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sim3d_datamodule.geometry import VoxelGrid


@dataclass
class CameraView:
    """Calibration of one view, as stored in ``cameras.json``.

    Attributes:
        name: view name, the file stem of the view's images (``C01``).
        intrinsics: ``(3, 3)`` float64 pinhole matrix K for the stored resolution.
        world_to_camera: ``(4, 4)`` float64 rigid transform, metres.
        width: image width in pixels.
        height: image height in pixels.
    """

    name: str
    intrinsics: np.ndarray
    world_to_camera: np.ndarray
    width: int
    height: int

    def to_json(self) -> dict:
        """Return the ``cameras.json`` entry of this view."""
        return {
            "name": self.name,
            "K": np.asarray(self.intrinsics, dtype=np.float64).tolist(),
            "world_to_camera": np.asarray(self.world_to_camera, dtype=np.float64).tolist(),
            "width": int(self.width),
            "height": int(self.height),
        }


def write_cameras(path: Path, views: list[CameraView], depth_scale: float = 1.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"depth_scale": float(depth_scale), "views": [view.to_json() for view in views]}
    path.write_text(json.dumps(payload, indent=1))


def read_cameras(path: Path) -> list[CameraView]:
    payload = json.loads(Path(path).read_text())
    return [
        CameraView(
            name=str(view["name"]),
            intrinsics=np.asarray(view["K"], dtype=np.float64),
            world_to_camera=np.asarray(view["world_to_camera"], dtype=np.float64),
            width=int(view["width"]),
            height=int(view["height"]),
        )
        for view in payload["views"]
    ]


def write_gray_png(path: Path, gray: np.ndarray) -> None:
    """Write gray values in [0, 1] ``(H, W)`` as an 8-bit PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.clip(np.rint(gray * 255.0), 0, 255).astype(np.uint8)
    if not cv2.imwrite(str(path), image):
        msg = f"Failed to write {path}."
        raise OSError(msg)


def write_depth_npy(path: Path, depth: np.ndarray) -> None:
    """Write depth ``(H, W)`` in metres as float32; invalid pixels are stored as inf."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, depth.astype(np.float32))


def write_depth_exr(path: Path, depth: np.ndarray, background: np.ndarray) -> None:
    """Write depth ``(H, W)`` in metres to channel 0 of an EXR; ``background`` pixels get the maximum value.

    The background value is ``max(depth) + 1`` metre, so it is the unique maximum.
    """
    import OpenEXR  # noqa: PLC0415 (only the synth writers need it)

    path.parent.mkdir(parents=True, exist_ok=True)
    values = depth.astype(np.float32).copy()
    foreground = ~background
    far = float(values[foreground].max()) + 1.0 if foreground.any() else 1.0
    values[background] = far
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, {"R": values}) as exr:
        exr.write(str(path))


def write_ground_truth(path: Path, grid: VoxelGrid) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    anomalous = np.zeros(grid.num_voxels, dtype=bool) if grid.anomalous is None else grid.anomalous.cpu().numpy().astype(bool)
    np.savez_compressed(
        path,
        origin=grid.origin.cpu().numpy().astype(np.float64),
        voxel_size=np.float64(grid.voxel_size),
        coords=grid.coords.cpu().numpy().astype(np.int32),
        anomalous=anomalous,
    )
