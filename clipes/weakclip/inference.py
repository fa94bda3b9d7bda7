"""The reference's pseudo-mask inference (spec 13): 12 views, slide windows, softmax average, CRF.

:func:`average_softmax` takes any ``forward(crop [1, 3, h, w]) -> logits [1, K, h, w]`` (the model's
``encode_decode``), so it needs no mmseg. Views are made as mmseg 0.19's test pipeline makes them:
cv2 bilinear resize of the decoded 8-bit BGR image, flip, BGR -> RGB, ImageNet normalisation.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from clipes.maps.crf import CrfParams, dense_crf

RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
IMG_SCALE = (2048, 512)
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
#: the inference CRFs of tools/make_crf.py (spec 13.4), on the plain RGB image
VOC_CRF = CrfParams(iterations=10, gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=83.0, bilateral_srgb=5.0,
                    bilateral_compat=3.0, color="rgb", fp16_probs=False)
COCO_CRF = CrfParams(iterations=10, gaussian_sxy=1.0, gaussian_compat=3.0, bilateral_sxy=67.0, bilateral_srgb=3.0,
                     bilateral_compat=4.0, color="rgb", fp16_probs=False)


def view_size(height: int, width: int, scale=IMG_SCALE, ratio: float = 1.0) -> tuple[int, int]:
    """``(h, w)`` of a keep-ratio resize to ``scale * ratio`` (mmcv's ``rescale_size``)."""
    long_edge, short_edge = int(scale[0] * ratio), int(scale[1] * ratio)
    factor = min(max(long_edge, short_edge) / max(height, width), min(long_edge, short_edge) / min(height, width))
    return int(height * float(factor) + 0.5), int(width * float(factor) + 0.5)


def normalize_bgr(bgr: np.ndarray, mean=MEAN, std=STD) -> torch.Tensor:
    """``[1, 3, H, W]`` float32: BGR uint8 -> RGB, ``(x - mean) / std``."""
    rgb = bgr[:, :, ::-1].astype(np.float32)
    x = (rgb - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def views(bgr: np.ndarray, scale=IMG_SCALE, ratios=RATIOS, flip: bool = True):
    """Yield ``(input [1, 3, h, w], flipped)`` in the reference's order (ratio major, flip minor)."""
    height, width = bgr.shape[:2]
    for ratio in ratios:
        h, w = view_size(height, width, scale, ratio)
        resized = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR)
        for flipped in ((False, True) if flip else (False,)):
            yield normalize_bgr(resized[:, ::-1] if flipped else resized), flipped


def slide_logits(forward: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, num_classes: int,
                 crop: int = 512, stride: int = 341) -> torch.Tensor:
    """Window-averaged logits ``[1, K, H, W]`` (mmseg 0.19's ``slide_inference`` without rescale)."""
    _, _, h, w = image.shape
    rows = max(h - crop + stride - 1, 0) // stride + 1
    cols = max(w - crop + stride - 1, 0) // stride + 1
    total = image.new_zeros((1, num_classes, h, w))
    count = image.new_zeros((1, 1, h, w))
    for r in range(rows):
        for c in range(cols):
            y1, x1 = r * stride, c * stride
            y2, x2 = min(y1 + crop, h), min(x1 + crop, w)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            logits = forward(image[:, :, y1:y2, x1:x2])
            total += F.pad(logits, (x1, w - x2, y1, h - y2))
            count[:, :, y1:y2, x1:x2] += 1
    return total / count


def view_softmax(forward, image: torch.Tensor, flipped: bool, size, num_classes: int, crop: int, stride: int
                 ) -> torch.Tensor:
    """One view's softmax ``[1, K, H0, W0]`` at the original size, flipped back."""
    logits = slide_logits(forward, image, num_classes, crop, stride)
    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    probs = torch.softmax(logits, dim=1)
    return probs.flip(dims=(3,)) if flipped else probs


def average_softmax(forward, bgr: np.ndarray, num_classes: int, crop: int = 512, stride: int = 341,
                    scale=IMG_SCALE, ratios=RATIOS, flip: bool = True, device="cpu") -> torch.Tensor:
    """The mean of the views' softmax maps: ``[K, H, W]`` float32 on ``device``."""
    size = bgr.shape[:2]
    total, n = None, 0
    with torch.no_grad():
        for image, flipped in views(bgr, scale, ratios, flip):
            probs = view_softmax(forward, image.to(device), flipped, size, num_classes, crop, stride)
            total = probs if total is None else total + probs
            n += 1
    return (total / n)[0]


def keys_and_probs(mean_softmax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(keys, prob [|keys|, H, W])``: the labels of the argmax and the softmax restricted to them."""
    keys = np.unique(np.argmax(mean_softmax, axis=0))
    return keys, np.ascontiguousarray(mean_softmax[keys])


def crf_mask(rgb: np.ndarray, mean_softmax: np.ndarray, params: CrfParams | None = VOC_CRF) -> np.ndarray:
    """The pseudo mask ``[H, W]`` (model labels): ``keys[argmax Q]`` of the inference CRF on the
    classes that win somewhere (spec 13.4); ``params=None``: the argmax of the averaged softmax."""
    if params is None:
        return np.argmax(mean_softmax, axis=0).astype(np.uint8)
    keys, prob = keys_and_probs(mean_softmax)
    if keys.size == 1:
        return np.full(rgb.shape[:2], keys[0], dtype=np.uint8)
    q = dense_crf(np.array(rgb, dtype=np.uint8, order="C"), prob, params)
    return keys[np.argmax(q, axis=0)].astype(np.uint8)
