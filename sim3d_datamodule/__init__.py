"""SiM3D multi-view RGB-D data for anomalib: file formats, camera geometry, datasets and the datamodule.

The heavy parts (anomalib, the datamodule) load on first access, so that
``import sim3d_datamodule.geometry`` stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "SiM3D": "sim3d_datamodule.datamodule",
    "MultiViewItem": "sim3d_datamodule.items",
    "MultiViewBatch": "sim3d_datamodule.items",
    "ViewItem": "sim3d_datamodule.items",
    "ViewBatch": "sim3d_datamodule.items",
    "SiM3DFormatError": "sim3d_datamodule.io",
    "VoxelGrid": "sim3d_datamodule.geometry",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:  # noqa: ANN401
    """Import the public classes on first access."""
    if name not in _LAZY:
        msg = f"module 'sim3d_datamodule' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
