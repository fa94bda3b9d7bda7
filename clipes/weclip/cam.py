"""WeCLIP's initial CAM (spec section 5): clipes' softmax-GradCAM on the frozen pass's last block.

Same target, layer, pooling and arithmetic as CLIP-ES (:mod:`clipes.maps.gradcam`); what differs is
where the input comes from (the batch's own frozen pass, ImageNet-normalised), the fp16 attention
out-projection of the reference, and that the last block's attention feeds the RFM.

``method="analytic"`` (default) runs the last block once for the whole batch and gets every class's
GradCAM weights in closed form; ``"autograd"`` runs it per image with one backward per class, as
the reference does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipes.backbones.vit import DenseViT, reference_attention
from clipes.maps.gradcam import GRAD_METHODS, LastBlockPass, SoftmaxTarget, cam_from_weights, class_weights


@dataclass
class ImageCams:
    """Initial CAMs of one image.

    Attributes:
        cams: ``[K, h, w]`` float32, twice min-max normalised, rows in the order of ``classes``.
        scores: ``[K+Bg]`` softmax over [present classes, background prompts].
        last_attention: ``[T, T]`` head-averaged attention of the last block (CLS first).
    """

    cams: torch.Tensor
    scores: torch.Tensor
    last_attention: torch.Tensor


def last_block_cams(vit: DenseViT, x: torch.Tensor, grid: tuple[int, int], fg_features: list[torch.Tensor],
                    bg_features: torch.Tensor, logit_scale: torch.Tensor, method: str = "analytic",
                    fp16_out_proj: bool = True) -> list[ImageCams]:
    """Softmax-GradCAM of every present class of every image, from the last block's input.

    Args:
        vit: the wrapped tower (its last block is run here).
        x: ``[T, B, C]`` output of the second-to-last block.
        grid: ``(h, w)``, N = h * w = T - 1.
        fg_features: per image ``[K_b, D]`` text features of its classes, ascending (K_b >= 1).
        bg_features: ``[Bg, D]``.
        logit_scale: CLIP's ``logit_scale``.
        method: ``"analytic"`` or ``"autograd"``.
        fp16_out_proj: the reference's fp16 out-projection in the last block.

    Returns:
        One :class:`ImageCams` per image.
    """
    if method not in GRAD_METHODS:
        raise ValueError(f"unknown gradient method {method!r}; expected one of {GRAD_METHODS}")
    h, w = grid
    x = x.detach().float()
    proj = vit.visual.proj
    out = []
    with torch.no_grad():
        if method == "analytic":
            last = LastBlockPass(vit, x, fp16_out_proj=fp16_out_proj)
            attention = last.probs.sum(dim=1) / vit.num_heads  # [B, T, T], as the reference averages
        for i, fg in enumerate(fg_features):
            target = SoftmaxTarget(fg, bg_features, logit_scale, proj)
            analytic = last if method == "analytic" else None
            scores, weights, activation = class_weights(vit, x, i, target, analytic, fp16_out_proj)
            if analytic is not None:
                attn_i = attention[i]
            else:  # the block-12 attention of the image's own pass, as the reference's GradCAM returns it
                block = vit.blocks[-1]
                a = block.ln_1(x[:, i:i + 1])
                if fp16_out_proj:
                    attn_i = reference_attention(block.attn, a)[1][0]
                else:
                    attn_i = block.attn(a, a, a, need_weights=True, average_attn_weights=True)[1][0]
            out.append(ImageCams(cams=cam_from_weights(weights, activation, h, w), scores=scores,
                                 last_attention=attn_i))
    return out
