"""One ExCEL step on a batch (spec 3-10) and its inference (spec 12).

:class:`ExCEL` holds the surgery CLIP (:mod:`clipes.excel.surgery`), the enriched text features
(:mod:`clipes.excel.attributes`) and the trainable decoder (:mod:`clipes.excel.decoder`). Per batch:
one surgery forward gives the twelve decoder maps, the attention of every block and the calibrated
image tokens; the decoder gives the fused features, the logits and A_f; the patch-text feature
surgery gives the static CAM. In the dynamic phase a second surgery forward adds the LVC map of the
(detached) fused features and gives the dynamic CAM. Per image: the refinement (WeCLIP's RFM on the
last six maps: their mean, or the decoder-guided selection x A_f; CAA's Sinkhorn and boxes), the
PAR-refined pseudo label (guided by the uint8-truncated crop, a quirk). Losses: the counted split
CE and WeCLIP's affinity loss on A_f, with affinity labels from the pseudo labels or, late, from
the decoder's own prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from clipes.excel import losses as excel_losses
from clipes.excel.decoder import excel_affinity
from clipes.excel.surgery import SurgeryCLIP, SurgeryPass, feature_surgery, lvc_attention, lvc_map
from clipes.weclip import losses as weclip_losses
from clipes.weclip import rfm
from clipes.weclip.tower import IMAGENET_MEAN, IMAGENET_STD

ATTN_LAYERS = 6  # the refinement's candidate maps: blocks 7..12 (spec 5.2)
LVC_PASSES = ("incremental", "full")
BOX_THRESHOLD = {"voc12": 0.79, "coco14": 0.88, "custom": 0.79}
SIZE = 320
SCALES = (0.7, 1.0, 1.2, 1.5)


def truncated_guide(images: torch.Tensor) -> torch.Tensor:
    """The training PAR guide (spec 5.3, quirk): ``uint8(x * std + mean) / 255`` of normalised crops.

    Args:
        images: ``[B, 3, H, W]`` ImageNet-normalised.

    Returns:
        ``[B, 3, H, W]`` float32 in [0, 1].
    """
    out = torch.zeros_like(images)
    for c in range(3):
        out[:, c] = images[:, c] * IMAGENET_STD[c] + IMAGENET_MEAN[c]
    return out.to(torch.uint8) / 255.0


def class_maps(cams: torch.Tensor, classes: list[int], grid: tuple[int, int]) -> torch.Tensor:
    """An image's CAM columns of its classes as maps: ``[N, C]`` -> ``[K, h, w]``."""
    return cams[:, classes].t().reshape(len(classes), *grid)


@dataclass
class ImageStep:
    """Per-image intermediates of a step."""

    classes: list[int]
    cams: torch.Tensor  # [K, h, w] the CAM refined (static or dynamic)
    attention: rfm.RfmAttention
    refined: torch.Tensor  # [K, h, w]
    label: torch.Tensor  # [H, W]


@dataclass
class StepOutput:
    """Batch outputs of :meth:`ExCEL.step`."""

    surgery: SurgeryPass
    fused: torch.Tensor  # [B, E, h, w]
    logits: torch.Tensor  # [B, K+1, h, w]
    affinity: torch.Tensor  # [B, N, N], with gradient
    static_cams: torch.Tensor | None  # [B, N, C] (static phase)
    dynamic_cams: torch.Tensor | None  # [B, N, C] (dynamic phase)
    labels: torch.Tensor | None  # [B, H, W] online pseudo labels (crop size)
    images: list[ImageStep] = field(default_factory=list)


@dataclass
class LossOutput:
    """``loss = seg + 0.1 aff`` of a step with its parts."""

    loss: torch.Tensor
    seg: torch.Tensor
    aff: torch.Tensor
    bg_ce: torch.Tensor
    fg_ce: torch.Tensor
    pos_count: int
    neg_count: int
    aff_labels: torch.Tensor
    seg_pred: torch.Tensor  # [B, H, W]


class ExCEL(nn.Module):
    """Surgery CLIP + enriched text + ExCEL decoder.

    Args:
        visual: ``clip.model.VisionTransformer`` (frozen, unmodified, run in fp32).
        text: ``[T, D]`` enriched text features, the ``classes`` foreground rows first (None: the
            decoder only, e.g. for ``predict-excel``, which needs no CAM).
        classes: foreground classes C.
        decoder: :func:`clipes.excel.decoder.excel_decoder` (one branch per CLIP block); None for
            the training-free CAMs and labels only.
        mode: positional table, ``train`` (the crop's grid made once) or ``val`` (resized per
            forward); equal at the training crop.
        crop: the training crop.
        attn_layers: maps the refinement uses [6].
        box_threshold: the CAM box threshold [VOC 0.79, COCO 0.88].
        fifth: inference averages the scales at a fifth of the image size (COCO's script).
        lvc_pass: the dynamic CAM's second forward: ``incremental`` (the first forward's values and
            new path plus the LVC terms; the same function) or ``full`` (the reference's whole
            second forward).
    """

    def __init__(self, visual: nn.Module, text: torch.Tensor | None, classes: int, decoder: nn.Module | None,
                 mode: str = "train", crop: int = SIZE, attn_layers: int = ATTN_LAYERS, box_threshold: float = 0.79,
                 fifth: bool = False, lvc_pass: str = "incremental"):
        super().__init__()
        if lvc_pass not in LVC_PASSES:
            raise ValueError(f"lvc_pass must be one of {LVC_PASSES}, not {lvc_pass!r}")
        self.lvc_pass = lvc_pass
        self.clip = SurgeryCLIP(visual, mode, crop)
        config = decoder.config if decoder is not None else {"branches": self.clip.num_layers,
                                                               "clip_width": self.clip.width}
        if config["branches"] != self.clip.num_layers:
            raise ValueError(f"the decoder fuses {config['branches']} blocks; this CLIP has {self.clip.num_layers}")
        if config["clip_width"] != self.clip.width:
            raise ValueError(f"the decoder expects CLIP width {config['clip_width']}, this CLIP has {self.clip.width}")
        self.decoder = decoder
        self.register_buffer("text", None if text is None else text.float(), persistent=False)
        self.classes = int(classes)
        self.attn_layers = int(attn_layers)
        self.box_threshold = float(box_threshold)
        self.fifth = bool(fifth)

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.eval()  # frozen, always
        return self

    def cams(self, surgery: SurgeryPass) -> torch.Tensor:
        """The patch-text CAM of a surgery pass: ``[B, N, C]`` in [0, 1]."""
        return feature_surgery(surgery.image_features, self._text(), self.classes)

    def decode(self, surgery: SurgeryPass) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(fused [B, E, h, w], logits [B, K+1, h, w], A_f [B, N, N])`` of a surgery pass."""
        fused = self.decoder.decoder_fts_fuse(surgery.patch_maps())
        return fused, self.decoder.decoder(fused), excel_affinity(fused)

    def dynamic_cams(self, images: torch.Tensor, fused: torch.Tensor, surgery: SurgeryPass | None = None
                     ) -> torch.Tensor:
        """The LVC second forward's CAM (spec 7): ``[B, N, C]``.

        Args:
            images: the batch (used by the ``full`` pass).
            fused: ``[B, E, h, w]`` the fused features of the same batch.
            surgery: the first forward of the batch (the ``incremental`` pass builds on it).
        """
        if self.lvc_pass == "incremental" and surgery is not None and surgery.values:
            tokens = self.clip.calibrated(surgery, lvc_map(fused.detach()))
            return feature_surgery(tokens, self._text(), self.classes)
        return self.cams(self.clip(images, lvc_attention(fused.detach(), self.clip.heads)))

    def _text(self) -> torch.Tensor:
        if self.text is None:
            raise ValueError("this ExCEL model was built without text features (no attribute bank)")
        return self.text

    def refine(self, cams: torch.Tensor, attention: torch.Tensor, affinity: torch.Tensor | None,
               threshold: float | None = None) -> tuple[rfm.RfmAttention, torch.Tensor]:
        """The refinement of one image's CAMs (spec 5.2).

        Args:
            cams: ``[K, h, w]``.
            attention: ``[blocks, L, L]`` the surgery pass's maps of this image.
            affinity: ``[N, N]`` A_f (detached) for the decoder-guided refinement, None for the mean.
            threshold: box threshold [the model's].

        Returns:
            ``(aggregated attention, refined maps [K, h, w])``.
        """
        guided = affinity is not None
        agg = rfm.rfm_attention(attention, affinity, guided, self.attn_layers, early_blocks=self.attn_layers)
        threshold = self.box_threshold if threshold is None else threshold
        return agg, rfm.refine_patch_cams(agg.attention, cams, threshold)

    def step(self, images: torch.Tensor, classes: list[list[int]], dynamic: bool,
             guides: torch.Tensor | None = None) -> StepOutput:
        """Decoder outputs and online pseudo labels of a training batch.

        Args:
            images: ``[B, 3, H, W]`` ImageNet-normalised square crops.
            classes: per image its classes (0-based, ascending; at least one).
            dynamic: the dynamic phase (LVC CAM, decoder-guided refinement).
            guides: ``[B, 3, H, W]`` PAR guides [:func:`truncated_guide` of the images].

        Returns:
            :class:`StepOutput`.
        """
        surgery = self.clip(images)
        fused, logits, affinity = self.decode(surgery)
        static = None if dynamic else self.cams(surgery)  # the dynamic phase refines the dynamic CAM only
        used = self.dynamic_cams(images, fused, surgery) if dynamic else static
        out = []
        refined = []
        for i, keys in enumerate(classes):
            cams = class_maps(used[i], keys, surgery.grid)
            agg, ref = self.refine(cams, surgery.attention[:, i], affinity[i].detach() if dynamic else None)
            out.append(ImageStep(keys, cams, agg, ref, None))
            refined.append(ref)
        guides = truncated_guide(images) if guides is None else guides
        scores = rfm.batch_label_scores(refined, guides)
        for item, s in zip(out, scores):
            item.label = rfm.pseudo_label(s, item.classes)
        labels = torch.stack([o.label for o in out])
        return StepOutput(surgery, fused, logits, affinity, static, used if dynamic else None, labels, out)

    @staticmethod
    def losses(step: StepOutput, self_affinity: bool, aff_weight: float = 0.1) -> LossOutput:
        """``L_seg + 0.1 L_aff`` (spec 9).

        Args:
            self_affinity: the affinity labels come from the decoder's prediction (VOC: iteration
                24,000 on) instead of the pseudo labels.
        """
        labels = step.labels.long()
        logits = F.interpolate(step.logits, size=labels.shape[1:], mode="bilinear", align_corners=False)
        seg, bg_ce, fg_ce = excel_losses.seg_loss(logits, labels)
        seg_pred = torch.argmax(logits.detach(), dim=1)
        aff_labels = weclip_losses.affinity_labels(seg_pred if self_affinity else labels)
        aff, pos, neg = weclip_losses.affinity_loss(step.affinity, aff_labels)
        return LossOutput(seg + aff_weight * aff, seg, aff, bg_ce, fg_ce, pos, neg, aff_labels, seg_pred)

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Decoder logits only: ``[B, 3, S, S]`` -> ``[B, K+1, S/16, S/16]``."""
        surgery = self.clip(images)
        return self.decoder.decoder(self.decoder.decoder_fts_fuse(surgery.patch_maps()))

    @torch.no_grad()
    def predict_logits(self, image: torch.Tensor, size: int = SIZE, scales: tuple[float, ...] = SCALES,
                       flip: bool = True, fifth: bool | None = None) -> torch.Tensor:
        """Multi-scale + flip logits of one image at its own size (spec 12).

        The image is resized to ``size x size``; at each scale ``s`` to ``int(size s)`` squared.
        Scale 1 contributes its unflipped logits only (quirk; its flipped forward, unused by the
        reference, is skipped); the other scales ``(seg(x) + flip(seg(flip x))) / 2``. Each is
        resized (bilinear) to the image size and the mean is taken in the reference's order (scale
        1 first). ``fifth`` [the model's]: COCO's script, which averages at a fifth of the image
        size and flip-averages scale 1 too.

        Args:
            image: ``[1, 3, H, W]`` normalised, at the original size.

        Returns:
            ``[1, K+1, H, W]`` (``fifth``: ``[1, K+1, int(H/5), int(W/5)]``).
        """
        _, _, h, w = image.shape
        fifth = self.fifth if fifth is None else fifth
        target = (int(0.2 * h), int(0.2 * w)) if fifth else (h, w)
        ordered = [1.0] + [s for s in scales if s != 1.0] if 1.0 in scales else list(scales)
        parts = []
        for scale in ordered:
            side = size if scale == 1.0 else int(size * scale)
            x = F.interpolate(image, size=[side, side], mode="bilinear", align_corners=False)
            both = flip and (scale != 1.0 or fifth)
            segs = self.segment(torch.cat([x, x.flip(-1)], dim=0) if both else x)
            segs = F.interpolate(segs, size=target, mode="bilinear", align_corners=False)
            parts.append((segs[:1] + segs[1:].flip(-1)) / 2 if both else segs[:1])
        return torch.mean(torch.stack(parts, dim=0), dim=0)

    @torch.no_grad()
    def training_free(self, image: torch.Tensor, classes: list[int], label_size: tuple[int, int],
                      size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor, ImageStep]:
        """The training-free CAM and pseudo label of one image (spec 12, ``infer_lam.py``).

        The image is resized to ``size x size``; static CAM; the mean of the last six maps; boxes at
        the model's threshold; PAR guided by the normalised resized image at ``label_size``.

        Args:
            image: ``[1, 3, H, W]`` normalised.
            classes: its classes in the label source's order.

        Returns:
            ``(static CAM [N, C], scores [K+1, H, W], ImageStep)``.
        """
        x = F.interpolate(image, size=[size, size], mode="bilinear", align_corners=False)
        surgery = self.clip(x)
        cams = self.cams(surgery)[0]
        maps = class_maps(cams, classes, surgery.grid)
        agg, refined = self.refine(maps, surgery.attention[:, 0], None)
        scores = rfm.label_scores(refined, x[0], label_size)
        return cams, scores, ImageStep(classes, maps, agg, refined, rfm.pseudo_label(scores, classes))

    @torch.no_grad()
    def optimized(self, image: torch.Tensor, classes: list[int], label_size: tuple[int, int],
                  size: int = SIZE) -> tuple[torch.Tensor, ImageStep]:
        """The trained model's pseudo label of one image (``infer_lam.py --training_free false``).

        The dynamic CAM of ``[x, flip x]`` (the LVC map of that pair's fused features), max-fused,
        min-max with 1e-5; refined with the decoder-guided selection x A_f of ``x`` alone.

        Returns:
            ``(scores [K+1, H, W], ImageStep)``.
        """
        x = F.interpolate(image, size=[size, size], mode="bilinear", align_corners=False)
        pair = torch.cat([x, x.flip(-1)], dim=0)
        pair_pass = self.clip(pair)  # the CLIP and the fusion head work per image: x's own pass is row 0
        fused_pair = self.decoder.decoder_fts_fuse(pair_pass.patch_maps())
        affinity = excel_affinity(fused_pair[:1])  # A_f of x alone (its batch mean is x's own)
        h, w = pair_pass.grid
        lam = self.dynamic_cams(pair, fused_pair, pair_pass).permute(0, 2, 1).reshape(2, -1, h, w)
        lam = torch.max(lam[:1], lam[1:].flip(-1))
        lam = lam + F.adaptive_max_pool2d(-lam, (1, 1))
        lam /= F.adaptive_max_pool2d(lam, (1, 1)) + 1e-5
        cams = lam.reshape(1, -1, h * w).permute(0, 2, 1)[0]
        maps = class_maps(cams, classes, pair_pass.grid)
        agg, refined = self.refine(maps, pair_pass.attention[:, 0], affinity[0])
        scores = rfm.label_scores(refined, x[0], label_size)
        return scores, ImageStep(classes, maps, agg, refined, rfm.pseudo_label(scores, classes))


def enriched_text(clip_model: nn.Module, fg_prompts: list[str], bg_prompts: list[str], template: str,
                  centres: torch.Tensor, top_k: float = 0.9) -> torch.Tensor:
    """The class and background texts (WeCLIP's prompts encoded in fp32, spec 4.1) enriched by the
    bank's centres (spec 4.3): ``[T, D]``, the classes first."""
    from clipes.backbones.text import encode_prompts_reference
    from clipes.excel.attributes import aggregate

    text = encode_prompts_reference(clip_model, list(fg_prompts) + list(bg_prompts), template, False)
    return aggregate(text, centres, len(fg_prompts), top_k)


def build_excel(clip_model: nn.Module, fg_prompts: list[str], bg_prompts: list[str], template: str,
                centres: torch.Tensor | None, decoder: nn.Module, top_k: float = 0.9, **options) -> ExCEL:
    """An :class:`ExCEL` from a loaded CLIP, the prompt strings, an attribute bank's centres (None:
    no CAMs, decoder only) and a decoder; ``options`` are :class:`ExCEL`'s keyword arguments."""
    text = None if centres is None else enriched_text(clip_model, fg_prompts, bg_prompts, template, centres, top_k)
    return ExCEL(clip_model.visual.float(), text, len(fg_prompts), decoder, **options)
