"""The demo dataset: synthetic scenes of coloured, textured shapes on cluttered backdrops.

Every scene is a pure function of its integer seed (numpy's PCG64), so the package regenerates
the same dataset anywhere instead of shipping it. A scene holds 1-3 objects of different classes
(shape, colour and texture tell them apart), drawn over one of a few textured backgrounds with small
distractors; the ground-truth mask is exact because the scene is drawn from it.

:func:`write_voc_dataset` lays scenes out like PASCAL VOC 2012 (``JPEGImages``, ``Annotations``,
``SegmentationClass``, ``ImageSets/Segmentation/{train,val,trainval}.txt``) so the ordinary
``DATASET=voc12`` path reads it, with the demo class file ``prompts/demo_classes.tsv``.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from clipes.errors import UserError
from clipes.store import maskstore
from clipes.store.fsutil import atomic_open, write_json

# (name, prompt words, RGB colour, texture). Order = 0-based class index, as in prompts/demo_classes.tsv.
CLASSES = (
    ("disc", "red disc", (215, 30, 35), "shaded"),
    ("square", "blue square", (35, 70, 225), "stripes"),
    ("triangle", "yellow triangle", (240, 215, 30), "plain"),
    ("star", "magenta star", (215, 40, 200), "dots"),
    ("cross", "orange cross", (245, 130, 20), "checker"),
    ("ring", "cyan ring", (30, 215, 225), "plain"),
)
CLASS_NAMES = tuple(c[0] for c in CLASSES)
PROMPTS = tuple(c[1] for c in CLASSES)
BACKGROUNDS = ("grass", "sand", "wall", "wood", "gravel")
IMAGE_SIZE = (224, 224)  # (H, W) of the demo CLIP's training scenes: its 14 x 14 patch grid
DATASET_IMAGE_SIZE = (320, 320)  # the demo dataset's: a 20 x 20 grid, more patches per object for CAA and CRF
SPLIT_SEED_BASE = {"train": 0, "val": 500_000}  # the demo CLIP trains on seeds >= 1_000_000


@dataclass
class Scene:
    """One rendered scene.

    Attributes:
        image: ``[H, W, 3]`` uint8 RGB.
        mask: ``[H, W]`` uint8, 0 background, ``c + 1`` class c.
        classes: 0-based class indices present, in drawing order (each at most once).
        boxes: ``(x0, y0, x1, y1)`` per entry of ``classes``, inclusive pixel bounds of the visible part.
        background: name of the backdrop (one of :data:`BACKGROUNDS`).
    """

    image: np.ndarray
    mask: np.ndarray
    classes: tuple[int, ...]
    boxes: tuple[tuple[int, int, int, int], ...]
    background: str


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid resized bilinearly to ``shape``."""
    h, w = shape
    coarse = rng.random((h // cell + 2, w // cell + 2)).astype(np.float32)
    image = Image.fromarray(coarse, mode="F").resize((w, h), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def _backdrop(rng: np.random.Generator, name: str, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` float32 RGB in 0..255 for one backdrop kind."""
    shape = yy.shape
    fine = rng.random(shape, dtype=np.float32)
    low = _smooth_noise(rng, shape, 24)
    if name == "grass":
        base = np.array([45, 110, 40], np.float32) * rng.uniform(0.8, 1.15)
        blades = _smooth_noise(rng, (shape[0] // 6 + 1, shape[1] * 2), 1)
        blades = np.asarray(Image.fromarray(blades).resize((shape[1], shape[0]), Image.BILINEAR))
        shade = 0.65 + 0.35 * low[..., None] + 0.3 * (blades[..., None] - 0.5) + 0.12 * (fine[..., None] - 0.5)
        return base * shade
    if name == "sand":
        base = np.array([196, 178, 132], np.float32) * rng.uniform(0.9, 1.05)
        ripple = np.sin(yy * rng.uniform(0.15, 0.3) + 6 * low)
        return base * (0.85 + 0.06 * ripple[..., None] + 0.1 * low[..., None] + 0.12 * (fine[..., None] - 0.5))
    if name == "wall":
        brick_h, brick_w = int(rng.integers(14, 22)), int(rng.integers(30, 46))
        row = (yy // brick_h).astype(np.int64)
        col = ((xx + (row % 2) * brick_w // 2) // brick_w).astype(np.int64)
        tone = np.random.default_rng(int(rng.integers(1 << 31))).uniform(0.8, 1.1, (row.max() + 2, col.max() + 2))
        base = np.array([150, 140, 132], np.float32) * tone[row, col][..., None]
        mortar = ((yy % brick_h) < 2) | (((xx + (row % 2) * brick_w // 2) % brick_w) < 2)
        out = base * (0.9 + 0.15 * (fine[..., None] - 0.5))
        out[mortar] = np.array([205, 200, 190], np.float32)
        return out
    if name == "wood":
        base = np.array([125, 82, 45], np.float32) * rng.uniform(0.85, 1.1)
        plank = int(rng.integers(28, 48))
        grain = np.sin(xx * 0.05 + 9 * low + 0.3 * np.sin(yy * 0.08)) * 0.5 + 0.5
        out = base * (0.8 + 0.25 * grain[..., None] + 0.08 * (fine[..., None] - 0.5))
        out[(yy % plank) < 2] *= 0.55
        return out
    if name == "gravel":
        speck = np.asarray(Image.fromarray(rng.random((shape[0] // 3, shape[1] // 3), dtype=np.float32))
                           .resize((shape[1], shape[0]), Image.NEAREST))
        gray = 95 + 90 * speck + 25 * (low - 0.5)
        return np.repeat(gray[..., None], 3, axis=2) * np.array([1.0, 0.98, 0.95], np.float32)
    raise ValueError(f"unknown backdrop {name!r}")


def _shape_mask(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of a unit-size shape in its own frame (``u``, ``v`` scaled by the radius)."""
    rho = np.hypot(u, v)
    if kind == "disc":
        return rho <= 1.0
    if kind == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if kind == "triangle":
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            angle = math.pi / 2 + 2 * math.pi * k / 3
            inside &= (u * math.cos(angle) + v * math.sin(angle)) <= 0.55
        return inside
    if kind == "star":
        phase = (np.arctan2(v, u) * 5 / (2 * math.pi)) % 1.0
        return rho <= 0.45 + 0.6 * np.abs(phase - 0.5) * 2
    if kind == "cross":
        a, b = np.abs(u), np.abs(v)
        return ((a <= 0.32) & (b <= 0.95)) | ((b <= 0.32) & (a <= 0.95))
    if kind == "ring":
        return (rho <= 1.0) & (rho >= 0.55)
    raise ValueError(f"unknown shape {kind!r}")


def _texture(kind: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness factor of a texture in the object's frame."""
    if kind == "shaded":
        return 1.05 - 0.3 * np.clip(np.hypot(u + 0.35, v + 0.35), 0, 1.5) / 1.5
    if kind == "stripes":
        return np.where(np.sin(u * rng.uniform(9, 14)) > 0, 1.0, 0.72)
    if kind == "dots":
        period = rng.uniform(0.35, 0.5)
        du, dv = (u / period) % 1 - 0.5, (v / period) % 1 - 0.5
        return np.where(np.hypot(du, dv) < 0.25, 0.7, 1.0)
    if kind == "checker":
        period = rng.uniform(0.3, 0.45)
        return np.where((np.floor(u / period) + np.floor(v / period)) % 2 == 0, 1.0, 0.78)
    return np.full_like(u, rng.uniform(0.9, 1.05))


def _place(rng: np.random.Generator, placed: list, size: tuple[int, int]) -> tuple[float, float, float] | None:
    """Centre and radius for a new object that overlaps the others only a little, or None."""
    h, w = size
    for _ in range(30):
        radius = rng.uniform(0.11, 0.21) * min(h, w)
        cx = rng.uniform(0.6 * radius, w - 0.6 * radius)
        cy = rng.uniform(0.6 * radius, h - 0.6 * radius)
        if all(math.hypot(cx - x, cy - y) > 0.9 * (radius + r) for x, y, r in placed):
            return cx, cy, radius
    return None


def _clutter(rng: np.random.Generator, image: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> None:
    """Small muted distractors (blobs and strokes) drawn into the backdrop in place."""
    for _ in range(int(rng.integers(3, 9))):
        tone = rng.uniform(40, 210) * np.array(rng.uniform(0.85, 1.1, 3), np.float32)
        cx, cy = rng.uniform(0, xx.shape[1]), rng.uniform(0, yy.shape[0])
        if rng.random() < 0.5:
            r = rng.uniform(4, 12)
            sel = ((xx - cx) / r) ** 2 + ((yy - cy) / (r * rng.uniform(0.5, 1.5))) ** 2 <= 1
        else:
            angle, length = rng.uniform(0, math.pi), rng.uniform(20, 70)
            along = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
            across = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
            sel = (np.abs(along) <= length / 2) & (np.abs(across) <= rng.uniform(1, 2.5))
        image[sel] = tone


def render_scene(seed: int, size: tuple[int, int] = IMAGE_SIZE, min_classes: int = 1,
                 max_classes: int = 3) -> Scene:
    """Draw the scene of ``seed``.

    Args:
        seed: any non-negative integer; equal seeds give equal scenes.
        size: ``(H, W)`` in pixels.
        min_classes / max_classes: bounds on the number of objects (classes differ).

    Returns:
        The :class:`Scene`; it always holds at least one object.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    image = _backdrop(rng, background, yy, xx)
    _clutter(rng, image, yy, xx)
    mask = np.zeros((h, w), np.uint8)
    count = int(rng.choice(np.arange(min_classes, max_classes + 1),
                           p=_count_weights(min_classes, max_classes)))
    chosen = rng.permutation(len(CLASSES))[:count]
    placed, drawn = [], []
    for c in chosen:
        spot = _place(rng, placed, size)
        if spot is None:
            continue
        cx, cy, radius = spot
        placed.append(spot)
        angle = rng.uniform(0, 2 * math.pi)
        u = ((xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)) / radius
        v = (-(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)) / radius
        name, _, colour, texture = CLASSES[int(c)]
        inside = _shape_mask(name, u, v)
        tint = np.array(colour, np.float32) + rng.uniform(-18, 18, 3).astype(np.float32)
        shade = _texture(texture, u, v, rng)
        image[inside] = tint * shade[inside][:, None]
        mask[inside] = int(c) + 1
        drawn.append(int(c))
    image += rng.normal(0, 4.0, image.shape).astype(np.float32)
    image = np.clip(image, 0, 255).astype(np.uint8)
    classes, boxes = [], []
    for c in drawn:
        ys, xs = np.nonzero(mask == c + 1)
        if ys.size < 0.004 * h * w:  # all but covered: not labelled, and not in the mask either
            mask[mask == c + 1] = 0
            continue
        classes.append(c)
        boxes.append((int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())))
    if not classes:
        return render_scene(seed + 7_919_000, size, min_classes, max_classes)
    return Scene(image=image, mask=mask, classes=tuple(classes), boxes=tuple(boxes), background=background)


def _count_weights(low: int, high: int) -> np.ndarray:
    weights = np.array([{1: 0.4, 2: 0.4, 3: 0.2}.get(k, 0.1) for k in range(low, high + 1)], np.float64)
    return weights / weights.sum()


def scene_id(split: str, index: int) -> str:
    """Image id of the ``index``-th scene of a split, e.g. ``demo_train_0007``."""
    return f"demo_{split}_{index:04d}"


def _annotation_xml(image_id: str, scene: Scene) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "clipes-demo"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", scene.image.shape[1]), ("height", scene.image.shape[0]), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for c, (x0, y0, x1, y1) in zip(scene.classes, scene.boxes):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = CLASS_NAMES[c]
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1 + 1), ("ymax", y1 + 1)):
            ET.SubElement(box, tag).text = str(value)
    return ET.tostring(root, encoding="utf-8")


def write_voc_dataset(root: Path, train: int, val: int, seed: int = 0,
                      size: tuple[int, int] = DATASET_IMAGE_SIZE) -> dict:
    """Write (or complete) the demo dataset in VOC layout under ``root``.

    Existing files are kept, so a killed run resumes; every file is written atomically.

    Args:
        root: dataset folder (created).
        train / val: number of scenes per split.
        seed: added to each split's seed base (:data:`SPLIT_SEED_BASE`); the default is the demo's.
        size: ``(H, W)`` of every scene (objects scale with it).

    Returns:
        The dataset description also written to ``root/dataset.json``.
    """
    root = Path(root)
    recorded = root / "dataset.json"
    if recorded.is_file():
        try:
            made = json.loads(recorded.read_text())
        except ValueError:
            made = {}
        if made.get("image_size") != list(size) or made.get("seed") != seed:
            raise UserError(f"{root} holds a demo dataset made with other settings (image size "
                            f"{made.get('image_size')}, seed {made.get('seed')}); remove it or use another folder")
    folders = {name: root / name for name in ("JPEGImages", "Annotations", "SegmentationClass")}
    for folder in (*folders.values(), root / "ImageSets" / "Segmentation"):
        folder.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[str]] = {}
    for split, count in (("train", train), ("val", val)):
        splits[split] = []
        for index in range(count):
            image_id = scene_id(split, index)
            splits[split].append(image_id)
            paths = (folders["JPEGImages"] / f"{image_id}.jpg", folders["Annotations"] / f"{image_id}.xml",
                     maskstore.png_path(folders["SegmentationClass"], image_id))
            if all(p.is_file() for p in paths):
                continue
            scene = render_scene(SPLIT_SEED_BASE[split] + seed + index, size)
            with atomic_open(paths[0], "wb") as handle:
                Image.fromarray(scene.image).save(handle, format="JPEG", quality=92)
            with atomic_open(paths[1], "wb") as handle:
                handle.write(_annotation_xml(image_id, scene))
            maskstore.write_mask(paths[2], scene.mask)
    splits["trainval"] = splits["train"] + splits["val"]
    for split, ids in splits.items():
        with atomic_open(root / "ImageSets" / "Segmentation" / f"{split}.txt", "w") as handle:
            handle.write("".join(f"{i}\n" for i in ids))
    info = {"kind": "clipes demo dataset", "classes": list(CLASS_NAMES), "prompts": list(PROMPTS),
            "backgrounds": list(BACKGROUNDS), "image_size": list(size), "seed": seed,
            "splits": {k: len(v) for k, v in splits.items()}}
    write_json(root / "dataset.json", info)
    return info
