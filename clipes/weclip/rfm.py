"""WeCLIP's refinement module (RFM, spec section 6) and online pseudo label (section 7).

Early phase: the mean attention of the last 8 blocks, i.e. CLIP-ES's CAA (:mod:`clipes.maps.caa`).
Late phase: among the last ``late_blocks`` blocks, those whose signed sum ``sum(A_f - A_l)`` is at
most the mean are averaged and multiplied by the decoder affinity ``A_f``. Both then go through
CAA's Sinkhorn / symmetrise / square and the per-class box masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clipes.maps import caa
from clipes.maps.par import par_refine

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


def refine_patch_cams(attention: torch.Tensor, cams: torch.Tensor, threshold: float,
                      weights: torch.Tensor | None = None, boxes: bool = True) -> torch.Tensor:
    """CAA propagation of an image's CAMs on the patch grid.

    Args:
        attention: ``[N, N]`` from :func:`rfm_attention`.
        cams: ``[K, h, w]`` initial CAMs.
        threshold: box threshold (VOC 0.4, COCO 0.7).
        weights: ``[K, h, w]`` multiplied into the CAMs before the propagation (WeCLIP+'s RFM+: the
            decoder's probability of each class); the boxes still come from the CAMs themselves.
        boxes: restrict each class's sources to its CAM's boxes (False: everywhere, WeCLIP+ VOC).

    Returns:
        ``[K, h, w]`` refined maps before normalisation.
    """
    trans = caa.affinity_from_attention(attention.float(), rounds=3, power=2)
    cams = cams.float().to(trans.device)
    if boxes:
        cams_np = cams.detach().cpu().numpy()
        masks = torch.from_numpy(np.stack([caa.box_mask(c, threshold)[0] for c in cams_np])).to(trans.device)
    else:
        masks = torch.ones_like(cams)
    sources = cams if weights is None else cams * weights.float().to(trans.device)
    return caa.refine_on_grid(trans, sources, masks, power=1)


def label_maps(refined: torch.Tensor, size: tuple[int, int], bg_power: float = 1.0) -> torch.Tensor:
    """PAR's input: min-max, bilinear (OpenCV) to ``size``, background ``(1 - max) ** bg_power`` first.

    Args:
        refined: ``[K, h, w]`` refined patch maps.
        size: ``(H, W)`` of the label.

    Returns:
        ``[K+1, H, W]`` float32 on ``refined``'s device.
    """
    maps = torch.from_numpy(caa.upsample_maps(refined.detach().float().cpu().numpy(), size)).to(refined.device)
    bg = torch.pow(1 - torch.max(maps, dim=0, keepdim=True)[0], bg_power)
    return torch.cat([bg, maps], dim=0)


def label_scores(refined: torch.Tensor, guide: torch.Tensor, size: tuple[int, int], bg_power: float = 1.0,
                 par: bool = True) -> torch.Tensor:
    """Class scores of the online pseudo label: :func:`label_maps`, then PAR guided by the image.

    Args:
        refined: ``[K, h, w]`` refined patch maps.
        guide: ``[3, H0, W0]`` normalised image PAR is guided by (resized to ``size``).
        size: ``(H, W)`` of the label.
        bg_power: exponent of ``1 - max`` (reference 1).
        par: run PAR (reference: yes).

    Returns:
        ``[K+1, H, W]`` float32, background first.
    """
    stack = label_maps(refined, size, bg_power).to(guide.device)
    if par:
        with torch.no_grad():
            stack = par_refine(guide.unsqueeze(0).float(), stack.unsqueeze(0).float())[0]
    return stack


def batch_label_scores(refined: list[torch.Tensor], guides: torch.Tensor, bg_power: float = 1.0) -> list[torch.Tensor]:
    """:func:`label_scores` of a batch of same-size images in one PAR call.

    PAR is linear in the maps, so images with fewer classes are padded with all-zero channels,
    which stay zero; each image keeps its own ``K+1`` channels.

    Args:
        refined: per image ``[K_b, h, w]``.
        guides: ``[B, 3, H, W]``; the labels get this size.

    Returns:
        Per image ``[K_b + 1, H, W]``.
    """
    size = tuple(guides.shape[-2:])
    stacks = [label_maps(r, size, bg_power).to(guides.device) for r in refined]
    depth = max(s.shape[0] for s in stacks)
    batch = torch.zeros((len(stacks), depth, *size), dtype=torch.float32, device=guides.device)
    for i, s in enumerate(stacks):
        batch[i, :s.shape[0]] = s
    with torch.no_grad():
        batch = par_refine(guides.float(), batch)
    return [batch[i, :s.shape[0]] for i, s in enumerate(stacks)]


def pseudo_label(scores: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """``[0, c_1+1, ..., c_K+1][argmax]`` of :func:`label_scores`: ``[H, W]`` int64, no ignore value."""
    keys = torch.tensor([0] + [c + 1 for c in classes], device=scores.device)
    return keys[scores.argmax(dim=0)]
