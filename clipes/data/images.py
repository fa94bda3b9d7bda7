"""Decoding images and turning them into CLIP input exactly as the reference does (spec section 3).

Resize to ``(p*ceil(H/p)) x (p*ceil(W/p))`` with PIL bicubic in the image's own mode, convert to
RGB *after* resizing, scale to [0, 1], normalise with CLIP's mean and std. Images that are not
8-bit RGB are accepted and reported with a note: grayscale and CMYK as the reference treats them,
alpha dropped, palette images resized in palette mode (PIL uses nearest there, as the reference
did), 16-bit and 32-bit grayscale scaled to 8 bits first (the reference would clip them).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipes.errors import InputError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_MODE_NOTES = {
    "L": "grayscale image, converted to RGB",
    "LA": "grayscale image with alpha, alpha dropped",
    "RGBA": "RGBA image, alpha dropped",
    "P": "palette image, converted to RGB",
    "PA": "palette image with alpha, converted to RGB",
    "CMYK": "CMYK image, converted to RGB",
    "1": "1-bit image, converted to RGB",
    "YCbCr": "YCbCr image, converted to RGB",
}


def load_image(path: Path) -> tuple[Image.Image, str | None]:
    """Fully decode an image file.

    Returns:
        ``(image, note)``: the note says how a non-RGB image was handled, else None.

    Raises:
        InputError: missing, undecodable or truncated file.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
    except FileNotFoundError:
        raise InputError(f"image not found: {path}") from None
    except Exception as exc:  # PIL raises many kinds for bad data
        raise InputError(f"cannot decode image {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    note = _MODE_NOTES.get(image.mode)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image, note = _to_8bit(image)
    elif image.mode not in ("RGB",) and image.mode not in _MODE_NOTES:
        note = f"{image.mode} image, converted to RGB"
    return image, note


_END_MARKERS = {b"\xff\xd8": b"\xff\xd9", b"\x89P": b"IEND\xaeB`\x82"}  # JPEG, PNG
_TAIL = 4096  # bytes searched for the end marker (encoders may pad after it)


def check_image_file(path: Path) -> tuple[int, int]:
    """Check an image file up front, cheaply: its header, and whether it ends as a complete file.

    A JPEG or PNG whose last bytes hold its end marker is taken as complete without decoding its
    pixels (fast enough for every image of a training split); any other file (another format, or
    one cut short, or with data appended after the marker) is decoded fully.

    Returns:
        ``(width, height)`` from the header.

    Raises:
        InputError: missing, unreadable, not an image, or truncated (naming the file).
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            magic = handle.read(2)
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - _TAIL))
            tail = handle.read()
        with Image.open(path) as image:
            dimensions = image.size
            marker = _END_MARKERS.get(magic)
            if marker is None or marker not in tail:
                image.load()  # raises for a truncated or broken file
    except FileNotFoundError:
        raise InputError(f"image not found: {path}") from None
    except Exception as exc:  # PIL raises many kinds for bad data
        raise InputError(f"cannot decode image {path}: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return dimensions


def _to_8bit(image: Image.Image) -> tuple[Image.Image, str]:
    array = np.asarray(image)
    if image.mode == "F":
        lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
        scaled = (array - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(array)
        return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L"), "float image, rescaled to 8 bits"
    array = array.astype(np.int64)
    depth = 16 if array.max(initial=0) <= 65535 else 32
    array = array // 257 if depth == 16 else array >> 24
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "L"), f"{depth}-bit image, scaled to 8 bits"


def grid_size(height: int, width: int, patch: int) -> tuple[int, int]:
    """Patch grid ``(ceil(H/p), ceil(W/p))``."""
    return math.ceil(height / patch), math.ceil(width / patch)


def check_size(image: Image.Image, patch: int, path: Path | str = "image") -> None:
    """Refuse images smaller than one patch in either direction."""
    width, height = image.size
    if width < patch or height < patch:
        raise InputError(f"image {path} is {width}x{height} pixels, smaller than one {patch}x{patch} patch")


def to_clip_tensor(image: Image.Image, patch: int) -> torch.Tensor:
    """Reference preprocessing of one decoded image.

    Args:
        image: decoded PIL image (any mode :func:`load_image` returns).
        patch: ViT patch size.

    Returns:
        ``[3, p*ceil(H/p), p*ceil(W/p)]`` float32, CLIP-normalised.
    """
    width, height = image.size
    h, w = grid_size(height, width, patch)
    resized = image.resize((w * patch, h * patch), Image.BICUBIC).convert("RGB")
    tensor = torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return tensor.sub_(mean).div_(std)
