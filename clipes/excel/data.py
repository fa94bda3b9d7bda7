"""ExCEL's training samples (spec 2): WeCLIP's augmentation, with the VOC crop chosen by the mask.

In the reference's order: rescale by s ~ U(0.5, 2.0) (PIL bilinear; the mask, when there is one,
nearest), a horizontal flip with p = 0.5, the image placed at a random offset on a black canvas at
least ``crop`` per side, and a ``crop`` window. **The VOC window is chosen with the ground-truth mask
(quirk)**: up to ten windows are drawn and the first whose mask histogram (255 excluded, background
included) has its largest class under 75 % of the counted pixels is kept, else the tenth. The
reference slices the *unpadded* mask with the canvas coordinates; so does this. Without a mask (COCO,
or ``crop_rule="first"``, the variant that needs no pixel label) the first window is taken, as
WeCLIP does. The classes come from the dataset's labels (ascending), never from the mask.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipes.data.images import load_image
from clipes.weclip.data import CROP, SCALE_RANGE, read_samples
from clipes.weclip.tower import normalize_image

CAT_MAX_RATIO = 0.75
CROP_TRIES = 10
IGNORE = 255
CROP_RULES = ("mask", "first")


def crop_window(canvas: tuple[int, int], crop: int, mask: np.ndarray | None) -> tuple[int, int]:
    """``(top, left)`` of the crop window on the canvas (the reference's ``get_random_cropbox``)."""
    height, width = canvas
    for _ in range(CROP_TRIES):
        top = random.randrange(0, height - crop + 1, 1)
        left = random.randrange(0, width - crop + 1, 1)
        if mask is None:
            return top, left
        values, counts = np.unique(mask[top:top + crop, left:left + crop], return_counts=True)
        counts = counts[values != IGNORE]
        if len(counts) and np.max(counts) / np.sum(counts) < CAT_MAX_RATIO:
            break
    return top, left


def augment(image: np.ndarray, mask: np.ndarray | None = None, crop: int = CROP,
            scale_range: tuple[float, float] = SCALE_RANGE) -> tuple[np.ndarray, np.ndarray | None]:
    """The reference's augmentation of one ``[H, W, 3]`` uint8 image (and its mask).

    Returns:
        ``(crop [crop, crop, 3] float32, mask crop [crop, crop] (255 padding) or None)``.
    """
    s = random.uniform(*scale_range)
    h, w = image.shape[:2]
    size = (max(int(s * w), 1), max(int(s * h), 1))
    out = np.asarray(Image.fromarray(image.astype(np.uint8)).resize(size, resample=Image.BILINEAR)).astype(np.float32)
    if mask is not None:
        mask = np.asarray(Image.fromarray(mask).resize(size, resample=Image.NEAREST))
    if random.random() > 0.5:
        out = np.fliplr(out)
        mask = None if mask is None else np.fliplr(mask)
    h, w = out.shape[:2]
    canvas_h, canvas_w = max(crop, h), max(crop, w)
    canvas = np.zeros((canvas_h, canvas_w, 3), dtype=np.float32)
    pad_top, pad_left = int(np.random.randint(canvas_h - h + 1)), int(np.random.randint(canvas_w - w + 1))
    canvas[pad_top:pad_top + h, pad_left:pad_left + w] = out
    top, left = crop_window((canvas_h, canvas_w), crop, mask)
    window = canvas[top:top + crop, left:left + crop]
    if mask is None:
        return window, None
    padded = np.full((canvas_h, canvas_w), IGNORE, dtype=np.float32)
    padded[pad_top:pad_top + h, pad_left:pad_left + w] = mask
    return window, padded[top:top + crop, left:left + crop]


class TrainSet(torch.utils.data.Dataset):
    """Augmented crops with multi-hot labels, as dicts ``{"inputs": [3, S, S], "data_samples": [C]}``.

    Args:
        samples: the file :func:`clipes.weclip.data.write_samples` wrote.
        num_classes: foreground classes C.
        masks: folder of ``<id>.png`` ground-truth masks that steer the crop (the reference's VOC
            quirk), or None for the first window.
        crop: crop size.

    An image or mask that fails to decode raises :class:`clipes.errors.InputError`; the training
    loop's wrapper reports it once and draws the next sample.
    """

    def __init__(self, samples: str, num_classes: int, masks: str | None = None, crop: int = CROP,
                 scale_range: tuple[float, float] = SCALE_RANGE):
        self.samples = read_samples(Path(samples))
        if not self.samples:
            raise ValueError(f"{samples} lists no training images")
        self.num_classes = num_classes
        self.masks = Path(masks) if masks else None
        self.crop = crop
        self.scale_range = tuple(scale_range)

    def __len__(self) -> int:
        return len(self.samples)

    def sample_id(self, index: int) -> str:
        return self.samples[index].image_id

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image, _ = load_image(Path(sample.path))
        mask = None
        if self.masks is not None:
            mask_image, _ = load_image(self.masks / f"{sample.image_id}.png")
            mask = np.asarray(mask_image)
        crop, _ = augment(np.asarray(image.convert("RGB")), mask, self.crop, self.scale_range)
        labels = torch.zeros(self.num_classes, dtype=torch.uint8)
        labels[sample.classes] = 1
        return {"inputs": normalize_image(crop)[0], "data_samples": labels}
