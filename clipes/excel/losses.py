"""ExCEL's segmentation loss (spec 9): WeCLIP's split cross-entropy with counted means.

Each half (background pixels, foreground pixels) is ``sum(CE) / (count + 1e-6)``, so an empty half
gives 0 exactly as the reference does (WeCLIP's mean gives NaN there). The affinity labels and the
affinity loss are WeCLIP's (:mod:`clipes.weclip.losses`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipes.weclip.losses import IGNORE, split_halves


def _counted_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    count = (labels != IGNORE).long().sum()
    return F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="none").sum() / (count + 1e-6)


def seg_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(bg + fg) / 2`` with each half a counted mean (spec 9).

    Args:
        logits: ``[B, K+1, H, W]`` at the label size.
        labels: ``[B, H, W]`` int64 (0 background, >0 classes, 255 ignored).

    Returns:
        ``(loss, bg_ce, fg_ce)``.
    """
    bg, fg = split_halves(labels)  # the halves as WeCLIP's; only the mean differs
    bg_ce, fg_ce = _counted_ce(logits, bg), _counted_ce(logits, fg)
    return (bg_ce + fg_ce) * 0.5, bg_ce, fg_ce
