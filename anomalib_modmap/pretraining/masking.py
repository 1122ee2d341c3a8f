"""Block-wise patch masks for the iBOT objective."""

from __future__ import annotations

import math

import torch


def block_mask(
    allowed: torch.Tensor,
    ratio: float,
    min_block: int = 4,
    max_attempts: int = 10,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw a mask over a patch grid by placing random rectangles; return a bool ``(h, w)`` mask.

    ``allowed`` ``(h, w)`` bool marks the patches that may be masked (patches with enough valid
    depth). Rectangles of ``min_block`` or more patches, with aspect ratios between 0.3 and 3.3,
    are added until about ``ratio`` of the allowed patches are masked. Rectangles are clipped to
    the allowed patches, so the result may fall a little short of the target.
    """
    height, width = allowed.shape
    target = int(round(ratio * int(allowed.sum())))
    mask = torch.zeros(height, width, dtype=torch.bool)
    if target <= 0:
        return mask

    log_aspect = (math.log(0.3), math.log(1 / 0.3))
    failures = 0
    while int(mask.sum()) < target and failures < max_attempts:
        remaining = target - int(mask.sum())
        area = _uniform(min(min_block, remaining), remaining, generator)
        aspect = math.exp(_uniform(*log_aspect, generator))
        block_h = max(1, min(height, int(round(math.sqrt(area * aspect)))))
        block_w = max(1, min(width, int(round(math.sqrt(area / aspect)))))
        top = int(torch.randint(0, height - block_h + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - block_w + 1, (1,), generator=generator))

        block = torch.zeros_like(mask)
        block[top : top + block_h, left : left + block_w] = True
        added = block & allowed & ~mask
        if not added.any():
            failures += 1
            continue
        mask |= added
    return mask


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return float(low + (high - low) * torch.rand((), generator=generator))
