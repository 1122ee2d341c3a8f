"""Area under the per-region overlap curve of voxel anomaly volumes (V-AUPRO).

Regions are the 3D connected components of the anomalous voxels of one
instance, with 26-connectivity by default or 6 as an option. Components of
different instances are never merged. For a threshold t:

- the false-positive rate ``FPR(t)`` is the fraction of nominal voxels, over
  all instances seen, whose score is at least t;
- the per-region overlap ``PRO(t)`` is the mean over all regions of the
  fraction of the region's voxels whose score is at least t.

Every distinct score is a threshold, so voxels with equal scores switch
together. The curve runs through ``(0, 0)`` and the points ``(FPR(t), PRO(t))``
in order of decreasing t, linear in between. The score is the area under it
from FPR 0 to ``fpr_limit``, divided by ``fpr_limit``; the segment that crosses
the limit is cut there by linear interpolation. The score is 1.0 when every
anomalous voxel outscores every nominal voxel and 0.0 when every nominal voxel
outscores every anomalous one.

Since ``PRO(t) = (1/R) * sum over anomalous voxels v with score >= t of 1/|region(v)|``,
the state is per voxel and needs no region ids: nominal scores, anomalous scores
with the size of their region, and the region count R. It concatenates (and
sums) safely across batches and processes.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from matplotlib.figure import Figure
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from anomalib.metrics import AnomalibMetric

from ._inputs import instance_grids, instance_labels, instance_scores
from .regions import label_voxel_regions


def _cat_state(state: list[torch.Tensor] | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Concatenate a list state (a tensor after distributed sync); empty gives an empty tensor."""
    if isinstance(state, list) and not state:
        return torch.zeros(0, dtype=dtype)
    return dim_zero_cat(state).to(dtype)


def crossing_threshold(nominal_scores: torch.Tensor, fpr_limit: float) -> float:
    """Return the threshold of the first curve point whose FPR exceeds ``fpr_limit``, -inf if none does.

    That is the k-th highest nominal score with ``k = floor(fpr_limit * N) + 1``:
    at any higher threshold at most ``k - 1`` nominal voxels pass, so FPR stays
    within the limit. Points at lower thresholds lie past the crossing and add
    no area below the limit.
    """
    num_nominal = nominal_scores.numel()
    rank = math.floor(fpr_limit * num_nominal) + 1
    if rank > num_nominal:
        return float("-inf")
    return float(torch.kthvalue(nominal_scores, num_nominal - rank + 1).values)


def pro_curve(
    nominal_scores: torch.Tensor,
    anomalous_scores: torch.Tensor,
    region_sizes: torch.Tensor,
    num_regions: int,
    min_threshold: float = float("-inf"),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(fpr, pro, thresholds)`` float64 at every distinct score, in order of decreasing threshold.

    ``fpr`` and ``pro`` start with the point ``(0, 0)``, whose threshold is +inf.

    Args:
        nominal_scores: ``(N,)`` scores of all nominal voxels.
        anomalous_scores: ``(A,)`` scores of all anomalous voxels.
        region_sizes: ``(A,)`` number of voxels in the region of each anomalous voxel.
        num_regions: number of regions R.
        min_threshold: stop the curve at this threshold; voxels below it are only
            counted in the totals. :func:`crossing_threshold` gives the lowest
            threshold that matters for the area up to an FPR limit.
    """
    device = nominal_scores.device
    num_nominal = nominal_scores.numel()
    weights = 1.0 / region_sizes.to(torch.float64)
    unseen_weight = torch.zeros((), dtype=torch.float64, device=device)
    if min_threshold > float("-inf"):
        kept = anomalous_scores >= min_threshold
        unseen_weight = weights[~kept].sum()
        nominal_scores = nominal_scores[nominal_scores >= min_threshold]
        anomalous_scores, weights = anomalous_scores[kept], weights[kept]

    scores = torch.cat((nominal_scores, anomalous_scores)).to(torch.float64)
    false_positive = torch.cat(
        (torch.ones(nominal_scores.numel(), dtype=torch.float64, device=device), torch.zeros_like(weights))
    )
    overlap = torch.cat((torch.zeros(nominal_scores.numel(), dtype=torch.float64, device=device), weights))

    sorted_scores, order = torch.sort(scores, descending=True, stable=True)
    false_positives = torch.cumsum(false_positive[order], dim=0)
    sorted_overlap = overlap[order]
    found = torch.cumsum(sorted_overlap, dim=0)
    missed = torch.flip(torch.cumsum(torch.flip(sorted_overlap, dims=(0,)), dim=0), dims=(0,))
    missed = torch.cat((missed[1:], torch.zeros(1, dtype=torch.float64, device=device))) + unseen_weight
    # The last voxel of each group of equal scores marks where the threshold can stop.
    thresholds, counts = torch.unique_consecutive(sorted_scores, return_counts=True)
    ends = torch.cumsum(counts, dim=0) - 1

    # PRO from the found overlap while it is the smaller sum, else 1 minus the missed overlap:
    # both are empty sums at the ends, so no found region gives exactly 0 and all found exactly 1.
    regions = max(num_regions, 1)
    found, missed = found[ends], missed[ends]
    overlap_rate = torch.where(found <= missed, found / regions, 1.0 - missed / regions).clamp(0.0, 1.0)

    origin = torch.zeros(1, dtype=torch.float64, device=device)
    fpr = torch.cat((origin, false_positives[ends] / max(num_nominal, 1)))
    pro = torch.cat((origin, overlap_rate))
    thresholds = torch.cat((torch.full((1,), float("inf"), dtype=torch.float64, device=device), thresholds))
    return fpr, pro, thresholds


def area_up_to(fpr: torch.Tensor, pro: torch.Tensor, fpr_limit: float) -> torch.Tensor:
    """Return the trapezoid area under ``pro`` over ``fpr`` from 0 to ``fpr_limit``, divided by the limit.

    ``fpr`` must be non-decreasing and start at 0. The segment that crosses the
    limit is cut there, with ``pro`` interpolated linearly.
    """
    inside = int(torch.searchsorted(fpr, torch.tensor([fpr_limit], dtype=fpr.dtype, device=fpr.device), right=True))
    area = torch.trapezoid(pro[:inside], fpr[:inside]) if inside > 1 else torch.zeros((), dtype=fpr.dtype)
    if inside < fpr.numel():
        fpr_low, fpr_high = fpr[inside - 1], fpr[inside]
        pro_low, pro_high = pro[inside - 1], pro[inside]
        pro_limit = pro_low + (pro_high - pro_low) * (fpr_limit - fpr_low) / (fpr_high - fpr_low)
        area = area + (fpr_limit - fpr_low) * (pro_low + pro_limit) / 2
    return area / fpr_limit


class _VoxelAUPRO(Metric):
    """V-AUPRO on lists of voxel scores and ground-truth voxel grids; see the module docstring.

    States: ``nominal_scores`` and ``anomalous_scores`` (float64 voxel scores),
    ``region_sizes`` (float64 voxel count of the region of each anomalous voxel)
    and ``num_regions`` (float64 count).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    nominal_scores: list[torch.Tensor]
    anomalous_scores: list[torch.Tensor]
    region_sizes: list[torch.Tensor]
    num_regions: torch.Tensor

    def __init__(self, fpr_limit: float = 0.01, connectivity: int = 26, **kwargs: Any) -> None:  # noqa: ANN401
        super().__init__(**kwargs)
        if not 0.0 < fpr_limit <= 1.0:
            msg = f"fpr_limit must lie in (0, 1]; got {fpr_limit}."
            raise ValueError(msg)
        if connectivity not in (6, 26):
            msg = f"connectivity must be 6 or 26; got {connectivity!r}."
            raise ValueError(msg)
        self.fpr_limit = float(fpr_limit)
        self.connectivity = int(connectivity)

        self.add_state("nominal_scores", default=[], dist_reduce_fx="cat")
        self.add_state("anomalous_scores", default=[], dist_reduce_fx="cat")
        self.add_state("region_sizes", default=[], dist_reduce_fx="cat")
        self.add_state("num_regions", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        # A process without any update sends empty tensors of the metric dtype; float64 matches
        # the other processes. Counts stay exact in float64 up to 2**53.
        self.set_dtype(torch.float64)

    def update(
        self,
        pred_volume: torch.Tensor | list[torch.Tensor],
        gt_volume: Any,  # noqa: ANN401 - a VoxelGrid or a list of them
        gt_label: torch.Tensor | None = None,
    ) -> None:
        """Add instances: voxel scores ``pred_volume``, grids ``gt_volume`` and labels ``gt_label``.

        A grid whose ``anomalous`` is ``None`` (or a missing grid) is accepted for
        a nominal instance (label 0) only, and counts all its voxels as nominal.
        Raises ``ValueError`` when scores and voxels differ in number or when a
        nominal instance has anomalous voxels.
        """
        scores = instance_scores(pred_volume)
        grids = instance_grids(gt_volume, len(scores))
        labels = instance_labels(gt_label, len(scores))
        device = self.device

        for index, (score, grid) in enumerate(zip(scores, grids, strict=True)):
            label = None if labels is None else labels[index]
            anomalous = self._anomalous_mask(index, score, grid, label)
            anomalous = anomalous.to(score.device)

            if bool(anomalous.any()):
                region_labels, count = label_voxel_regions(grid.coords[anomalous.to(grid.coords.device)], self.connectivity)
                region_labels = torch.from_numpy(region_labels)
                sizes = torch.bincount(region_labels, minlength=count)[region_labels]
            else:
                count, sizes = 0, torch.zeros(0, dtype=torch.int64)

            # Every state gets an entry, empty or not, so that each process that saw an
            # instance gathers float64 tensors of the same dtype.
            self.nominal_scores.append(score[~anomalous].to(device=device, dtype=torch.float64))
            self.anomalous_scores.append(score[anomalous].to(device=device, dtype=torch.float64))
            self.region_sizes.append(sizes.to(device=device, dtype=torch.float64))
            self.num_regions += count

    @staticmethod
    def _anomalous_mask(index: int, score: torch.Tensor, grid: Any, label: int | None) -> torch.Tensor:  # noqa: ANN401
        """Return the ``(M,)`` bool anomalous mask of instance ``index`` after consistency checks."""
        if grid is None or grid.anomalous is None:
            if label != 0:
                msg = (
                    f"Instance {index} has no ground-truth anomalous mask; only a nominal instance "
                    "(gt_label 0) may come without one. Provide gt_volume with `anomalous`."
                )
                raise ValueError(msg)
            if grid is not None and grid.num_voxels != score.numel():
                msg = f"pred_volume[{index}] has {score.numel()} scores but its grid lists {grid.num_voxels} voxels."
                raise ValueError(msg)
            return torch.zeros(score.numel(), dtype=torch.bool)

        anomalous = grid.anomalous.detach().reshape(-1).bool().cpu()
        if grid.num_voxels != score.numel() or anomalous.numel() != score.numel():
            msg = (
                f"pred_volume[{index}] has {score.numel()} scores but its grid lists {grid.num_voxels} voxels "
                f"({anomalous.numel()} anomalous flags); fuse the volume on the instance's own gt_volume."
            )
            raise ValueError(msg)
        if label == 0 and bool(anomalous.any()):
            msg = (
                f"Instance {index} is labelled nominal (gt_label 0) but {int(anomalous.sum())} of its voxels are "
                "anomalous in gt_volume; fix the label or the ground truth."
            )
            raise ValueError(msg)
        return anomalous

    def curve(self, full: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the ``(fpr, pro, thresholds)`` curve of the state; see :func:`pro_curve`.

        By default the curve ends at the first point past ``fpr_limit``, which
        spares sorting the nominal voxels below it; ``full=True`` runs to FPR 1.
        """
        nominal = _cat_state(self.nominal_scores, torch.float64)
        anomalous = _cat_state(self.anomalous_scores, torch.float64).to(nominal.device)
        sizes = _cat_state(self.region_sizes, torch.float64).to(nominal.device)
        min_threshold = float("-inf") if full else crossing_threshold(nominal, self.fpr_limit)
        return pro_curve(nominal, anomalous, sizes, int(self.num_regions), min_threshold=min_threshold)

    def compute(self) -> torch.Tensor:
        """Return V-AUPRO up to ``fpr_limit``, normalised to [0, 1]; NaN (with a warning) when undefined."""
        num_nominal = sum(int(part.numel()) for part in self.nominal_scores) if isinstance(self.nominal_scores, list) else int(self.nominal_scores.numel())
        if num_nominal == 0 or int(self.num_regions) == 0:
            warnings.warn(
                f"V-AUPRO is undefined with {num_nominal} nominal voxels and {int(self.num_regions)} anomalous "
                "regions; it needs both. Returning NaN.",
                stacklevel=2,
            )
            return torch.tensor(float("nan"), dtype=torch.float64)
        fpr, pro, _ = self.curve()
        return area_up_to(fpr, pro, self.fpr_limit)

    def generate_figure(self) -> tuple[Figure, str]:
        """Plot the PRO curve up to ``fpr_limit`` (PRO over FPR) and return ``(figure, title)``."""
        fpr, pro, _ = self.curve()
        score = float(area_up_to(fpr, pro, self.fpr_limit))
        keep = int(torch.searchsorted(fpr, torch.tensor([self.fpr_limit], dtype=fpr.dtype), right=True))
        shown_fpr = fpr[: keep + 1].clamp_max(self.fpr_limit).cpu().numpy()
        shown_pro = pro[: keep + 1].cpu().numpy()
        if keep < fpr.numel():
            low, high = fpr[keep - 1], fpr[keep]
            shown_pro[-1] = float(pro[keep - 1] + (pro[keep] - pro[keep - 1]) * (self.fpr_limit - low) / (high - low))

        figure = Figure(figsize=(5, 4))
        axis = figure.subplots()
        axis.plot(shown_fpr, shown_pro, color="tab:red", label=f"V-AUPRO = {score:.4f}")
        axis.set_xlim(0.0, self.fpr_limit)
        axis.set_ylim(0.0, 1.0)
        axis.set_xlabel("false-positive rate over nominal voxels")
        axis.set_ylabel("per-region overlap")
        axis.legend(loc="lower right")
        title = f"PRO curve up to FPR {self.fpr_limit:g} ({self.connectivity}-connectivity)"
        axis.set_title(title)
        return figure, title


class VoxelAUPRO(AnomalibMetric, _VoxelAUPRO):  # type: ignore[misc]
    """V-AUPRO of voxel anomaly volumes as an anomalib metric.

    Reads the batch fields ``pred_volume`` (list of ``(M_i,)`` voxel scores),
    ``gt_volume`` (list of ``VoxelGrid`` with ``anomalous`` ``(M_i,)`` bool) and
    ``gt_label`` (``(B,)`` 0/1). It reports under ``<prefix>voxel_AUPRO@<limit>%``,
    e.g. ``voxel_AUPRO@1%`` for the default ``fpr_limit=0.01``.

    The state keeps every voxel score as float64 until ``compute``: 8 bytes per
    nominal voxel and 16 per anomalous voxel. The result is exact for any
    scores, ties included.

    Args:
        fpr_limit: upper end of the integrated false-positive range, in (0, 1]; default 0.01.
        connectivity: 26 (default, faces, edges and corners) or 6 (faces only) for regions.
        fields: batch fields to read; default ``["pred_volume", "gt_volume", "gt_label"]``.
            Leave out ``gt_label`` to skip the label checks.
        prefix: text put before the reported name.
        strict: raise when the batch lacks a field (default); else skip the batch.
        **kwargs: passed on to ``torchmetrics.Metric`` (e.g. ``dist_sync_on_step``).

    Example:
        >>> from anomalib.metrics import Evaluator
        >>> evaluator = Evaluator(test_metrics=[VoxelAUPRO(), VoxelAUPRO(fpr_limit=0.05)])
    """

    default_fields = ("pred_volume", "gt_volume", "gt_label")

    def __init__(
        self,
        fpr_limit: float = 0.01,
        connectivity: int = 26,
        fields: list[str] | None = None,
        prefix: str = "",
        strict: bool = True,
        **kwargs: Any,  # noqa: ANN401
    ) -> None:
        super().__init__(fields=fields, prefix=prefix, strict=strict, fpr_limit=fpr_limit, connectivity=connectivity, **kwargs)
        self.name = f"{prefix}voxel_AUPRO@{self.fpr_limit * 100:g}%"
