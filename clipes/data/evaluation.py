"""Scoring CAMs, refined maps and masks against ground-truth label PNGs.

A :class:`Confusion` counts ``[gt class, predicted class]`` pixels, with one extra column for
pixels predicted as ignore (255). Ground-truth pixels outside ``0..n-1`` (VOC's 255 void band)
are left out. Per class: IoU ``tp / (gt + pred - tp)``, precision ``tp / pred`` and recall
``tp / gt``; the mean IoU is over the classes present in the ground truth, as the reference's
``eval_cam.py`` computes it.

Maps become labels as the reference does: the background score ``(1 - max_k map_k) ** alpha`` is
stacked before the class maps and the argmax is mapped through ``[0, keys + 1]``; raw CAMs are
first normalised and resized bilinearly to the image size. The reference sweeps alpha over 1..10
for raw CAMs and over {1, 2} for refined maps and reports the best.
"""

from __future__ import annotations

import numpy as np

IGNORE = 255
CAM_ALPHAS = tuple(range(1, 11))
REFINED_ALPHAS = (1, 2)


class Confusion:
    """Pixel counts ``[n, n + 1]``: rows ground truth, columns prediction, last column ignore.

    Args:
        num_classes: classes including background (VOC 21, COCO 81).
    """

    def __init__(self, num_classes: int):
        self.n = int(num_classes)
        self.matrix = np.zeros((self.n, self.n + 1), dtype=np.int64)

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Count one image. ``gt`` and ``pred`` are ``[H, W]`` integer label maps of equal shape.

        Predicted values outside ``0..n-1`` (255 in masks) go to the ignore column.
        """
        gt = np.asarray(gt, dtype=np.int64).ravel()
        pred = np.asarray(pred, dtype=np.int64).ravel()
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth has {gt.size} pixels, prediction {pred.size}")
        keep = (gt >= 0) & (gt < self.n)
        gt, pred = gt[keep], pred[keep]
        pred = np.where((pred >= 0) & (pred < self.n), pred, self.n)
        self.matrix += np.bincount(gt * (self.n + 1) + pred, minlength=self.n * (self.n + 1)).reshape(
            self.n, self.n + 1)

    def scores(self, count_ignored: bool = True) -> dict:
        """Metrics as plain Python numbers.

        Args:
            count_ignored: pixels predicted as ignore count as misses of their ground-truth class
                (True), or are left out entirely (False).

        Returns:
            ``{"miou", "pixel_accuracy", "coverage", "iou": [n], "precision": [n], "recall": [n],
            "present": [n]}``; undefined ratios are None.
        """
        labelled = self.matrix[:, : self.n]
        tp = np.diag(labelled).astype(np.float64)
        gt_total = (self.matrix.sum(axis=1) if count_ignored else labelled.sum(axis=1)).astype(np.float64)
        pred_total = labelled.sum(axis=0).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = tp / (gt_total + pred_total - tp)
            precision = tp / pred_total
            recall = tp / gt_total
        present = gt_total > 0
        total = self.matrix.sum()
        counted = gt_total.sum()
        return {
            "miou": _number(np.nanmean(iou[present]) if present.any() else np.nan),
            "pixel_accuracy": _number(tp.sum() / counted if counted else np.nan),
            "coverage": _number(labelled.sum() / total if total else np.nan),
            "iou": [_number(v) for v in iou],
            "precision": [_number(v) for v in precision],
            "recall": [_number(v) for v in recall],
            "present": [bool(v) for v in present],
        }


def _number(value) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value


def labels_from_maps(maps: np.ndarray, keys: np.ndarray, alpha: float) -> np.ndarray:
    """Label map from class maps with the background score ``(1 - max) ** alpha``.

    Args:
        maps: ``[K, H, W]`` float maps in [0, 1].
        keys: ``[K]`` class indices.
        alpha: background exponent.

    Returns:
        ``[H, W]`` int64 labels: 0 background, ``keys[k] + 1`` for map k.
    """
    maps = np.asarray(maps, dtype=np.float32)
    background = np.power(1 - maps.max(axis=0, keepdims=True), alpha)
    winner = np.argmax(np.concatenate([background, maps], axis=0), axis=0)
    return np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1])[winner]
