"""Decode heads that hand the confidence maps to their losses, and a DeepLab-v2 head.

mmseg's ``BaseDecodeHead.loss_by_feat`` gives its losses only the label (and a pixel sampler's
weight). :class:`ConfidenceLossMixin` also stacks each sample's ``gt_confidence`` (from
``PackSegInputsWithConfidence``), pads it like the label (bottom/right, as mmseg pads) and passes
it as the per-pixel ``weight``. Samples without confidence leave the weight as it was, so the
mixed-in heads behave exactly like mmseg's in hard mode.

Registered heads: ``DeepLabV2Head`` and confidence-aware versions of mmseg's ``ASPPHead``,
``DepthwiseSeparableASPPHead`` (DeepLab-v3+) and ``FCNHead`` (the auxiliary head), named with a
``Confidence`` prefix.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.models.decode_heads import ASPPHead, DepthwiseSeparableASPPHead, FCNHead
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.losses import accuracy
from mmseg.models.utils import resize
from mmseg.registry import MODELS


def stack_confidence(batch_data_samples, size: Sequence[int]) -> torch.Tensor | None:
    """Confidence of a batch as ``[B, H, W]`` float in [0, 1], zero-padded bottom/right to ``size``.

    Returns:
        None when no sample carries ``gt_confidence``.

    Raises:
        ValueError: only some samples carry it, or one is larger than the label.
    """
    have = ["gt_confidence" in sample for sample in batch_data_samples]
    if not any(have):
        return None
    if not all(have):
        raise ValueError("some samples of the batch carry a confidence map and some do not")
    out = []
    for sample in batch_data_samples:
        conf = sample.gt_confidence.data  # [1, h, w] uint8 (0..255) or float
        conf = conf.float() / 255.0 if not conf.is_floating_point() else conf.float()
        pad_h, pad_w = size[0] - conf.shape[-2], size[1] - conf.shape[-1]
        if pad_h < 0 or pad_w < 0:
            raise ValueError(f"a confidence map of {tuple(conf.shape[-2:])} is larger than its label {tuple(size)}")
        out.append(F.pad(conf, (0, pad_w, 0, pad_h), value=0.0)[0])
    return torch.stack(out)


class ConfidenceLossMixin:
    """``loss_by_feat`` of mmseg's ``BaseDecodeHead``, passing confidence maps to the losses."""

    def loss_by_feat(self, seg_logits: torch.Tensor, batch_data_samples) -> dict:
        seg_label = self._stack_batch_gt(batch_data_samples)  # [B, 1, H, W]
        confidence = stack_confidence(batch_data_samples, seg_label.shape[-2:])  # [B, H, W] | None
        seg_logits = resize(input=seg_logits, size=seg_label.shape[2:], mode="bilinear",
                            align_corners=self.align_corners)
        weight = self.sampler.sample(seg_logits, seg_label) if self.sampler is not None else None
        if confidence is not None:
            weight = confidence.to(seg_logits.device) if weight is None else weight * confidence.to(weight.device)
        seg_label = seg_label.squeeze(1)
        losses_decode = self.loss_decode if isinstance(self.loss_decode, nn.ModuleList) else [self.loss_decode]
        loss = {}
        for loss_decode in losses_decode:
            value = loss_decode(seg_logits, seg_label, weight=weight, ignore_index=self.ignore_index)
            loss[loss_decode.loss_name] = loss[loss_decode.loss_name] + value if loss_decode.loss_name in loss else value
        loss["acc_seg"] = accuracy(seg_logits, seg_label, ignore_index=self.ignore_index)
        return loss


@MODELS.register_module()
class DeepLabV2Head(ConfidenceLossMixin, BaseDecodeHead):
    """DeepLab-v2's ASPP classifier: four dilated 3x3 convolutions straight to class scores, summed.

    Unlike mmseg's DeepLab-v3 ``ASPPHead`` there is no image pooling, no 1x1 branch, no
    normalisation and no bottleneck: each branch maps the backbone feature to ``num_classes``
    scores (weights N(0, 0.01), bias 0, as in the original) and the scores are added.

    Args:
        dilations: one branch per rate (the paper's ASPP-L: 6, 12, 18, 24).
        **kwargs: ``BaseDecodeHead`` arguments (``channels`` is unused and defaults to
            ``num_classes``; ``dropout_ratio`` applies to the input feature).
    """

    def __init__(self, dilations: Sequence[int] = (6, 12, 18, 24), **kwargs):
        kwargs.setdefault("channels", kwargs.get("num_classes", 1))
        kwargs.setdefault("dropout_ratio", 0.0)
        kwargs.setdefault("init_cfg", dict(type="Normal", std=0.01, bias=0.0, layer="Conv2d"))
        super().__init__(**kwargs)
        del self.conv_seg  # the branches are the classifier
        self.dilations = tuple(dilations)
        self.branches = nn.ModuleList(
            nn.Conv2d(self.in_channels, self.out_channels, 3, padding=rate, dilation=rate) for rate in self.dilations)

    def forward(self, inputs) -> torch.Tensor:
        """Class scores ``[B, num_classes, h, w]`` from the selected backbone feature ``[B, C, h, w]``."""
        x = self._transform_inputs(inputs)
        if self.dropout is not None:
            x = self.dropout(x)
        return sum(branch(x) for branch in self.branches)


def _confidence_aware(base: type) -> type:
    head = type(f"Confidence{base.__name__}", (ConfidenceLossMixin, base),
                {"__doc__": f"mmseg's ``{base.__name__}`` whose losses also receive the confidence maps.",
                 "__module__": __name__})
    return MODELS.register_module(module=head)


ConfidenceASPPHead = _confidence_aware(ASPPHead)
ConfidenceDepthwiseSeparableASPPHead = _confidence_aware(DepthwiseSeparableASPPHead)
ConfidenceFCNHead = _confidence_aware(FCNHead)
