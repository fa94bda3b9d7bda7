"""WeCLIP's refinement module (RFM, spec section 6) and online pseudo label (section 7).

Early phase: the mean attention of the last 8 blocks, i.e. CLIP-ES's CAA (:mod:`clipes.caa`).
Late phase: among the last ``late_blocks`` blocks, those whose signed sum ``sum(A_f - A_l)`` is at
most the mean are averaged and multiplied by the decoder affinity ``A_f``. Both then go through
CAA's Sinkhorn / symmetrise / square and the per-class box masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clipes import caa
from clipes.par import par_refine

EARLY_BLOCKS = 8
LATE_BLOCKS = {"voc12": 6, "coco14": 10, "custom": 6}
BOX_THRESHOLD = caa.DEFAULT_BOX_THRESHOLD


def select_blocks(candidates: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
    """The late phase's block selection, exactly as coded (signed float32 sums, ``<=`` the mean).

    Args:
        candidates: ``[S, N, N]`` patch attention of the candidate blocks.
        affinity: ``[N, N]`` decoder affinity A_f.

    Returns:
        ``[S]`` float32 of 0/1.
    """
    diff = torch.sum((affinity.unsqueeze(0) - candidates).flatten(1), dim=1)  # [S]
    keep = torch.zeros_like(diff)
    keep[diff <= torch.mean(diff)] = 1
    return keep


@dataclass
class RfmAttention:
    """The attention an image's CAMs are propagated with.

    Attributes:
        attention: ``[N, N]`` before Sinkhorn.
        selection: ``[S]`` blocks used (late phase), else None.
    """

    attention: torch.Tensor
    selection: torch.Tensor | None = None


def rfm_attention(blocks: torch.Tensor, affinity: torch.Tensor | None, late: bool, late_blocks: int = 6,
                  early_blocks: int = EARLY_BLOCKS) -> RfmAttention:
    """Aggregate an image's attention maps for the RFM.

    Args:
        blocks: ``[L, T, T]`` head-averaged attention of all blocks, last block included.
        affinity: ``[N, N]`` decoder affinity (detached); needed when ``late``.
        late: decoder-guided phase.
        late_blocks: candidates of the late phase (VOC 6, COCO 10).
        early_blocks: blocks averaged in the early phase (8).

    Returns:
        :class:`RfmAttention`.
    """
    patches = blocks[:, 1:, 1:]
    if not late:
        return RfmAttention(torch.mean(patches[-early_blocks:], dim=0))
    candidates = patches[-late_blocks:]
    keep = select_blocks(candidates, affinity)
    weights = keep.reshape(-1, 1, 1).expand_as(candidates)
    mean = torch.sum(weights * candidates, dim=0) / (torch.sum(weights, dim=0) + 1e-5)
    return RfmAttention(mean * affinity, keep)


def refine_patch_cams(attention: torch.Tensor, cams: torch.Tensor, threshold: float) -> torch.Tensor:
    """CAA propagation of an image's CAMs on the patch grid.

    Args:
        attention: ``[N, N]`` from :func:`rfm_attention`.
        cams: ``[K, h, w]`` initial CAMs.
        threshold: box threshold (VOC 0.4, COCO 0.7).

    Returns:
        ``[K, h, w]`` refined maps before normalisation.
    """
    trans = caa.affinity_from_attention(attention.float(), rounds=3, power=2)
    cams_np = cams.detach().float().cpu().numpy()
    masks = torch.from_numpy(np.stack([caa.box_mask(c, threshold)[0] for c in cams_np])).to(trans.device)
    return caa.refine_on_grid(trans, cams.float().to(trans.device), masks, power=1)


def label_scores(refined: torch.Tensor, guide: torch.Tensor, size: tuple[int, int], bg_power: float = 1.0,
                 par: bool = True) -> torch.Tensor:
    """Class scores of the online pseudo label: normalise, resize, add background, PAR.

    Args:
        refined: ``[K, h, w]`` refined patch maps.
        guide: ``[3, H0, W0]`` normalised image PAR is guided by (resized to ``size``).
        size: ``(H, W)`` of the label.
        bg_power: exponent of ``1 - max`` (reference 1).
        par: run PAR (reference: yes).

    Returns:
        ``[K+1, H, W]`` float32, background first.
    """
    maps = caa.upsample_maps(refined.detach().float().cpu().numpy(), size)  # [K, H, W]
    maps = torch.from_numpy(maps).to(guide.device)
    bg = torch.pow(1 - torch.max(maps, dim=0, keepdim=True)[0], bg_power)
    stack = torch.cat([bg, maps], dim=0)  # [K+1, H, W]
    if par:
        with torch.no_grad():
            stack = par_refine(guide.unsqueeze(0).float(), stack.unsqueeze(0).float())[0]
    return stack


def pseudo_label(scores: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """``[0, c_1+1, ..., c_K+1][argmax]`` of :func:`label_scores`: ``[H, W]`` int64, no ignore value."""
    keys = torch.tensor([0] + [c + 1 for c in classes], device=scores.device)
    return keys[scores.argmax(dim=0)]
