"""The ``<WORK>/masks``, ``confidence`` and ``labels`` folders: one PNG per image plus ``manifest.json``.

* ``masks/<id>.png``: 8-bit palette PNG with the VOC colour map. Pixel values: 0 background,
  ``c + 1`` class c (0-based index into the manifest's class list), 255 ignore (CRF confidence
  below the threshold). Image viewers show colours; ``np.asarray(Image.open(p))`` gives the values.
* ``confidence/<id>.png``: 8-bit grayscale, ``round(255 * confidence)`` where confidence is the
  winning CRF marginal (for the soft, confidence-weighted loss).
* ``labels/<id>.png``: like a mask, before the confidence rule (no 255): the CRF argmax everywhere,
  which the soft loss weights by the confidence map.

Files are written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from clipes.errors import InputError
from clipes.store.fsutil import atomic_open, ids_in, item_path

MASKS_STAGE = "masks"
CONFIDENCE_STAGE = "confidence"
LABELS_STAGE = "labels"
PREDICTIONS_STAGE = "predictions"  # a trained segmenter's labels (clipes predict), MASKS_FORMAT without 255
GROUND_TRUTH_STAGE = "ground_truth"  # SegmentationClass(Aug) written by prepare-voc / prepare-coco, MASKS_FORMAT
METHODS_DIR = "methods"  # <WORK>/methods/<name>/: the work folder of another method (weclip, weakclip) beside CLIP-ES
METHOD_TITLES = {"weclip": "WeCLIP", "weakclip": "WeakCLIP", "weclipplus": "WeCLIP+", "excel": "ExCEL",
                 "excel-free": "ExCEL training-free"}  # how tables and panels name a method
PNG_STAGES = (MASKS_STAGE, CONFIDENCE_STAGE, LABELS_STAGE)  # an image is refined when all three exist
IGNORE = 255
SUFFIX = ".png"
MASKS_FORMAT = {
    "file": "<id>.png, 8-bit palette PNG (VOC colour map)",
    "values": "0 background, c+1 class c (index into 'classes'), 255 ignore (confidence below threshold)",
}
LABELS_FORMAT = {
    "file": "<id>.png, 8-bit palette PNG (VOC colour map)",
    "values": "0 background, c+1 class c (index into 'classes'); the CRF argmax, no confidence rule",
}
CONFIDENCE_FORMAT = {
    "file": "<id>.png, 8-bit grayscale PNG",
    "values": "round(255 * confidence), confidence = winning CRF marginal",
}


def voc_palette() -> list[int]:
    """The 256-entry VOC colour map as a flat ``[r, g, b, ...]`` list (bit-interleaved label index)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette += [r, g, b]
    return palette


_PALETTE = voc_palette()


def png_path(folder: Path, image_id: str) -> Path:
    """Where the PNG of ``image_id`` lives in ``folder``."""
    return item_path(folder, image_id, SUFFIX)


def _write_png(path: Path, image: Image.Image, compress_level: int = 6) -> None:
    with atomic_open(path, "wb") as handle:
        image.save(handle, format="PNG", compress_level=compress_level)


def write_mask(path: Path, label: np.ndarray) -> None:
    """Atomically write a label map ``[H, W]`` (uint8 values) as a palette PNG.

    zlib level 3: 0.5 ms to encode a 500x375 label map instead of 1.6 ms at PNG's default level 6,
    for files about 1.4 times as large (9 vs 6 KB).
    """
    image = Image.fromarray(np.asarray(label, dtype=np.uint8), mode="P")
    image.putpalette(_PALETTE)
    _write_png(path, image, compress_level=3)


def write_confidence(path: Path, confidence: np.ndarray) -> None:
    """Atomically write a confidence map ``[H, W]`` in [0, 1] as ``round(255 * c)`` grayscale.

    zlib level 1: a continuous map costs 27 ms to encode at PNG's default level 6 and 3.5 ms at
    level 1 (500x375, 46 vs 57 KB), the largest per-image cost of ``refine --no-crf`` otherwise.
    """
    values = np.clip(np.rint(np.asarray(confidence, dtype=np.float64) * 255), 0, 255).astype(np.uint8)
    _write_png(path, Image.fromarray(values, mode="L"), compress_level=1)


def read_png(path: Path) -> np.ndarray:
    """Values of a mask or confidence PNG (palette indices, not colours), ``[H, W]`` uint8.

    Raises:
        InputError: missing or unreadable file, or not a single-channel 8-bit image.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path.parent.name} file not found: {path}")
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise InputError(f"{path} is a {image.mode} image; expected a palette or grayscale PNG")
            return np.asarray(image, dtype=np.uint8)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read {path}: {exc}") from None


def done_ids(folder: Path) -> set[str]:
    """Ids with a PNG in ``folder``."""
    return ids_in(folder, SUFFIX)
