"""Pixel-adaptive refinement (PAR, from AFA), as WeCLIP uses it on its online pseudo labels.

Each pixel's class scores are repeatedly replaced by a weighted sum over 8 neighbours at each of
several dilations (replicate padding, centre excluded). The weights are a softmax over the
neighbours of a colour term (absolute differences scaled by the per-pixel std over the
neighbours) plus ``w2`` times a softmax of a fixed position term. Batched, any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# The 8 neighbours of a 3x3 window in the order the reference stacks them (centre excluded).
_OFFSETS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))
_DIAGONAL = (True, False, True, False, False, True, False, True)


def _kernel(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    weight = torch.zeros(8, 1, 3, 3, device=device, dtype=dtype)
    for i, (r, c) in enumerate(_OFFSETS):
        weight[i, 0, r, c] = 1
    return weight


def dilated_neighbours(x: torch.Tensor, dilations: tuple[int, ...]) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, C, 8 * len(dilations), H, W]``, dilation-major, replicate padding."""
    b, c, h, w = x.shape
    kernel = _kernel(x.device, x.dtype)
    out = []
    for d in dilations:
        padded = F.pad(x, [d] * 4, mode="replicate").reshape(b * c, 1, h + 2 * d, w + 2 * d)
        out.append(F.conv2d(padded, kernel, dilation=d).view(b, c, -1, h, w))
    return torch.cat(out, dim=2)


def par_weights(images: torch.Tensor, dilations: tuple[int, ...], w1: float = 0.3, w2: float = 0.01) -> torch.Tensor:
    """Neighbour weights ``[B, 1, 8 * len(dilations), H, W]`` from guide images ``[B, 3, H, W]``."""
    neighbours = dilated_neighbours(images, dilations)  # [B, 3, M, H, W]
    m = neighbours.shape[2]
    diff = torch.abs(neighbours - images.unsqueeze(2))
    std = torch.std(neighbours, dim=2, keepdim=True)
    colour = (-(diff / (std + 1e-8) / w1) ** 2).mean(dim=1, keepdim=True)  # [B, 1, M, H, W]
    rho = torch.tensor([d * (math.sqrt(2) if diag else 1.0) for d in dilations for diag in _DIAGONAL],
                       dtype=torch.float32, device=images.device)  # [M]
    rho = rho.to(torch.float32)
    position = -(rho / (torch.std(rho) + 1e-8) / w1) ** 2  # [M]
    position = F.softmax(position, dim=0).view(1, 1, m, 1, 1).to(images.dtype)
    return F.softmax(colour, dim=2) + w2 * position


def par_refine(images: torch.Tensor, masks: torch.Tensor, dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24),
               iterations: int = 20, w1: float = 0.3, w2: float = 0.01) -> torch.Tensor:
    """Refine class score maps with PAR.

    Args:
        images: ``[B, 3, H0, W0]`` guide images (any per-channel normalisation: the colour term is
            invariant to it); resized bilinearly (align_corners=True) to the maps' size.
        masks: ``[B, K, H, W]`` score maps.
        dilations, iterations, w1, w2: reference values by default.

    Returns:
        ``[B, K, H, W]`` refined maps.
    """
    images = F.interpolate(images, size=masks.shape[-2:], mode="bilinear", align_corners=True)
    weights = par_weights(images, dilations, w1, w2)  # [B, 1, M, H, W]
    for _ in range(iterations):
        masks = (dilated_neighbours(masks, dilations) * weights).sum(2)
    return masks
