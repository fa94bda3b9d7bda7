"""One WeCLIP+ step (spec 3-9) and its multi-scale + flip inference (spec 12).

:class:`WeCLIPPlus` holds WeCLIP's frozen CLIP tower, a frozen DINOv2, the text features and the
trainable :class:`~clipes.weclip_plus.decoder.WeCLIPPlusDecoder`. Per batch: blocks 1..11 of the
CLIP (X_1..X_11 and their attention), DINO's last-layer patch tokens of the image resized to
multiples of 14, both heads and the shared decoder, A_f of the concatenated features; per image the
GradCAM of every label from block 12 on ``X_10`` (VOC; ``X_11`` for COCO), RFM+ (WeCLIP's late-phase
block selection x A_f, CAA's Sinkhorn, the CAM re-weighted by the decoder's probability), PAR and
the pseudo label. The losses add dice and the cross supervision of the two branches, and from the
override iteration on, confident predictions replace the pseudo label.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from clipes.weclip import losses as weclip_losses
from clipes.weclip import rfm
from clipes.weclip.cam import last_block_cams
from clipes.weclip.model import multiscale_flip_logits
from clipes.weclip.tower import FrozenTower
from clipes.weclip_plus.decoder import DecoderOutput, WeCLIPPlusDecoder
from clipes.weclip_plus.losses import dice_loss

OVERRIDE_THRESHOLD = 0.75


@dataclass
class ImageStep:
    """Per-image intermediates of a step."""

    classes: list[int]
    cams: torch.Tensor  # [K, h, w] GradCAMs
    scores: torch.Tensor  # [K + Bg] CLIP softmax
    probs: torch.Tensor  # [K, h, w] the decoder's probability of each label (P[k + 1])
    attention: rfm.RfmAttention
    refined: torch.Tensor  # [K, h, w]
    label: torch.Tensor  # [H, W]


@dataclass
class StepOutput:
    """Batch outputs of :meth:`WeCLIPPlus.step`."""

    decoded: DecoderOutput
    affinity: torch.Tensor  # [B, N, N], with gradient
    probs: torch.Tensor  # [B, K+1, h, w] softmax of the combined logits, detached
    labels: torch.Tensor | None  # [B, H, W] online pseudo labels (crop size)
    images: list[ImageStep] = field(default_factory=list)
    dino_tokens: torch.Tensor | None = None  # [B, N14, D]
    dino_grid: tuple[int, int] = (0, 0)


@dataclass
class LossOutput:
    """``loss = seg + 0.1 aff + 0.1 (clip<-dino + dino<-clip) + dice`` with its parts."""

    loss: torch.Tensor
    seg: torch.Tensor
    aff: torch.Tensor
    dice: torch.Tensor
    clip_from_dino: torch.Tensor
    dino_from_clip: torch.Tensor
    bg_ce: torch.Tensor
    fg_ce: torch.Tensor
    pos_count: int
    neg_count: int
    aff_labels: torch.Tensor
    online_labels: torch.Tensor  # [B, H, W] before the override
    train_labels: torch.Tensor  # after it
    override: torch.Tensor  # [B, H, W] bool
    pred_clip: torch.Tensor
    pred_dino: torch.Tensor
    pred_seg: torch.Tensor
    pred_max: torch.Tensor


class WeCLIPPlus(nn.Module):
    """Frozen CLIP + frozen DINOv2 + WeCLIP+ decoder.

    Args:
        visual: ``clip.model.VisionTransformer`` (frozen, unmodified).
        dino: :class:`clipes.backbones.dinov2.DinoV2` (frozen).
        fg_features: ``[C, D]`` class text features; bg_features ``[Bg, D]``.
        logit_scale: CLIP's ``logit_scale``.
        decoder: the trainable decoder.
        cam_block: which block output the GradCAM's last block runs on, counted from the end of
            the frozen pass (VOC 2: ``X_10``; COCO 1: ``X_11``).
        late_blocks: RFM+ candidates (VOC 6, COCO 8).
        boxes: RFM+ restricts the sources to the CAM's boxes (VOC no, COCO yes).
        box_threshold: those boxes' threshold (COCO 0.7).
        grad_method, fp16_out_proj: as WeCLIP.
    """

    def __init__(self, visual: nn.Module, dino: nn.Module, fg_features: torch.Tensor, bg_features: torch.Tensor,
                 logit_scale: torch.Tensor, decoder: WeCLIPPlusDecoder, cam_block: int = 2, late_blocks: int = 6,
                 boxes: bool = False, box_threshold: float = 0.4, grad_method: str = "analytic",
                 fp16_out_proj: bool = True):
        super().__init__()
        self.tower = FrozenTower(visual, fp16_out_proj=fp16_out_proj)
        self.dino = dino
        self.dino.requires_grad_(False)
        config = decoder.config
        if config["clip_width"] != self.tower.width:
            raise ValueError(f"the decoder expects CLIP width {config['clip_width']}, this CLIP has {self.tower.width}")
        if config["dino_width"] != dino.width:
            raise ValueError(f"the decoder expects DINO width {config['dino_width']}, this DINO has {dino.width}")
        self.decoder = decoder
        self.register_buffer("fg_features", fg_features.float(), persistent=False)
        self.register_buffer("bg_features", bg_features.float(), persistent=False)
        self.register_buffer("logit_scale", logit_scale.detach().float().reshape(()), persistent=False)
        self.cam_block = int(cam_block)
        self.late_blocks = int(late_blocks)
        self.boxes = bool(boxes)
        self.box_threshold = float(box_threshold)
        self.grad_method = grad_method
        self.fp16_out_proj = fp16_out_proj

    def train(self, mode: bool = True):
        super().train(mode)
        self.tower.eval()  # frozen, always (the reference's DINO follows train(); it has no stochastic layer)
        return self

    @torch.no_grad()
    def dino_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """DINO's ``x_norm_patchtokens`` of the batch resized (bilinear) to multiples of 14 (spec 3.2)."""
        h, w = images.shape[-2:]
        patch = self.dino.patch_size
        resized = F.interpolate(images, size=(h // patch * patch, w // patch * patch), mode="bilinear",
                                align_corners=False)
        out = self.dino(resized)
        return out["x_norm_patchtokens"], out["grid"]

    def decode(self, images: torch.Tensor):
        """The frozen passes and both branches: ``(frozen pass, dino tokens, grid, DecoderOutput)``."""
        frozen = self.tower(images)
        tokens, grid = self.dino_tokens(images)
        b = images.shape[0]
        dino_map = tokens.reshape(b, grid[0], grid[1], -1).permute(0, 3, 1, 2)  # [B, D, h14, w14]
        decoded = self.decoder(frozen.patch_maps()[-1], dino_map)
        return frozen, tokens, grid, decoded

    def step(self, images: torch.Tensor, classes: list[list[int]],
             label_sizes: list[tuple[int, int]] | None = None) -> StepOutput:
        """Decoder outputs and online pseudo labels of a batch (training or validation).

        Args:
            images: ``[B, 3, H, W]`` ImageNet-normalised crops.
            classes: per image its classes (0-based) in the label source's order (VOC: XML order).
            label_sizes: per image the size of its pseudo label (default: the crop).

        Returns:
            :class:`StepOutput`.
        """
        frozen, tokens, grid, decoded = self.decode(images)
        affinity = decoded.affinity()  # [B, N, N]
        probs = F.softmax(0.5 * decoded.seg_dino + 0.5 * decoded.seg_clip, dim=1).detach()  # P [B, K+1, h, w]
        fg = [self.fg_features[c] for c in classes]
        cams = last_block_cams(self.tower.vit, frozen.features[-self.cam_block], frozen.grid, fg, self.bg_features,
                               self.logit_scale, self.grad_method, self.fp16_out_proj)
        attentions, refined, weights = [], [], []
        for i, cam in enumerate(cams):
            blocks = torch.cat([frozen.attention[:, i], cam.last_attention[None]], dim=0)  # [L, T, T]
            attentions.append(rfm.rfm_attention(blocks, affinity[i].detach(), True, self.late_blocks))
            weights.append(probs[i][torch.tensor(classes[i], device=probs.device) + 1])  # P[k + 1]
            refined.append(rfm.refine_patch_cams(attentions[-1].attention, cam.cams, self.box_threshold,
                                                 weights=weights[-1], boxes=self.boxes))
        if label_sizes is None:
            scores = rfm.batch_label_scores(refined, images)
        else:
            scores = [rfm.label_scores(r, images[i], label_sizes[i]) for i, r in enumerate(refined)]
        out = [ImageStep(keys, cam.cams, cam.scores, p, attention, r, rfm.pseudo_label(s, keys))
               for keys, cam, p, attention, r, s in zip(classes, cams, weights, attentions, refined, scores)]
        labels = torch.stack([o.label for o in out]) if label_sizes is None else None
        return StepOutput(decoded, affinity, probs, labels, out, tokens, grid)

    @staticmethod
    def losses(step: StepOutput, override: bool, aff_weight: float = 0.1, cross_weight: float = 0.1,
               dice_weight: float = 1.0, threshold: float = OVERRIDE_THRESHOLD) -> LossOutput:
        """The loss of a training step (spec 9).

        Args:
            step: the step (labels at the crop size).
            override: replace the pseudo label by the prediction where it is confident
                (the reference: from iteration 18,001 on VOC, 40,001 on COCO).
        """
        online = step.labels.long()
        size = online.shape[1:]
        decoded = step.decoded
        segs = F.interpolate(0.5 * decoded.seg_clip + 0.5 * decoded.seg_dino, size=size, mode="bilinear",
                             align_corners=False)
        segs_clip = F.interpolate(decoded.seg_clip, size=size, mode="bilinear", align_corners=False)
        segs_dino = F.interpolate(decoded.seg_dino, size=size, mode="bilinear", align_corners=False)
        with torch.no_grad():
            _, pred_clip = torch.max(F.softmax(segs_clip, dim=1), dim=1)
            _, pred_dino = torch.max(F.softmax(segs_dino, dim=1), dim=1)
            pred_max, pred_seg = torch.max(F.softmax(segs, dim=1), dim=1)
        aff_labels = weclip_losses.affinity_labels(online)  # from the label before the override
        aff, pos, neg = weclip_losses.affinity_loss(step.affinity, aff_labels)
        mask = (pred_max > threshold) if override else torch.zeros_like(pred_max, dtype=torch.bool)
        train = torch.where(mask, pred_seg, online)
        seg, bg_ce, fg_ce = weclip_losses.seg_loss(segs, train)
        dice = dice_loss(segs, train)
        clip_from_dino = weclip_losses.seg_loss(segs_clip, pred_dino)[0]
        dino_from_clip = weclip_losses.seg_loss(segs_dino, pred_clip)[0]
        loss = seg + aff_weight * aff + cross_weight * (clip_from_dino + dino_from_clip) + dice_weight * dice
        return LossOutput(loss, seg, aff, dice, clip_from_dino, dino_from_clip, bg_ce, fg_ce, pos, neg, aff_labels,
                          online, train, mask, pred_clip, pred_dino, pred_seg, pred_max)

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Combined logits only (no CAMs): ``[B, 3, H, W]`` -> ``0.5 seg_dino + 0.5 seg_clip [B, K+1, h, w]``."""
        return self.decode(images)[3].logits

    @torch.no_grad()
    def predict_logits(self, image: torch.Tensor, long_side: int = 512, scales: tuple[float, ...] = (1.0, 1.5),
                       flip: bool = True) -> torch.Tensor:
        """Multi-scale + flip logits of one image (spec 12: long side 512, scales 1 and 1.5)."""
        return multiscale_flip_logits(self.segment, image, long_side, scales, flip)


def build_weclip_plus(clip_model: nn.Module, dino: nn.Module, fg_prompts: list[str], bg_prompts: list[str],
                      template: str, decoder: WeCLIPPlusDecoder, **options) -> WeCLIPPlus:
    """A :class:`WeCLIPPlus` from a loaded CLIP, a DINOv2, the prompt strings and a decoder
    (``options``: :class:`WeCLIPPlus`'s keyword arguments; the text features are WeCLIP's)."""
    from clipes.backbones.text import encode_prompts_reference

    fp16 = options.get("fp16_out_proj", True)
    fg = encode_prompts_reference(clip_model, fg_prompts, template, fp16)
    bg = encode_prompts_reference(clip_model, bg_prompts, template, fp16)
    return WeCLIPPlus(clip_model.visual, dino, fg, bg, clip_model.logit_scale, decoder, **options)
