"""One WeCLIP step on a batch: frozen pass, decoder, CAMs, RFM, pseudo labels, losses (spec 3-9),
and the multi-scale + flip inference of spec 12.

:class:`WeCLIP` holds the frozen tower, the text features and the trainable
:class:`~clipes.weclip.decoder.WeCLIPDecoder`; only the decoder's parameters are trainable and
only they are saved.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from clipes.weclip import losses, rfm
from clipes.weclip.cam import last_block_cams
from clipes.weclip.decoder import WeCLIPDecoder, decoder_affinity
from clipes.weclip.tower import FrozenTower


def long_side_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """``(H, W)`` with the long side resized to ``long_side``, rounded as the reference's test scripts."""
    return int(height * long_side / max(height, width)), int(width * long_side / max(height, width))


@dataclass
class ImageStep:
    """Per-image intermediates of a training (or validation) step."""

    classes: list[int]
    cams: torch.Tensor  # [K, h, w]
    scores: torch.Tensor  # [K+Bg]
    attention: rfm.RfmAttention
    refined: torch.Tensor  # [K, h, w]
    label: torch.Tensor  # [H, W]


@dataclass
class StepOutput:
    """Batch outputs of :meth:`WeCLIP.step`."""

    fused: torch.Tensor  # [B, E, h, w]
    logits: torch.Tensor  # [B, K+1, h, w]
    affinity: torch.Tensor  # [B, N, N], with gradient
    labels: torch.Tensor  # [B, H, W] online pseudo labels
    images: list[ImageStep] = field(default_factory=list)


@dataclass
class LossOutput:
    """``loss = seg + 0.1 aff`` of a step with its parts, the two CE halves, the pair counts (+1)
    and the affinity labels."""

    loss: torch.Tensor
    seg: torch.Tensor
    aff: torch.Tensor
    bg_ce: torch.Tensor
    fg_ce: torch.Tensor
    pos_count: int
    neg_count: int
    aff_labels: torch.Tensor


class WeCLIP(nn.Module):
    """Frozen CLIP tower + WeCLIP decoder.

    Args:
        visual: ``clip.model.VisionTransformer`` (frozen, used unmodified).
        fg_features: ``[C, D]`` class text features; bg_features ``[Bg, D]``.
        logit_scale: CLIP's ``logit_scale``.
        decoder: the trainable decoder (its ``branches`` must be the CLIP's blocks - 1).
        late_blocks: late-phase candidates (VOC 6, COCO 10).
        box_threshold: CAM box threshold (VOC 0.4, COCO 0.7).
        grad_method: ``analytic`` or ``autograd`` CAM gradients.
        fp16_out_proj: the reference's fp16 attention out-projections (frozen tower, CAM block).
    """

    def __init__(self, visual: nn.Module, fg_features: torch.Tensor, bg_features: torch.Tensor,
                 logit_scale: torch.Tensor, decoder: WeCLIPDecoder, late_blocks: int = 6,
                 box_threshold: float = 0.4, grad_method: str = "analytic", fp16_out_proj: bool = True):
        super().__init__()
        self.tower = FrozenTower(visual, fp16_out_proj=fp16_out_proj)
        if decoder.config["branches"] != self.tower.num_layers - 1:
            raise ValueError(f"the decoder fuses {decoder.config['branches']} blocks; this CLIP has "
                             f"{self.tower.num_layers} (needs {self.tower.num_layers - 1})")
        if decoder.config["clip_width"] != self.tower.width:
            raise ValueError(f"the decoder expects CLIP width {decoder.config['clip_width']}, "
                             f"this CLIP has {self.tower.width}")
        self.decoder = decoder
        self.register_buffer("fg_features", fg_features.float(), persistent=False)
        self.register_buffer("bg_features", bg_features.float(), persistent=False)
        self.register_buffer("logit_scale", logit_scale.detach().float().reshape(()), persistent=False)
        self.late_blocks = late_blocks
        self.box_threshold = box_threshold
        self.grad_method = grad_method
        self.fp16_out_proj = fp16_out_proj

    def train(self, mode: bool = True):
        super().train(mode)
        self.tower.eval()  # frozen, always
        return self

    def step(self, images: torch.Tensor, classes: list[list[int]], late: bool,
             label_sizes: list[tuple[int, int]] | None = None) -> StepOutput:
        """Decoder outputs and online pseudo labels of a batch.

        Args:
            images: ``[B, 3, H, W]`` ImageNet-normalised crops.
            classes: per image, its classes (0-based, ascending; at least one).
            late: decoder-guided RFM (validation and inference always are).
            label_sizes: per image the size of its pseudo label (default: the crop size); the
                reference's validation uses the original image size.

        Returns:
            :class:`StepOutput`.
        """
        frozen = self.tower(images)
        fused, logits = self.decoder(frozen.patch_maps())
        affinity = decoder_affinity(fused)  # [B, N, N]
        fg = [self.fg_features[c] for c in classes]
        cams = last_block_cams(self.tower.vit, frozen.last_input, frozen.grid, fg, self.bg_features,
                               self.logit_scale, self.grad_method, self.fp16_out_proj)
        attentions, refined = [], []
        for i, cam in enumerate(cams):
            blocks = torch.cat([frozen.attention[:, i], cam.last_attention[None]], dim=0)  # [L, T, T]
            attentions.append(rfm.rfm_attention(blocks, affinity[i].detach(), late, self.late_blocks))
            refined.append(rfm.refine_patch_cams(attentions[-1].attention, cam.cams, self.box_threshold))
        if label_sizes is None:  # labels at the crop size: one PAR call for the batch
            scores = rfm.batch_label_scores(refined, images)
        else:
            scores = [rfm.label_scores(r, images[i], label_sizes[i]) for i, r in enumerate(refined)]
        out = [ImageStep(keys, cam.cams, cam.scores, attention, r, rfm.pseudo_label(s, keys))
               for keys, cam, attention, r, s in zip(classes, cams, attentions, refined, scores)]
        labels = torch.stack([o.label for o in out]) if label_sizes is None else None
        return StepOutput(fused, logits, affinity, labels, out)

    @staticmethod
    def losses(step: StepOutput, aff_weight: float = 0.1) -> LossOutput:
        """``L_seg + 0.1 L_aff`` of a training step (labels at the crop size)."""
        labels = step.labels.long()
        logits = F.interpolate(step.logits, size=labels.shape[1:], mode="bilinear", align_corners=False)
        seg, bg_ce, fg_ce = losses.seg_loss(logits, labels)
        aff_labels = losses.affinity_labels(labels)
        aff, pos, neg = losses.affinity_loss(step.affinity, aff_labels)
        return LossOutput(seg + aff_weight * aff, seg, aff, bg_ce, fg_ce, pos, neg, aff_labels)

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Decoder logits only (no CAMs): ``[B, 3, H, W]`` -> ``[B, K+1, H//16, W//16]``."""
        frozen = self.tower(images)
        return self.decoder(frozen.patch_maps())[1]

    @torch.no_grad()
    def predict_logits(self, image: torch.Tensor, long_side: int = 512, scales: tuple[float, ...] = (1.0, 0.75),
                       flip: bool = True) -> torch.Tensor:
        """Multi-scale + flip logits of one image (spec 12), at the scale-1 logit size.

        Args:
            image: ``[1, 3, H0, W0]`` ImageNet-normalised at the original size.

        Returns:
            ``[1, K+1, h1, w1]`` mean over scales of ``(seg(x) + flip(seg(flip x))) / 2``.
        """
        return multiscale_flip_logits(self.segment, image, long_side, scales, flip)


def multiscale_flip_logits(segment, image: torch.Tensor, long_side: int, scales: tuple[float, ...],
                           flip: bool = True) -> torch.Tensor:
    """The reference's test-time augmentation around any ``segment([B, 3, H, W]) -> [B, K+1, h, w]``.

    The image is resized (bilinear) to ``long_side``; at each scale (floor sizes) the batch
    ``[x, flip x]`` gives ``(seg(x) + flip(seg(flip x))) / 2``, upsampled to the scale-1 logit size;
    the mean over scales is returned.

    Args:
        segment: logits of a batch.
        image: ``[1, 3, H0, W0]`` normalised, at the original size.

    Returns:
        ``[1, K+1, h1, w1]``.
    """
    _, _, h0, w0 = image.shape
    x = F.interpolate(image, size=long_side_size(h0, w0, long_side), mode="bilinear", align_corners=False)
    total, base = None, None
    for scale in scales:
        xs = x if scale == 1.0 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        batch = torch.cat([xs, xs.flip(-1)], dim=0) if flip else xs
        segs = segment(batch)  # [2, K+1, h, w]
        seg = (segs[:1] + segs[1:].flip(-1)) / 2 if flip else segs
        if base is None:
            base = seg.shape[-2:]
        else:
            seg = F.interpolate(seg, size=base, mode="bilinear", align_corners=False)
        total = seg if total is None else total + seg
    return total / len(scales)


def build_weclip(clip_model: nn.Module, fg_prompts: list[str], bg_prompts: list[str], template: str,
                 decoder: WeCLIPDecoder, **options) -> WeCLIP:
    """A :class:`WeCLIP` from a loaded CLIP, the prompt strings and a decoder.

    The text features are WeCLIP's (one template, the reference's fp16 out-projection in the text
    blocks when ``fp16_out_proj``); ``options`` are :class:`WeCLIP`'s keyword arguments.
    """
    from clipes.backbones.text import encode_prompts_reference

    fp16 = options.get("fp16_out_proj", True)
    fg = encode_prompts_reference(clip_model, fg_prompts, template, fp16)
    bg = encode_prompts_reference(clip_model, bg_prompts, template, fp16)
    return WeCLIP(clip_model.visual, fg, bg, clip_model.logit_scale, decoder, **options)
