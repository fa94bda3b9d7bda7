"""Builders for small synthetic datasets used by several test modules."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import GOLDEN


def voc_xml(names: list[str], width: int = 64, height: int = 48) -> str:
    objects = "".join(f"<object><name>{n}</name><difficult>0</difficult></object>" for n in names)
    return (f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            f"{objects}</annotation>")


def make_voc(root: Path, items: dict) -> Path:
    """``items``: id -> (PIL image or bytes or None, list of names or None). Writes a split file."""
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for image_id, (image, names) in items.items():
        if isinstance(image, Image.Image):
            ext = ".jpg" if image.mode in ("RGB", "L") else ".png"
            image.save(root / "JPEGImages" / f"{image_id}{ext}")
        elif isinstance(image, bytes):
            (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(image)
        if names is not None:
            (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(names))
    split = root / "split.txt"
    split.write_text("\n".join(items) + "\n")
    return split


def copy_golden(root: Path, ids: list[str]) -> Path:
    for sub in ("JPEGImages", "Annotations"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        shutil.copy(GOLDEN / "JPEGImages" / f"{image_id}.jpg", root / "JPEGImages")
        shutil.copy(GOLDEN / "Annotations" / f"{image_id}.xml", root / "Annotations")
    split = root / "split.txt"
    split.write_text("\n".join(ids) + "\n")
    return split


def noise_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(array, "RGB").convert(mode) if mode != "RGB" else Image.fromarray(array, "RGB")
