"""Instance-level AUROC of voxel anomaly volumes (I-AUROC).

Each instance gets one score from its voxel scores: the maximum (default) or
the mean of its ``k`` highest scores. The AUROC of these scores against the
instance labels is computed exactly from average ranks (Mann-Whitney U), so a
tie between a nominal and an anomalous instance counts one half.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from anomalib.metrics import AnomalibMetric

from ._inputs import instance_labels, instance_scores

InstanceScore = Literal["max", "topk_mean"]
INSTANCE_SCORES: tuple[str, ...] = ("max", "topk_mean")


def reduce_instance_score(voxel_scores: torch.Tensor, score: InstanceScore = "max", k: int = 10) -> torch.Tensor:
    """Return one float64 instance score from ``(M,)`` voxel scores.

    ``"max"`` takes the highest voxel score; ``"topk_mean"`` averages the ``k``
    highest (all of them when ``M < k``). Raises ``ValueError`` for ``M = 0``.
    """
    if voxel_scores.numel() == 0:
        msg = "An instance with no voxels has no instance score; check that its voxel grid is not empty."
        raise ValueError(msg)
    values = voxel_scores.detach().reshape(-1).to(torch.float64)
    if score == "max":
        return values.max()
    if score == "topk_mean":
        return torch.topk(values, min(k, values.numel())).values.mean()
    msg = f"score must be one of {INSTANCE_SCORES}; got {score!r}."
    raise ValueError(msg)


def rank_auroc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return the exact AUROC of ``(N,)`` scores against ``(N,)`` 0/1 labels from average ranks.

    Returns NaN when one of the two classes is missing.
    """
    scores = scores.to(torch.float64)
    positive = labels.bool()
    num_positive = int(positive.sum())
    num_negative = int(positive.numel()) - num_positive
    if num_positive == 0 or num_negative == 0:
        return torch.tensor(float("nan"), dtype=torch.float64)

    _, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    first_rank = torch.cumsum(counts, dim=0) - counts + 1
    average_rank = first_rank.to(torch.float64) + (counts.to(torch.float64) - 1) / 2
    rank_sum = average_rank[inverse][positive].sum()
    u_statistic = rank_sum - num_positive * (num_positive + 1) / 2
    return u_statistic / (num_positive * num_negative)


class _InstanceAUROC(Metric):
    """I-AUROC on lists of voxel scores and instance labels; see the module docstring."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    scores: list[torch.Tensor]
    labels: list[torch.Tensor]

    def __init__(self, score: InstanceScore = "max", k: int = 10, **kwargs: Any) -> None:  # noqa: ANN401
        super().__init__(**kwargs)
        if score not in INSTANCE_SCORES:
            msg = f"score must be one of {INSTANCE_SCORES}; got {score!r}."
            raise ValueError(msg)
        if k < 1:
            msg = f"k must be a positive number of voxels; got {k}."
            raise ValueError(msg)
        self.score = score
        self.k = int(k)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        # Float64 states on every process, also on one that saw no instance.
        self.set_dtype(torch.float64)

    def update(self, pred_volume: torch.Tensor | list[torch.Tensor], gt_label: torch.Tensor) -> None:
        """Add instances: voxel scores ``pred_volume`` (list of ``(M_i,)``) and labels ``gt_label`` ``(B,)``."""
        volumes = instance_scores(pred_volume)
        labels = instance_labels(gt_label, len(volumes))
        if labels is None:
            msg = "InstanceAUROC needs gt_label (0 nominal, 1 anomalous) for every instance."
            raise ValueError(msg)
        device = self.device
        for index, volume in enumerate(volumes):
            try:
                value = reduce_instance_score(volume, self.score, self.k)
            except ValueError as error:
                msg = f"pred_volume[{index}]: {error}"
                raise ValueError(msg) from error
            self.scores.append(value.reshape(1).to(device))
        self.labels.append(torch.tensor(labels, dtype=torch.float64, device=device))

    def compute(self) -> torch.Tensor:
        """Return the I-AUROC; NaN (with a warning) unless both labels were seen."""
        scores = dim_zero_cat(self.scores) if len(self.scores) else torch.zeros(0, dtype=torch.float64)
        labels = dim_zero_cat(self.labels) if len(self.labels) else torch.zeros(0, dtype=torch.float64)
        value = rank_auroc(scores, labels)
        if torch.isnan(value):
            warnings.warn(
                f"I-AUROC is undefined for {int(labels.sum())} anomalous and {int((labels == 0).sum())} "
                "nominal instances; it needs both. Returning NaN.",
                stacklevel=2,
            )
        return value


class InstanceAUROC(AnomalibMetric, _InstanceAUROC):  # type: ignore[misc]
    """I-AUROC of voxel anomaly volumes as an anomalib metric.

    Reads the batch fields ``pred_volume`` (list of ``(M_i,)`` voxel scores) and
    ``gt_label`` (``(B,)`` 0/1) and reduces each instance's voxels to one score.
    It reports under ``<prefix>instance_AUROC`` for ``score="max"`` and under
    ``<prefix>instance_AUROC_top<k>`` for ``score="topk_mean"``.

    Args:
        score: ``"max"`` (default, highest voxel score) or ``"topk_mean"`` (mean of the ``k`` highest).
        k: number of voxels averaged by ``"topk_mean"``; default 10.
        fields: batch fields to read; default ``["pred_volume", "gt_label"]``.
        prefix: text put before the reported name.
        strict: raise when the batch lacks a field (default); else skip the batch.
        **kwargs: passed on to ``torchmetrics.Metric``.
    """

    default_fields = ("pred_volume", "gt_label")

    def __init__(
        self,
        score: InstanceScore = "max",
        k: int = 10,
        fields: list[str] | None = None,
        prefix: str = "",
        strict: bool = True,
        **kwargs: Any,  # noqa: ANN401
    ) -> None:
        super().__init__(fields=fields, prefix=prefix, strict=strict, score=score, k=k, **kwargs)
        suffix = "" if self.score == "max" else f"_top{self.k}"
        self.name = f"{prefix}instance_AUROC{suffix}"
