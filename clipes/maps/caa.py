"""Class-aware attention affinity (CAA), spec section 5.

The pieces, each usable alone:

* :func:`affinity_from_attention`: mean attention of the last blocks -> Sinkhorn-normalised,
  symmetrised and squared affinity ``T [N, N]`` (torch, any device, batched).
* :func:`box_mask`: a class's box mask on the patch grid from contours of its CAM (OpenCV, the
  reference's exclusive-end quirk included).
* :func:`refine_on_grid`: ``T`` with masked columns applied to every class's CAM in one product.
* :func:`upsample_maps`: min-max normalisation and bilinear resize to the image size.

:func:`refine_cams` chains them for one image.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from clipes.maps.gradcam import minmax_normalize

DEFAULT_BOX_THRESHOLD = {"voc12": 0.4, "coco14": 0.7, "custom": 0.4}


def sinkhorn(attention: torch.Tensor, rounds: int = 3) -> torch.Tensor:
    """Alternate column and row normalisation, columns first.

    Args:
        attention: ``[..., N, N]`` non-negative matrix (rows are queries).
        rounds: (column, row) rounds.

    Returns:
        ``[..., N, N]``, after the last round rows sum to one.
    """
    t = attention
    for _ in range(rounds):
        t = t / t.sum(dim=-2, keepdim=True)  # column sums (over queries)
        t = t / t.sum(dim=-1, keepdim=True)  # row sums
    return t


def affinity_from_attention(attention: torch.Tensor, rounds: int = 3, power: int = 2) -> torch.Tensor:
    """CAA affinity from the mean attention of the last blocks.

    Args:
        attention: ``[..., N, N]`` head- and block-averaged attention over patch tokens (CLS row
            and column dropped, not renormalised).
        rounds: Sinkhorn rounds (reference: 3).
        power: matrix power of the symmetrised matrix (reference: 2, i.e. ``T @ T``).

    Returns:
        ``T [..., N, N]``.
    """
    t = sinkhorn(attention, rounds)
    t = (t + t.transpose(-2, -1)) / 2
    out = t
    for _ in range(power - 1):
        out = out @ t
    return out


def box_mask(cam: np.ndarray, threshold: float) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Union of the bounding boxes of a CAM's contours, on the patch grid.

    The CAM is cast to uint8 as ``(cam * 255)``, thresholded strictly above
    ``int(threshold * max)``, and every contour (``RETR_TREE``, holes included) gives a box
    ``[y0:y1, x0:x1]`` with ``x1 = min(x + bw, w - 1)`` and ``y1 = min(y + bh, h - 1)``: the
    reference's clamp, which keeps the last row and column out of every box.

    Args:
        cam: ``[h, w]`` float map in [0, 1).
        threshold: fraction of the uint8 maximum (VOC 0.4, COCO 0.7).

    Returns:
        ``(mask [h, w] uint8 of 0/1, boxes [(x0, y0, x1, y1), ...])``.
    """
    h, w = cam.shape
    score = (np.asarray(cam, dtype=np.float32) * 255).astype(np.uint8)
    _, binary = cv2.threshold(score, int(threshold * int(score.max())), 255, cv2.THRESH_BINARY)
    contours, _ = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    mask = np.zeros((h, w), dtype=np.uint8)
    boxes = []
    for contour in contours:
        x, y, bw, bh = cv2.boundingRect(contour)
        box = (x, y, min(x + bw, w - 1), min(y + bh, h - 1))
        mask[box[1]:box[3], box[0]:box[2]] = 1
        boxes.append(box)
    return mask, boxes


def refine_on_grid(affinity: torch.Tensor, cams: torch.Tensor, masks: torch.Tensor, power: int = 1) -> torch.Tensor:
    """Propagate each class's CAM through the affinity restricted to its boxes.

    ``(T * mask_row) @ cam == T @ (mask * cam)``, so all classes share one product, and
    ``T**p @ s == T @ (... (T @ s))``: given the symmetrised ``T`` and ``power=p`` this applies
    ``T**p`` as ``p`` products with the ``K`` sources (``p * K * N**2`` operations) instead of
    forming ``T**p`` (``(p - 1) * N**3``; 0.9 GFLOP for a 500x375 image, the largest part of CAA).

    Args:
        affinity: ``[N, N]``: the affinity itself, or ``T`` when ``power > 1``.
        cams: ``[K, h, w]`` GradCAMs, N = h * w.
        masks: ``[K, h, w]`` 0/1 box masks.
        power: how many times ``affinity`` is applied.

    Returns:
        ``[K, h, w]`` refined maps before normalisation.
    """
    k, h, w = cams.shape
    out = (cams * masks).reshape(k, h * w).to(affinity.dtype).t()  # [N, K]
    for _ in range(power):
        out = affinity @ out
    return out.t().reshape(k, h, w)


def upsample_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Min-max normalise each map (1e-7 rule) and resize it bilinearly (OpenCV) to ``size``.

    Args:
        maps: ``[K, h, w]`` float32.
        size: ``(H, W)`` in pixels.

    Returns:
        ``[K, H, W]`` float32.
    """
    height, width = size
    normalised = minmax_normalize(torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))).numpy()
    out = np.empty((maps.shape[0], height, width), dtype=np.float32)
    for i, cam in enumerate(normalised):
        out[i] = cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR)
    return out


def refine_cams(affinity: torch.Tensor, cams: np.ndarray, image_size: tuple[int, int],
                threshold: float, power: int = 1) -> np.ndarray:
    """Refined maps of one image (spec section 5).

    Args:
        affinity: ``[N, N]`` from :func:`affinity_from_attention`, or with ``power > 1`` the
            unpowered ``T`` (``affinity_from_attention(..., power=1)``), applied ``power`` times.
        cams: ``[K, h, w]`` float32 GradCAMs on the patch grid.
        image_size: ``(H, W)``.
        threshold: box threshold.
        power: see ``affinity``.

    Returns:
        ``[K, H, W]`` float32 refined maps in [0, 1).
    """
    masks = np.stack([box_mask(cam, threshold)[0] for cam in cams])
    refined = refine_on_grid(affinity, torch.from_numpy(np.ascontiguousarray(cams, dtype=np.float32)).to(affinity.device),
                             torch.from_numpy(masks).to(affinity.device), power)
    return upsample_maps(refined.float().cpu().numpy(), image_size)
