"""WeCLIP's training samples (spec section 2): image-level labels, augmentation, normalisation.

A sample is the augmented image and its classes, ascending. Augmentation, in the reference's
order: random rescale by s ~ U(0.5, 2.0) (PIL bilinear, sizes ``int(s * W), int(s * H)``), a
horizontal flip with p = 0.5, then a random 320 crop after placing the image at a random offset on
a black canvas at least 320 on each side. No colour jitter. Randomness comes from Python's
``random`` and NumPy's global generator, as in the reference (mmengine seeds both per worker).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipes.data.images import load_image
from clipes.store.fsutil import atomic_open
from clipes.weclip.tower import normalize_image

CROP = 320
SCALE_RANGE = (0.5, 2.0)


def random_scale(image: np.ndarray, low: float = SCALE_RANGE[0], high: float = SCALE_RANGE[1]) -> np.ndarray:
    """``[H, W, 3]`` uint8 -> rescaled float32 (PIL bilinear)."""
    s = random.uniform(low, high)
    h, w = image.shape[:2]
    size = (max(int(s * w), 1), max(int(s * h), 1))
    return np.asarray(Image.fromarray(image.astype(np.uint8)).resize(size, resample=Image.BILINEAR)).astype(np.float32)


def random_flip(image: np.ndarray) -> np.ndarray:
    return np.fliplr(image) if random.random() > 0.5 else image


def random_crop(image: np.ndarray, crop: int = CROP) -> np.ndarray:
    """Place on a black canvas of at least ``crop`` per side at a random offset, cut a random window."""
    h, w = image.shape[:2]
    canvas_h, canvas_w = max(crop, h), max(crop, w)
    canvas = np.zeros((canvas_h, canvas_w, 3), dtype=np.float32)
    top, left = int(np.random.randint(canvas_h - h + 1)), int(np.random.randint(canvas_w - w + 1))
    canvas[top:top + h, left:left + w] = image
    y = random.randrange(0, canvas_h - crop + 1, 1)
    x = random.randrange(0, canvas_w - crop + 1, 1)
    return canvas[y:y + crop, x:x + crop]


def augment(image: np.ndarray, crop: int = CROP, scale_range: tuple[float, float] = SCALE_RANGE,
            flip: bool = True) -> np.ndarray:
    """The reference's training augmentation of one ``[H, W, 3]`` uint8 image -> float32 crop."""
    out = random_scale(image, *scale_range)
    if flip:
        out = random_flip(out)
    return random_crop(out, crop)


@dataclass
class Sample:
    image_id: str
    path: str
    classes: list[int]


def write_samples(path: Path, samples: list[Sample]) -> Path:
    """The training list a run reads (``{"samples": [[id, path, [classes]], ...]}``), written atomically."""
    with atomic_open(path, "w") as handle:
        json.dump({"samples": [[s.image_id, s.path, s.classes] for s in samples]}, handle)
    return path


def read_samples(path: Path) -> list[Sample]:
    data = json.loads(Path(path).read_text())
    return [Sample(i, p, [int(c) for c in cs]) for i, p, cs in data["samples"]]


class TrainSet(torch.utils.data.Dataset):
    """Augmented crops with multi-hot labels, as dicts ``{"inputs": [3, S, S], "data_samples": [C]}``.

    Args:
        samples: file written by :func:`write_samples`.
        num_classes: foreground classes C.
        crop: crop size.
        scale_range: rescale range.
        flip: random horizontal flip.
        ordered: ``data_samples`` lists the classes in the sample's order, padded with -1 to
            ``num_classes`` (WeCLIP+: VOC's XML order decides argmax ties), instead of multi-hot.

    An image that fails to decode raises :class:`clipes.errors.InputError`; the training loop's wrapper
    (``KeyedDataset`` of :mod:`clipes.mmseg_ext.resume`) reports it once and draws the next sample.
    """

    def __init__(self, samples: str, num_classes: int, crop: int = CROP,
                 scale_range: tuple[float, float] = SCALE_RANGE, flip: bool = True, ordered: bool = False):
        self.samples = read_samples(Path(samples))
        if not self.samples:
            raise ValueError(f"{samples} lists no training images")
        self.num_classes = num_classes
        self.crop = crop
        self.scale_range = tuple(scale_range)
        self.flip = flip
        self.ordered = ordered

    def __len__(self) -> int:
        return len(self.samples)

    def sample_id(self, index: int) -> str:
        """The image id of sample ``index`` (what a failure line names)."""
        return self.samples[index].image_id

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image, _ = load_image(Path(sample.path))
        rgb = np.asarray(image.convert("RGB"))
        crop = augment(rgb, self.crop, self.scale_range, self.flip)
        if self.ordered:
            labels = torch.full((self.num_classes,), -1, dtype=torch.long)
            labels[:len(sample.classes)] = torch.tensor(sample.classes, dtype=torch.long)
        else:
            labels = torch.zeros(self.num_classes, dtype=torch.uint8)
            labels[sample.classes] = 1
        return {"inputs": normalize_image(crop)[0], "data_samples": labels}


def batch_classes(data_samples: torch.Tensor, ordered: bool = False) -> list[list[int]]:
    """Per image of a collated batch, its classes: multi-hot rows (ascending) or -1-padded ordered ids."""
    if ordered:
        return [[int(c) for c in row if int(c) >= 0] for row in data_samples]
    return [torch.nonzero(row).flatten().tolist() for row in data_samples]
