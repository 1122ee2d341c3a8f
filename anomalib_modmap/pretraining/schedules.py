"""Per-step schedules of the pretraining hyperparameters."""

from __future__ import annotations

import math
from dataclasses import dataclass


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Return the value of a half-cosine from ``start`` (step 0) to ``end`` (step ``total``, held after)."""
    if total <= 0:
        return end
    progress = min(max(step / total, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(step: int, total: int, warmup: int, peak: float, final: float) -> float:
    """Return a linear ramp from 0 to ``peak`` over ``warmup`` steps, then a cosine to ``final`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return cosine(step - warmup, total - warmup, peak, final)


@dataclass(frozen=True)
class ScheduleValues:
    """Hyperparameters of one optimisation step."""

    learning_rate: float
    weight_decay: float
    teacher_momentum: float
    teacher_temperature: float
    freeze_last_layer: bool
