"""Contact sheets of generated instances: one row per instance, defect pixels outlined in red."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

TILE_SIDE = 160


def _tile(gray: np.ndarray, label: np.ndarray | None) -> np.ndarray:
    scale = TILE_SIDE / max(gray.shape)
    size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
    image = cv2.resize(np.clip(gray * 255.0, 0, 255).astype(np.uint8), size, interpolation=cv2.INTER_AREA)
    image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if label is not None and label.any():
        mask = cv2.resize(label.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(image, contours, -1, (0, 0, 255), 1)
    return image


def write_preview(path: Path, rows: Sequence[tuple[str, np.ndarray, np.ndarray | None]], max_views: int = 6) -> None:
    """Write a PNG with one row per instance ``(name, grays (V, H, W) in [0, 1], labels (V, H, W) bool or None)``.

    Shows the first ``max_views`` views of each instance, labelled with the instance name.
    """
    lines = []
    for name, grays, labels in rows:
        tiles = [_tile(grays[view], None if labels is None else labels[view]) for view in range(min(max_views, len(grays)))]
        line = np.concatenate(tiles, axis=1)
        cv2.putText(line, name, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 255), 1, cv2.LINE_AA)
        lines.append(line)
    width = max(line.shape[1] for line in lines)
    lines = [np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0))) for line in lines]
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.concatenate(lines, axis=0)):
        msg = f"Failed to write {path}."
        raise OSError(msg)
