"""WeakCLIP's three losses and the CRF target (spec 10), functional.

``L = L_seed + L_bnd + id_weight * L_id``:

* :func:`probabilities`: logits at 1/4 resized to the fixed loss grid, softmax with a 1e-7 floor;
* :func:`seed_cues` / :func:`seed_loss`: one-hot cues of the nearest-sampled seeds; background and the
  pooled foreground normalised separately per image (DSRG's balanced form);
* :func:`crf_target` / :func:`boundary_loss`: a dense CRF (pydensecrf, via :mod:`clipes.maps.crf`) on the
  de-normalised, downsampled image gives Q; ``mean sum_c Q log clip(Q / P, 0.05, 20)``;
* :func:`identity_loss`: cross-entropy of ``score / tau`` at the label size, averaged over **all**
  pixels (ignored ones count as zero, mmseg 0.19's mean).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from clipes.maps.crf import CrfParams, dense_crf

IGNORE = 255
FLOOR = 1e-7
#: the training CRF (spec 10.4): Gaussian 3/3, bilateral 80/13/10, 10 iterations, on the plain RGB grid.
TRAIN_CRF = CrfParams(iterations=10, gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=80.0, bilateral_srgb=13.0,
                      bilateral_compat=10.0, color="rgb", fp16_probs=False)


@dataclass
class LossParts:
    """The loss terms of one step (``identity`` already weighted) and the CRF target used."""

    seed: torch.Tensor
    boundary: torch.Tensor
    identity: torch.Tensor
    accuracy: torch.Tensor
    probs: torch.Tensor
    target: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.seed + self.boundary + self.identity


def probabilities(logits: torch.Tensor, size) -> torch.Tensor:
    """``[B, K, s, s]``: softmax of ``logits`` resized (bilinear) to ``size``, floored at 1e-7 and renormalised."""
    z = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    k = z.shape[1]
    return (torch.softmax(z, dim=1) + FLOOR) / (1 + k * FLOOR)


def seed_cues(seeds: torch.Tensor, size, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-sampled seeds ``[B, 1, s, s]`` (int64) and their one-hot cues ``[B, K, s, s]`` (255: none)."""
    nearest = F.interpolate(seeds.float(), size=size, mode="nearest").long()
    classes = torch.arange(num_classes, device=seeds.device).reshape(1, -1, 1, 1)
    return nearest, (nearest == classes).to(torch.uint8)


def seed_loss(probs: torch.Tensor, cues: torch.Tensor) -> torch.Tensor:
    """Balanced seed loss: background and pooled foreground, each per image by its cue count."""
    cues = cues.float()
    logp = torch.log(probs)
    bg_count = cues[:, :1].sum(dim=(1, 2, 3))
    fg_count = cues[:, 1:].sum(dim=(1, 2, 3))
    bg = (cues[:, :1] * logp[:, :1]).sum(dim=(1, 2, 3))
    fg = (cues[:, 1:] * logp[:, 1:]).sum(dim=(1, 2, 3))
    floor = torch.tensor(1e-4, device=probs.device)
    return -(bg / torch.maximum(bg_count, floor)).mean() - (fg / torch.maximum(fg_count, floor)).mean()


def crf_image(normalized: np.ndarray, size, mean, std) -> np.ndarray:
    """The CRF colour image of one input ``[3, H, W]`` (normalised RGB): ``[s, s, 3]`` uint8.

    ``scipy.ndimage.zoom(order=1)`` to the loss grid, de-normalised, cast by truncation (as the
    reference; values are clipped to 0..255 first, which the reference leaves undefined).
    """
    from scipy import ndimage

    h, w = normalized.shape[1:]
    small = ndimage.zoom(normalized, (1, size[0] / h, size[1] / w), order=1)
    rgb = small.transpose(1, 2, 0) * np.asarray(std, dtype=np.float32) + np.asarray(mean, dtype=np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def crf_target(images: torch.Tensor, probs: torch.Tensor, mean, std, params: CrfParams = TRAIN_CRF
               ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Q^ of the training CRF for each image, without gradient.

    Args:
        images: ``[B, 3, H, W]`` normalised inputs.
        probs: ``[B, K, s, s]`` floored probabilities (not modified).

    Returns:
        ``(target [B, K, s, s] float32 on probs' device, rgb [B, s, s, 3] uint8, raw Q [B, K, s, s])``.
    """
    size = probs.shape[2:]
    p = np.maximum(probs.detach().float().cpu().numpy(), 1e-4)  # a copy: P itself stays as it is
    batch = images.detach().float().cpu().numpy()
    rgbs, raws, logs = [], [], []
    for i in range(p.shape[0]):
        rgb = crf_image(batch[i], size, mean, std)
        q = dense_crf(rgb, p[i], params)
        rgbs.append(rgb)
        raws.append(q)
        clamped = np.maximum(q, 1e-4)
        logs.append(np.log(clamped / clamped.sum(axis=0, keepdims=True)).astype(np.float64))
    target = torch.exp(torch.from_numpy(np.stack(logs))).float().to(probs.device)
    return target, np.stack(rgbs), np.stack(raws)


def boundary_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean_{b,ij} sum_c Q log clip(Q / P, 0.05, 20)`` (gradient through P only)."""
    return torch.mean(torch.sum(target * torch.log(torch.clamp(target / probs, 0.05, 20)), dim=1))


def identity_loss(score: torch.Tensor, labels: torch.Tensor, tau: float = 0.07) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of ``score / tau`` resized to the labels ``[B, H, W]``: ``(mean over all pixels, accuracy %)``.

    Both are over all pixels, ignored ones included (mmseg 0.19), as the reference logs them.
    """
    logits = F.interpolate(score / tau, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="none")
    with torch.no_grad():  # mmseg 0.19's accuracy: correct pixels over all pixels, ignored ones included
        accuracy = (logits.argmax(dim=1) == labels).sum().float() * 100.0 / labels.numel()
    return loss.sum() / labels.numel(), accuracy


def weakclip_losses(logits: torch.Tensor, score: torch.Tensor, seeds: torch.Tensor, images: torch.Tensor,
                    mean, std, feature_size=(64, 64), tau: float = 0.07, id_weight: float = 0.4) -> LossParts:
    """All terms of one training step.

    Args:
        logits: ``[B, K, H/4, W/4]`` decoder logits; score: ``[B, K, h, w]`` cosine map.
        seeds: ``[B, 1, H, W]`` int64 labels (255 ignore and padding); images: ``[B, 3, H, W]`` normalised.
    """
    probs = probabilities(logits, feature_size)
    _, cues = seed_cues(seeds, feature_size, logits.shape[1])
    target, _, _ = crf_target(images, probs, mean, std)
    identity, accuracy = identity_loss(score, seeds[:, 0], tau)
    return LossParts(seed_loss(probs, cues), boundary_loss(probs, target), id_weight * identity, accuracy, probs,
                     target)
