"""3D connected components of voxels given by integer indices (no dense volume needed)."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from sim3d_datamodule.geometry import voxel_keys

CONNECTIVITIES = (6, 26)


def _forward_offsets(connectivity: int) -> torch.Tensor:
    """Return half of the neighbour offsets ``(K, 3)``; the other half are their negatives.

    Each undirected neighbour pair is found once, from the voxel whose offset to
    the other is lexicographically positive.
    """
    if connectivity == 6:
        offsets = [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
    elif connectivity == 26:
        offsets = [step for step in itertools.product((-1, 0, 1), repeat=3) if step > (0, 0, 0)]
    else:
        msg = f"connectivity must be one of {CONNECTIVITIES} (face or face+edge+corner neighbours); got {connectivity!r}."
        raise ValueError(msg)
    return torch.tensor(offsets, dtype=torch.int64)


def label_voxel_regions(coords: torch.Tensor, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Label the connected components of a set of voxels.

    Two voxels are neighbours when their indices differ by at most 1 on every
    axis (26-connectivity) or by 1 on exactly one axis (6-connectivity). The
    neighbour pairs are found with sorted voxel keys and ``searchsorted``, and
    ``scipy.sparse.csgraph.connected_components`` joins them, so memory grows
    with the number of voxels, never with their bounding box.

    Args:
        coords: ``(N, 3)`` integer voxel indices, each voxel listed once.
        connectivity: 26 (default) or 6.

    Returns:
        ``(labels, count)``: ``(N,)`` int64 component label per voxel in
        ``[0, count)``, and the number of components.

    Raises:
        ValueError: on a bad shape, an unknown connectivity, or a voxel listed twice.
    """
    offsets = _forward_offsets(connectivity)
    if coords.ndim != 2 or coords.shape[1] != 3:
        msg = f"coords must have shape (N, 3); got {tuple(coords.shape)}."
        raise ValueError(msg)
    count = int(coords.shape[0])
    if count == 0:
        return np.zeros(0, dtype=np.int64), 0

    # Shift indices to start at 1 so that every neighbour index stays in the key range.
    shifted = coords.detach().cpu().to(torch.int64)
    shifted = shifted - shifted.min(dim=0).values + 1
    sorted_keys, order = torch.sort(voxel_keys(shifted))
    if count > 1 and bool((sorted_keys[1:] == sorted_keys[:-1]).any()):
        msg = "coords lists a voxel more than once; connected components need each voxel once."
        raise ValueError(msg)

    rows, cols = [], []
    every_voxel = torch.arange(count)
    for offset in offsets:
        neighbour_keys = voxel_keys(shifted + offset)
        position = torch.searchsorted(sorted_keys, neighbour_keys).clamp_max(count - 1)
        hit = sorted_keys[position] == neighbour_keys
        rows.append(every_voxel[hit])
        cols.append(order[position[hit]])

    row = torch.cat(rows).numpy()
    col = torch.cat(cols).numpy()
    graph = coo_matrix((np.ones(row.shape[0], dtype=np.int8), (row, col)), shape=(count, count))
    num_regions, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64), int(num_regions)
