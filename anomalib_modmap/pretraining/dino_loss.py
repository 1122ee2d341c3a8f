"""DINO class-token loss and the Sinkhorn-Knopp centring of teacher outputs."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _all_reduce(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=op)
    return tensor


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """Turn teacher logits ``(N, K)`` into centred target distributions ``(N, K)`` (rows sum to 1).

    Alternately normalises the prototype marginals to ``1/K`` and the sample marginals to ``1/N``
    (``iterations`` rounds), so that no prototype can take every sample: this is what keeps the
    teacher from collapsing. Under ``torch.distributed`` the sums run over the samples of every
    rank. ``N`` may be 0 on some ranks (an iBOT batch without masked patches); every rank must
    still call this function because it communicates.
    """
    scores = logits.float() / temperature
    peak = scores.amax() if scores.numel() else scores.new_tensor(-torch.inf)
    peak = _all_reduce(peak.clone(), op=dist.ReduceOp.MAX)
    # The global maximum is subtracted for overflow safety; a constant factor cancels in the first normalisation.
    weights = torch.exp(scores - peak).t()  # (K, N)

    prototypes = weights.shape[0]
    samples = _all_reduce(torch.tensor(float(weights.shape[1]), device=weights.device))
    tiny = torch.finfo(torch.float32).tiny

    weights = weights / _all_reduce(weights.sum()).clamp_min(tiny)
    for _ in range(iterations):
        per_prototype = _all_reduce(weights.sum(dim=1, keepdim=True))
        weights = weights / per_prototype.clamp_min(tiny) / prototypes
        weights = weights / weights.sum(dim=0, keepdim=True).clamp_min(tiny) / samples.clamp_min(1.0)
    return (weights * samples).t()


class DINOLoss(nn.Module):
    """Cross-entropy between the student's class-token distributions and the teacher's targets.

    ``forward`` takes student logits for the global crops ``(G, B, K)`` and local crops
    ``(L, B, K)`` and the teacher targets for the global crops ``(G, B, K)``, already centred with
    ``sinkhorn_knopp``. Each student crop is compared with every teacher global crop except the
    one made from the same crop; the loss is the mean over those pairs and over the batch.
    """

    def __init__(self, student_temperature: float = 0.1) -> None:
        super().__init__()
        self.student_temperature = student_temperature

    def forward(
        self,
        student_global: torch.Tensor,
        student_local: torch.Tensor,
        teacher_targets: torch.Tensor,
    ) -> torch.Tensor:
        """Return the scalar loss averaged over crop pairs and samples."""
        global_log_probs = F.log_softmax(student_global.float() / self.student_temperature, dim=-1)
        local_log_probs = F.log_softmax(student_local.float() / self.student_temperature, dim=-1)
        targets = teacher_targets.float()

        total = global_log_probs.new_zeros(())
        pairs = 0
        for teacher_index in range(targets.shape[0]):
            target = targets[teacher_index]
            for student_index in range(global_log_probs.shape[0]):
                if student_index == teacher_index:
                    continue
                total = total - (target * global_log_probs[student_index]).sum(dim=-1).mean()
                pairs += 1
            for student_index in range(local_log_probs.shape[0]):
                total = total - (target * local_log_probs[student_index]).sum(dim=-1).mean()
                pairs += 1
        if pairs == 0:
            msg = "DINOLoss needs two global crops, or one global crop and at least one local crop."
            raise ValueError(msg)
        return total / pairs
