"""Confidence-guided cross-entropy: a functional core and a thin registered mmseg module.

Two modes:

* ``"hard"`` (the CLIP-ES behaviour): pixels labelled ``ignore_index`` (255: confidence below the
  threshold, or padding) are left out; the loss is the mean cross-entropy of the other pixels,
  like ``nn.CrossEntropyLoss(ignore_index=255)``. A confidence map, if given, is not used.
* ``"soft"``: every labelled pixel counts, weighted by its confidence ``c`` in [0, 1]; the loss
  is ``sum(c * ce) / sum(c)`` over pixels whose label is not ``ignore_index``. Train on the
  ``labels/`` folder (no 255) with ``confidence/`` loaded by ``LoadConfidence``.

``class_balanced=True`` averages per class instead: the (weighted) mean loss of each class
present in the batch, then the plain mean over those classes, so rare classes count as much as
the background.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MODES = ("hard", "soft")


def confidence_cross_entropy(logits: torch.Tensor, label: torch.Tensor, confidence: torch.Tensor | None = None,
                             mode: str = "hard", class_balanced: bool = False, ignore_index: int = 255,
                             eps: float = 1e-12) -> torch.Tensor:
    """Confidence-guided cross-entropy (see the module docstring).

    Args:
        logits: ``[B, C, H, W]`` class scores.
        label: ``[B, H, W]`` int64 labels in ``[0, C)`` or ``ignore_index``.
        confidence: ``[B, H, W]`` weights in [0, 1]; required in soft mode.
        mode: ``"hard"`` or ``"soft"``.
        class_balanced: average per class present, then over classes.
        ignore_index: label value that never counts.

    Returns:
        Scalar loss (zero, still attached to ``logits``, when no pixel counts).
    """
    if mode not in MODES:
        raise ValueError(f"unknown confidence loss mode {mode!r}; expected one of {MODES}")
    valid = label != ignore_index  # [B, H, W]
    target = torch.where(valid, label, torch.zeros_like(label))
    ce = F.cross_entropy(logits, target, reduction="none")  # [B, H, W]
    if mode == "soft":
        if confidence is None:
            raise ValueError("the soft confidence loss needs confidence maps: load them with LoadConfidence and "
                             "pack them with PackSegInputsWithConfidence")
        weight = confidence.to(ce.dtype) * valid
    else:
        weight = valid.to(ce.dtype)
    if not class_balanced:
        return (weight * ce).sum() / weight.sum().clamp_min(eps)
    classes = logits.shape[1]
    flat = target.reshape(-1)
    loss_sum = ce.new_zeros(classes).scatter_add_(0, flat, (weight * ce).reshape(-1))  # [C]
    weight_sum = ce.new_zeros(classes).scatter_add_(0, flat, weight.reshape(-1))  # [C]
    present = weight_sum > eps
    if not present.any():
        return (weight * ce).sum()
    return (loss_sum[present] / weight_sum[present]).mean()


class ConfidenceCrossEntropyLoss(nn.Module):
    """mmseg loss module around :func:`confidence_cross_entropy`.

    The decode head passes the confidence map as ``weight`` (see ``ConfidenceLossMixin``).

    Args:
        mode: ``"hard"`` or ``"soft"``.
        class_balanced: per-class averaging.
        loss_weight: factor on the loss.
        loss_name: key in the loss dict (mmseg sums keys starting with ``loss_``).
    """

    def __init__(self, mode: str = "hard", class_balanced: bool = False, loss_weight: float = 1.0,
                 loss_name: str = "loss_ce"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown confidence loss mode {mode!r}; expected one of {MODES}")
        self.mode, self.class_balanced, self.loss_weight = mode, class_balanced, loss_weight
        self._loss_name = loss_name

    def forward(self, cls_score: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None = None,
                ignore_index: int = 255, **kwargs) -> torch.Tensor:
        return self.loss_weight * confidence_cross_entropy(cls_score, label, weight, self.mode, self.class_balanced,
                                                           ignore_index)

    @property
    def loss_name(self) -> str:
        return self._loss_name

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, class_balanced={self.class_balanced}, loss_weight={self.loss_weight}"
