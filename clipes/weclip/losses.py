"""WeCLIP's losses (spec section 9) and the affinity labels they use.

Functional cores; the training loop (and any mmengine wrapper) holds the scalars.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = 255


def _mean_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy mean over the non-ignored pixels; 0 (still in the graph) when there are none."""
    if bool((labels != IGNORE).any()):
        return F.cross_entropy(logits, labels, ignore_index=IGNORE)
    return logits.sum() * 0.0


def seg_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(CE over background pixels + CE over foreground pixels) / 2``, each a mean over the batch.

    A half with no pixel contributes 0: the reference gets NaN there (and its weights with it);
    wherever the reference is finite the two are equal.

    Args:
        logits: ``[B, K+1, H, W]`` at the label size.
        labels: ``[B, H, W]`` int64 (0 background, >0 classes, 255 ignored).

    Returns:
        ``(loss, bg_ce, fg_ce)``.
    """
    bg, fg = split_halves(labels)
    bg_ce, fg_ce = _mean_ce(logits, bg), _mean_ce(logits, fg)
    return (bg_ce + fg_ce) * 0.5, bg_ce, fg_ce


def split_halves(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The background and foreground halves of a label map for the split segmentation loss.

    Args:
        labels: ``[B, H, W]`` int64 (0 background, >0 classes, 255 ignored).

    Returns:
        ``(bg, fg)``, each ``[B, H, W]``: ``labels`` with the other half's pixels set to 255.
    """
    bg = labels.clone()
    bg[labels != 0] = IGNORE
    fg = labels.clone()
    fg[labels == 0] = IGNORE
    return bg, fg


def radius_mask(h: int, w: int, radius: int = 8) -> torch.Tensor:
    """``[N, N]`` bool: pairs of grid cells within Chebyshev distance ``radius``."""
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    return ((rows[:, None] - rows[None]).abs() <= radius) & ((cols[:, None] - cols[None]).abs() <= radius)


def affinity_labels(labels: torch.Tensor, patch: int = 16, radius: int = 8) -> torch.Tensor:
    """Pairwise labels on the patch grid: 1 same class, 0 different, 255 beyond ``radius`` or ignored.

    Args:
        labels: ``[B, H, W]`` pseudo labels.

    Returns:
        ``[B, N, N]`` uint8, N = (H // patch) * (W // patch).
    """
    b, h, w = labels.shape
    small = F.interpolate(labels.unsqueeze(1).float(), size=[h // patch, w // patch], mode="nearest")
    flat = small.reshape(b, -1)  # [B, N]
    out = (flat[:, :, None] == flat[:, None, :]).to(torch.uint8)
    far = ~radius_mask(h // patch, w // patch, radius).to(labels.device)
    out[:, far] = IGNORE
    ignored = flat == IGNORE
    out[ignored.unsqueeze(1).expand_as(out)] = IGNORE
    out[ignored.unsqueeze(2).expand_as(out)] = IGNORE
    return out


def affinity_loss(affinity: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """``1/2 sum_pos (1 - A) / (n_pos + 1) + 1/2 sum_neg A / (n_neg + 1)`` over the batch.

    Args:
        affinity: ``[B, N, N]`` sigmoid affinities A_f.
        labels: ``[B, N, N]`` from :func:`affinity_labels`.

    Returns:
        ``(loss, n_pos + 1, n_neg + 1)``.
    """
    pos = (labels == 1).to(affinity.dtype)
    neg = (labels == 0).to(affinity.dtype)
    pos_count = int((labels == 1).sum()) + 1
    neg_count = int((labels == 0).sum()) + 1
    loss = 0.5 * torch.sum(pos * (1 - affinity)) / pos_count + 0.5 * torch.sum(neg * affinity) / neg_count
    return loss, pos_count, neg_count
