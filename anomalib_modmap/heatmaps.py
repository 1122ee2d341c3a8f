"""Score colouring and per-view heatmap overlays shared by the anomaly volume exports.

One matplotlib colormap (``jet`` by default, blue for low scores and red for
high ones) colours both the voxel point clouds and the view overlays, so a
colour means the same score in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

DEFAULT_COLORMAP = "jet"
DEFAULT_OVERLAY_ALPHA = 0.5


def as_view_maps(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """Return per-view maps ``(V, H, W)`` from ``(V, H, W)`` or ``(V, 1, H, W)``; ``name`` labels errors."""
    if tensor.ndim == 4 and tensor.shape[1] == 1:
        return tensor[:, 0]
    if tensor.ndim != 3:
        msg = f"{name} must have shape (V, H, W) or (V, 1, H, W); got {tuple(tensor.shape)}."
        raise ValueError(msg)
    return tensor


def score_limits(scores: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray | None = None) -> tuple[float, float]:
    """Return ``(min, max)`` of the finite ``scores`` (where ``mask`` is true), ``(0, 1)`` if there is none."""
    values = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    values = values.astype(np.float64)
    if mask is not None:
        mask = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        values = values[mask.astype(bool).reshape(values.shape)]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    return float(values.min()), float(values.max())


def colorize_scores(
    scores: np.ndarray,
    score_range: tuple[float, float] | None = None,
    colormap: str = DEFAULT_COLORMAP,
) -> np.ndarray:
    """Map scores of any shape to 8-bit RGB ``(..., 3)`` with a matplotlib colormap.

    ``score_range`` ``(low, high)`` maps to the two ends of the colormap; the
    default is the finite minimum and maximum of ``scores``. A zero-width range
    paints everything with the low end.
    """
    from matplotlib import colormaps  # noqa: PLC0415 - keep matplotlib out of metric-only imports.

    scores = np.asarray(scores, dtype=np.float64)
    low, high = score_range if score_range is not None else score_limits(scores)
    span = high - low
    normalised = (scores - low) / span if span > 0 else np.zeros_like(scores)
    normalised = np.nan_to_num(np.clip(normalised, 0.0, 1.0), nan=0.0)
    rgba = colormaps[colormap](normalised)
    return np.round(rgba[..., :3] * 255.0).astype(np.uint8)


def _gray_views(images: torch.Tensor) -> np.ndarray:
    """Turn ``(V, H, W)``, ``(V, 1, H, W)`` or ``(V, 3, H, W)`` images into ``(V, H, W)`` gray in [0, 1].

    Each view is min-max scaled on its own, so normalised (standardised) images display well.
    """
    if images.ndim == 4:
        images = images.float().mean(dim=1)
    if images.ndim != 3:
        msg = f"images must have shape (V, H, W), (V, 1, H, W) or (V, 3, H, W); got {tuple(images.shape)}."
        raise ValueError(msg)
    gray = images.detach().cpu().to(torch.float64)
    low = gray.amin(dim=(-2, -1), keepdim=True)
    high = gray.amax(dim=(-2, -1), keepdim=True)
    return ((gray - low) / (high - low).clamp_min(1e-12)).numpy()


COLORBAR_WIDTH = 64
COLORBAR_MIN_HEIGHT = 96


def render_colorbar(score_range: tuple[float, float], height: int, colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """Draw a vertical colour bar labelled with the scores at its ends and middle; return ``(height, 64, 3)`` uint8 RGB.

    ``height`` is at least 96 pixels, so that the labels stay readable beside small images.
    """
    from matplotlib import colormaps  # noqa: PLC0415 - keep matplotlib out of metric-only imports.
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.cm import ScalarMappable  # noqa: PLC0415
    from matplotlib.colors import Normalize  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    height = max(int(height), COLORBAR_MIN_HEIGHT)
    low, high = score_range
    dpi = 100
    figure = Figure(figsize=(COLORBAR_WIDTH / dpi, height / dpi), dpi=dpi, facecolor="black")
    canvas = FigureCanvasAgg(figure)
    margin = 6 / height
    axes = figure.add_axes((0.08, margin, 0.2, 1.0 - 2 * margin))
    bar = figure.colorbar(ScalarMappable(norm=Normalize(low, high if high > low else low + 1e-12), cmap=colormaps[colormap]), cax=axes)
    bar.set_ticks([low, (low + high) / 2, high])
    bar.ax.tick_params(labelsize=7, colors="white", length=2, pad=1)
    bar.ax.set_yticklabels([f"{value:.3g}" for value in (low, (low + high) / 2, high)])
    bar.outline.set_edgecolor("white")
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[:height, :COLORBAR_WIDTH, :3])


def save_view_overlays(
    folder: str | Path,
    images: torch.Tensor,
    anomaly_maps: torch.Tensor,
    valid: torch.Tensor | None = None,
    view_names: Sequence[str | int] | None = None,
    score_range: tuple[float, float] | None = None,
    colormap: str = DEFAULT_COLORMAP,
    alpha: float = DEFAULT_OVERLAY_ALPHA,
    colorbar: bool = True,
) -> list[Path]:
    """Write one heatmap overlay PNG per view into ``folder``.

    Each PNG blends the view's gray image with the ``colormap`` colour of its
    anomaly map: ``(1 - alpha) * gray + alpha * heat``. Pixels where ``valid``
    is false (background, invalid depth) show the gray image only. All views
    share one ``score_range`` so that their colours compare. By default it is
    the minimum and maximum of the maps over the valid pixels. With ``colorbar``,
    a 64-pixel-wide colour bar labelled with the range is added right of the
    view (the overlay keeps its pixels at the top left; a short view is padded
    with black below, up to the bar's 96-pixel minimum height).

    Args:
        folder: output folder, created if missing.
        images: ``(V, H, W)``, ``(V, 1, H, W)`` or ``(V, 3, H, W)`` images, any range.
        anomaly_maps: ``(V, H, W)`` or ``(V, 1, H, W)`` pixel scores.
        valid: optional ``(V, H, W)`` bool mask of pixels to colour.
        view_names: file stems, one per view; default ``view_000``, ``view_001``, ...
        score_range: ``(low, high)`` scores mapped to the ends of the colormap.
        colormap: matplotlib colormap name, default ``"jet"``.
        alpha: weight of the heatmap in the blend, in [0, 1].
        colorbar: add the labelled colour bar beside each view.

    Returns:
        The paths written, one per view.
    """
    from PIL import Image  # noqa: PLC0415 - only exports need Pillow.

    anomaly_maps = as_view_maps(anomaly_maps, "anomaly_maps")
    gray = _gray_views(images)
    if gray.shape != tuple(anomaly_maps.shape):
        msg = f"images have shape {gray.shape} after conversion to gray but anomaly_maps has {tuple(anomaly_maps.shape)}."
        raise ValueError(msg)
    if not 0.0 <= alpha <= 1.0:
        msg = f"alpha must lie in [0, 1]; got {alpha}."
        raise ValueError(msg)

    num_views = anomaly_maps.shape[0]
    mask = np.ones(gray.shape, dtype=bool) if valid is None else as_view_maps(valid, "valid").detach().cpu().numpy().astype(bool)
    if mask.shape != gray.shape:
        msg = f"valid has shape {mask.shape} but anomaly_maps has {tuple(anomaly_maps.shape)}."
        raise ValueError(msg)
    names = [f"view_{index:03d}" for index in range(num_views)] if view_names is None else [str(name) for name in view_names]
    if len(names) != num_views:
        msg = f"view_names has {len(names)} entries for {num_views} views."
        raise ValueError(msg)

    maps = anomaly_maps.detach().cpu().to(torch.float64).numpy()
    score_range = score_range if score_range is not None else score_limits(maps, mask)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bar = render_colorbar(score_range, gray.shape[1], colormap) if colorbar else None
    paths = []
    for view in range(num_views):
        heat = colorize_scores(maps[view], score_range=score_range, colormap=colormap).astype(np.float64)
        base = np.repeat(gray[view][..., None] * 255.0, 3, axis=-1)
        blended = np.round(np.where(mask[view][..., None], (1.0 - alpha) * base + alpha * heat, base)).astype(np.uint8)
        if bar is not None:
            blended = _append_colorbar(blended, bar)
        path = folder / f"{names[view]}.png"
        Image.fromarray(blended).save(path)
        paths.append(path)
    return paths


def _append_colorbar(image: np.ndarray, bar: np.ndarray) -> np.ndarray:
    """Place ``bar`` right of ``image`` (both uint8 RGB), padding the shorter one with black below."""
    height = max(image.shape[0], bar.shape[0])
    canvas = np.zeros((height, image.shape[1] + bar.shape[1], 3), dtype=np.uint8)
    canvas[: image.shape[0], : image.shape[1]] = image
    canvas[: bar.shape[0], image.shape[1] :] = bar
    return canvas
