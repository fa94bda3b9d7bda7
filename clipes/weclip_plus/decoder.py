"""WeCLIP+'s trainable part (spec 8): two one-branch fusion heads and one shared decoder.

Module names follow the reference's ``state_dict`` (``decoder_fts_fuse.*`` for the CLIP head,
``dino_decoder_fts_fuse.*`` for the DINO head, ``decoder.*``), so a reference checkpoint loads as it
is. The heads are WeCLIP's :class:`~clipes.weclip.decoder.FusionHead` with one branch; the decoder
is WeCLIP's :class:`~clipes.weclip.decoder.TransformerDecoder`, applied to both heads' features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clipes.weclip.decoder import FusionHead, TransformerDecoder, decoder_affinity


@dataclass
class DecoderOutput:
    """What the decoder gives a batch.

    Attributes:
        clip_features: ``F_clip [B, E, h, w]``.
        dino_native: ``[B, E, h14, w14]`` the DINO head's output on the DINO grid.
        dino_features: ``F_dino [B, E, h, w]``, the native features resized (bilinear) to the CLIP grid.
        seg_clip, seg_dino: ``[B, K+1, h, w]`` the shared decoder on each.
    """

    clip_features: torch.Tensor
    dino_native: torch.Tensor
    dino_features: torch.Tensor
    seg_clip: torch.Tensor
    seg_dino: torch.Tensor

    @property
    def logits(self) -> torch.Tensor:
        """The combined logits ``0.5 seg_clip + 0.5 seg_dino`` (training, validation, test)."""
        return 0.5 * self.seg_clip + 0.5 * self.seg_dino

    def affinity(self) -> torch.Tensor:
        """``A_f = sigmoid(G^T G)`` of ``G = [F_clip; F_dino]`` (2E channels): ``[B, N, N]``."""
        joint = torch.cat([self.clip_features, self.dino_features], dim=1)
        joint = F.interpolate(joint, size=self.clip_features.shape[-2:], mode="bilinear", align_corners=False)
        return decoder_affinity(joint)  # the reference's no-op resize kept: it sets the memory layout


class WeCLIPPlusDecoder(nn.Module):
    """Everything WeCLIP+ trains (2.93 M parameters at ViT-B/16, ViT-S/14, E = 256, VOC).

    Args:
        clip_width: C. dino_width: D. width: E (reference 256). num_classes: with background.
        layers: decoder blocks (3; 5 for a ViT-L/14 DINO). heads: 8.
        fp16_out_proj: the reference's fp16 attention out-projection in the decoder.
    """

    def __init__(self, clip_width: int, dino_width: int, width: int = 256, num_classes: int = 21,
                 layers: int = 3, heads: int = 8, fp16_out_proj: bool = True):
        super().__init__()
        self.decoder_fts_fuse = FusionHead(clip_width, width, 1)
        self.dino_decoder_fts_fuse = FusionHead(dino_width, width, 1)
        self.decoder = TransformerDecoder(width, num_classes, layers, heads, fp16_out_proj)
        self.config = {"clip_width": clip_width, "dino_width": dino_width, "width": width,
                       "num_classes": num_classes, "layers": layers, "heads": heads}

    def forward(self, clip_map: torch.Tensor, dino_map: torch.Tensor) -> DecoderOutput:
        """Both branches.

        Args:
            clip_map: ``[B, C, h, w]`` the CLIP's ``X_11`` patch tokens as a map.
            dino_map: ``[B, D, h14, w14]`` DINO's last-layer patch tokens as a map.
        """
        clip_features = self.decoder_fts_fuse(clip_map.unsqueeze(0))
        dino_native = self.dino_decoder_fts_fuse(dino_map.unsqueeze(0))
        dino_features = F.interpolate(dino_native, size=clip_features.shape[-2:], mode="bilinear",
                                      align_corners=False)
        return DecoderOutput(clip_features, dino_native, dino_features, self.decoder(clip_features),
                             self.decoder(dino_features))


def decoder_config(state: dict[str, torch.Tensor]) -> dict:
    """Sizes of a WeCLIP+ decoder state dict (reference key names).

    Raises:
        KeyError: a tensor every WeCLIP+ decoder has is missing.
    """
    width = int(state["decoder_fts_fuse.linear_fuse.weight"].shape[0])
    return {
        "clip_width": int(state["decoder_fts_fuse.linears_modulelist.0.proj.weight"].shape[1]),
        "dino_width": int(state["dino_decoder_fts_fuse.linears_modulelist.0.proj.weight"].shape[1]),
        "width": width,
        "num_classes": int(state["decoder.linear_pred.weight"].shape[0]),
        "layers": len({k.split(".")[3] for k in state if k.startswith("decoder.transformer.resblocks.")}),
        "heads": 8,
    }
