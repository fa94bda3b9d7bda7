"""ExCEL's trainable part (spec 8): WeCLIP's fusion head over all twelve block maps, WeCLIP's
decoder in fp32, and a batch-centred affinity.

Module names follow the reference's ``state_dict`` (``decoder_fts_fuse.*``, ``decoder.*``), so a
reference checkpoint loads as it is. The differences from WeCLIP are parameters of WeCLIP's own
modules (one fusion branch per CLIP block instead of per block but the last; no fp16 cast in the
decoder's attention) and :func:`excel_affinity`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipes.weclip.decoder import WeCLIPDecoder, decoder_config

__all__ = ["decoder_config", "excel_affinity", "excel_decoder"]  # decoder_config: WeCLIP's, the sizes of a state dict


def excel_decoder(clip_width: int, branches: int, width: int = 256, num_classes: int = 21, layers: int = 3,
                  heads: int = 8) -> WeCLIPDecoder:
    """The decoder ExCEL trains (6.31 M parameters at ViT-B/16, E = 256, VOC; spec 8.4).

    Args:
        clip_width: C. branches: one per CLIP block (12 for ViT-B/16). width: E.
        num_classes: with background. layers, heads: the decoder transformer's (3, 8).
    """
    return WeCLIPDecoder(clip_width, branches, width, num_classes, fp16_out_proj=False, layers=layers, heads=heads)


def excel_affinity(fused: torch.Tensor, gamma: float = 3.0) -> torch.Tensor:
    """``A_f = sigmoid(3 (C_f - mean(C_f)))`` of the fused features (spec 8.3).

    ``C_f`` is the cosine similarity of the patch features; the mean runs over the **whole batch
    tensor** (quirk: an image's A_f depends on the other images of its batch).

    Args:
        fused: ``[B, E, h, w]``.

    Returns:
        ``[B, N, N]``.
    """
    b, e, h, w = fused.shape
    flat = F.normalize(fused.reshape(b, e, h * w), dim=1)
    cosine = flat.transpose(2, 1).bmm(flat)
    return torch.sigmoid((cosine - torch.mean(cosine) * 1.0) * gamma)
