"""The frozen CLIP image tower as WeCLIP runs it (spec section 3).

The reference replaces CLIP's attention by one that keeps q, k, v and the softmax in fp32 but runs
the **out-projection in fp16** (input, weight and bias cast to half), even when the model is held
in fp32 on the CPU. The same attention runs in the trainable decoder.
:func:`clipes.backbones.vit.reference_attention` reproduces it bit for bit on the CPU; ``fp16_out_proj=False``
is the clean fp32 variant.

Images go through blocks ``1..L-1`` once, without gradients, keeping each block's output (the
residual stream, CLS first) and its head-averaged attention. The last block is run by the CAM
(:mod:`clipes.weclip.cam`), which also yields its attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from clipes.backbones.vit import DenseViT, reference_block

# ImageNet statistics on 0..255 RGB: the reference normalises with these, not with CLIP's (quirk).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def normalize_image(images: np.ndarray) -> torch.Tensor:
    """ImageNet normalisation of ``[B, H, W, 3]`` (or ``[H, W, 3]``) RGB arrays, as the reference does it.

    The arithmetic follows NumPy's promotion of the input, as in the reference: a float32 array
    (training crops, after the random rescale) is normalised in float32, a decoded uint8 image
    (validation and test) in float64; the result is float32 either way and bit-identical to the
    reference's input.

    Returns:
        ``[B, 3, H, W]`` float32 (a batch of one for a single image).
    """
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    out = np.empty(array.shape, dtype=np.float32)
    for c in range(3):
        out[..., c] = (array[..., c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
    return torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2)))


@dataclass
class FrozenPass:
    """What the frozen blocks give one batch.

    Attributes:
        features: ``[L-1, T, B, C]`` outputs of blocks 1..L-1 (CLS first).
        attention: ``[L-1, B, T, T]`` their head-averaged attention.
        grid: ``(h, w)`` patch grid.
    """

    features: torch.Tensor
    attention: torch.Tensor
    grid: tuple[int, int]

    @property
    def last_input(self) -> torch.Tensor:
        """Input of the last block, ``[T, B, C]``."""
        return self.features[-1]

    def patch_maps(self) -> torch.Tensor:
        """Block outputs as maps for the decoder: ``[L-1, B, C, h, w]`` (CLS dropped, row-major)."""
        layers, _, b, c = self.features.shape
        h, w = self.grid
        return self.features[:, 1:].permute(0, 2, 3, 1).reshape(layers, b, c, h, w)


class FrozenTower(nn.Module):
    """The frozen image tower of an unmodified OpenAI CLIP ViT, run as WeCLIP runs it.

    Args:
        visual: ``clip.model.VisionTransformer``.
        fp16_out_proj: the reference's fp16 attention out-projection (default on).
        fp16_pos_embed: the reference's fp16 rounding of the interpolated positional table.
    """

    def __init__(self, visual: nn.Module, fp16_out_proj: bool = True, fp16_pos_embed: bool = True):
        super().__init__()
        self.vit = DenseViT(visual, fp16_pos_embed=fp16_pos_embed)
        self.fp16_out_proj = fp16_out_proj
        self.requires_grad_(False)

    @property
    def num_layers(self) -> int:
        return self.vit.num_layers

    @property
    def width(self) -> int:
        return self.vit.width

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> FrozenPass:
        """Blocks ``1..L-1`` on a batch.

        Args:
            images: ``[B, 3, H, W]`` ImageNet-normalised; a remainder below the patch size is
                dropped by the patch convolution.

        Returns:
            A :class:`FrozenPass`.
        """
        x = self.vit.embed(images)  # [T, B, C]
        h, w = images.shape[-2] // self.vit.patch_size, images.shape[-1] // self.vit.patch_size
        features, attention = [], []
        for block in self.vit.blocks[:-1]:
            x, probs = reference_block(block, x, fp16_out_proj=self.fp16_out_proj)
            features.append(x)
            attention.append(probs)
        return FrozenPass(torch.stack(features), torch.stack(attention), (h, w))
