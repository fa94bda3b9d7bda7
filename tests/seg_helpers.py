"""A synthetic segmentation set for the stage-3 tests: coloured shapes on a textured background.

Class 1 is a red rectangle, class 2 a blue disc (either may be missing); ground truth goes to
``SegmentationClass``, and a work folder gets pseudo masks (ground truth with a band of 255 around
each shape), labels (ground truth), confidence maps (low on that band) and a stage-2 manifest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from clipes.store import maskstore
from clipes.store.fsutil import write_json

CLASSES = ["rectangle", "disc"]


def make_seg_set(root: Path, count: int = 24, size: tuple[int, int] = (96, 80), seed: int = 0,
                 val: int = 6) -> tuple[Path, Path]:
    """Write the set; returns ``(data_root, work)``. ``val`` last images form ``val.txt``."""
    rng = np.random.default_rng(seed)
    data, work = root / "data", root / "work"
    for folder in (data / "JPEGImages", data / "SegmentationClass", data / "ImageSets" / "Segmentation",
                   work / "masks", work / "labels", work / "confidence"):
        folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    ids = []
    for i in range(count):
        image_id = f"img_{i:03d}"
        ids.append(image_id)
        image = rng.integers(90, 160, size=(height, width, 3)).astype(np.float64)  # grey texture
        label = np.zeros((height, width), np.uint8)
        if i % 3 != 2:
            x0, y0 = rng.integers(0, width // 2), rng.integers(0, height // 2)
            w, h = rng.integers(width // 5, width // 2), rng.integers(height // 5, height // 2)
            box = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
            image[box] = [220, 40, 40] + rng.normal(0, 10, size=(int(box.sum()), 3))
            label[box] = 1
        if i % 3 != 0:
            cx, cy, r = rng.integers(width // 4, 3 * width // 4), rng.integers(height // 4, 3 * height // 4), \
                rng.integers(min(size) // 8, min(size) // 4)
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2
            image[disc] = [40, 60, 220] + rng.normal(0, 10, size=(int(disc.sum()), 3))
            label[disc] = 2
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(data / "JPEGImages" / f"{image_id}.jpg",
                                                                      quality=95)
        maskstore.write_mask(data / "SegmentationClass" / f"{image_id}.png", label)
        edge = _band(label)
        mask = label.copy()
        mask[edge] = 255
        confidence = np.where(edge, 0.5, 0.99)
        maskstore.write_mask(maskstore.png_path(work / "masks", image_id), mask)
        maskstore.write_mask(maskstore.png_path(work / "labels", image_id), label)
        maskstore.write_confidence(maskstore.png_path(work / "confidence", image_id), confidence)
    split = data / "ImageSets" / "Segmentation"
    split.joinpath("train.txt").write_text("".join(f"{x}\n" for x in ids[:count - val]))
    split.joinpath("val.txt").write_text("".join(f"{x}\n" for x in ids[count - val:]))
    write_json(work / "masks" / "manifest.json", {
        "stage": "masks", "classes": CLASSES,
        "input": {"dataset": "voc12", "data_root": str(data), "images": str(data / "JPEGImages")}})
    return data, work


def _band(label: np.ndarray) -> np.ndarray:
    """Pixels within one pixel of a label change."""
    band = np.zeros(label.shape, bool)
    band[:, 1:] |= label[:, 1:] != label[:, :-1]
    band[:, :-1] |= label[:, 1:] != label[:, :-1]
    band[1:] |= label[1:] != label[:-1]
    band[:-1] |= label[1:] != label[:-1]
    return band
