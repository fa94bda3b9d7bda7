"""WeCLIP's trainable decoder (spec section 8): fusion head, transformer decoder, affinity.

Module names follow the reference's ``state_dict`` (``decoder_fts_fuse.*``, ``decoder.*``) so a
reference checkpoint loads as it is. Sizes are read off a state dict by
:func:`decoder_config`: width E, classes, and one fusion branch per frozen block.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from clipes.weclip.tower import reference_block


class BranchMLP(nn.Module):
    """Per-token ``Linear(C -> E) -> ReLU -> Linear(E -> E)`` of one block's tokens."""

    def __init__(self, in_dim: int, width: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, width)
        self.proj_2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` -> ``[B, N, E]``."""
        x = x.flatten(2).transpose(1, 2)  # [B, N, C]
        return self.proj_2(F.relu(self.proj(x)))


class FusionHead(nn.Module):
    """One :class:`BranchMLP` per frozen block, concatenated in block order, 1x1 fuse, Dropout2d(0.1).

    Args:
        in_dim: CLIP width C.
        width: decoder width E.
        branches: number of fused blocks (CLIP blocks minus one).
    """

    def __init__(self, in_dim: int, width: int, branches: int, dropout: float = 0.1):
        super().__init__()
        self.linears_modulelist = nn.ModuleList(BranchMLP(in_dim, width) for _ in range(branches))
        self.linear_fuse = nn.Conv2d(width * branches, width, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """``[L-1, B, C, h, w]`` block maps -> fused features ``F [B, E, h, w]``."""
        _, b, _, h, w = maps.shape
        parts = [branch(maps[i].float()).permute(0, 2, 1).reshape(b, -1, h, w)
                 for i, branch in enumerate(self.linears_modulelist)]
        return self.dropout(self.linear_fuse(torch.cat(parts, dim=1)))


class DecoderBlock(nn.Module):
    """Pre-LN residual block: ``x += MHA(LN1 x); x += MLP(LN2 x)``, QuickGELU, no positions."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(width * 4, width)),
        ]))
        self.ln_2 = nn.LayerNorm(width)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Blocks(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.Sequential(*[DecoderBlock(width, heads) for _ in range(layers)])


class TransformerDecoder(nn.Module):
    """3 pre-LN blocks on the fused tokens, then a 1x1 classifier at patch resolution.

    Args:
        width: E.
        num_classes: outputs including background (VOC 21, COCO 81).
        layers, heads: reference 3 and 8.
        fp16_out_proj: the reference's fp16 attention out-projection (default on).
    """

    def __init__(self, width: int, num_classes: int, layers: int = 3, heads: int = 8, fp16_out_proj: bool = True):
        super().__init__()
        self.transformer = _Blocks(width, layers, heads)
        self.linear_pred = nn.Conv2d(width, num_classes, kernel_size=1)
        self.fp16_out_proj = fp16_out_proj

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        """``F [B, E, h, w]`` -> logits ``[B, classes, h, w]``."""
        b, c, h, w = fused.shape
        x = fused.reshape(b, c, h * w).permute(2, 0, 1)  # [N, B, E]
        for block in self.transformer.resblocks:
            x, _ = reference_block(block, x, fp16_out_proj=self.fp16_out_proj)
        x = x.permute(1, 2, 0).reshape(b, c, h, w)
        return self.linear_pred(x)


class WeCLIPDecoder(nn.Module):
    """Everything WeCLIP trains: fusion head (``decoder_fts_fuse``) + decoder (``decoder``).

    Args:
        clip_width: C.
        branches: frozen blocks fused (CLIP blocks - 1).
        width: E (reference 256).
        num_classes: outputs including background.
    """

    def __init__(self, clip_width: int, branches: int, width: int = 256, num_classes: int = 21,
                 fp16_out_proj: bool = True, layers: int = 3, heads: int = 8):
        super().__init__()
        self.decoder_fts_fuse = FusionHead(clip_width, width, branches)
        self.decoder = TransformerDecoder(width, num_classes, layers, heads, fp16_out_proj)
        self.config = {"clip_width": clip_width, "branches": branches, "width": width,
                       "num_classes": num_classes, "layers": layers, "heads": heads}

    def forward(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[L-1, B, C, h, w]`` -> ``(fused F [B, E, h, w], logits [B, classes, h, w])``."""
        fused = self.decoder_fts_fuse(maps)
        return fused, self.decoder(fused)


def decoder_affinity(fused: torch.Tensor) -> torch.Tensor:
    """``A_f = sigmoid(F^T F)`` per image, raw dot products: ``[B, E, h, w]`` -> ``[B, N, N]``."""
    b, e, h, w = fused.shape
    flat = fused.reshape(b, e, h * w)
    return torch.sigmoid(flat.transpose(2, 1).bmm(flat))


def decoder_config(state: dict[str, torch.Tensor]) -> dict:
    """Sizes of a decoder state dict (keys without any ``module.`` prefix).

    Raises:
        KeyError: a key the decoder always has is missing.
    """
    fuse = state["decoder_fts_fuse.linear_fuse.weight"]  # [E, E * branches, 1, 1]
    width = int(fuse.shape[0])
    layers = len({k.split(".")[3] for k in state if k.startswith("decoder.transformer.resblocks.")})
    return {
        "clip_width": int(state["decoder_fts_fuse.linears_modulelist.0.proj.weight"].shape[1]),
        "branches": int(fuse.shape[1]) // width,
        "width": width,
        "num_classes": int(state["decoder.linear_pred.weight"].shape[0]),
        "layers": layers,
        "heads": 8,
    }
