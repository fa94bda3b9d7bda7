"""The ``<WORK>/cams`` and ``<WORK>/refined`` folders: one ``<id>.npz`` per image plus ``manifest.json``.

Each ``.npz`` (no pickle; ``np.load(..., allow_pickle=False)`` reads it) of ``cams`` holds:

* ``keys``: int64 ``[K]``, 0-based class indices into the manifest's class list, in the image's
  label order (first appearance);
* ``cams``: float32 ``[K, h, w]`` on the patch grid (h = ceil(H/16), w = ceil(W/16)), the
  normalised softmax-GradCAM of spec section 4, row i for class ``keys[i]``, values in [0, 1);
* ``image_size``: int64 ``[2]``, the original image's (H, W) in pixels.

A ``refined`` file has the same three arrays, but ``cams`` is float16 ``[K, H, W]`` at image size:
the CAA-refined map of spec section 5 (float16 as the reference stores it; the CRF reads exactly
these values).

Files are written atomically, so a file that exists is complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipes.errors import InputError
from clipes.store.fsutil import atomic_open, ids_in, item_path
from clipes.store.halfcast import to_float16, to_float32

STAGE = "cams"
FORMAT = {
    "file": "<id>.npz (numpy, no pickle)",
    "keys": "int64 [K]: 0-based class indices into 'classes', label order",
    "cams": "float32 [K, h, w]: normalised softmax-GradCAM on the patch grid, row i for keys[i]",
    "image_size": "int64 [2]: original (H, W)",
}
REFINED_STAGE = "refined"
REFINED_FORMAT = {
    "file": "<id>.npz (numpy, no pickle)",
    "keys": "int64 [K]: 0-based class indices into 'classes', label order",
    "cams": "float16 [K, H, W]: CAA-refined map at image size, in [0, 1], row i for keys[i]",
    "image_size": "int64 [2]: original (H, W)",
}
SUFFIX = ".npz"


@dataclass
class CamFile:
    """Contents of one cams file (see module docstring)."""

    keys: np.ndarray
    cams: np.ndarray
    image_size: tuple[int, int]


def cam_path(folder: Path, image_id: str) -> Path:
    """Where the cams of ``image_id`` live in ``folder``."""
    return item_path(folder, image_id, SUFFIX)


def write_cam_file(path: Path, keys, cams, image_size: tuple[int, int], dtype=np.float32) -> None:
    """Atomically write one cams (float32) or refined (``dtype=np.float16``) file."""
    keys = np.asarray(keys, dtype=np.int64)
    cams = to_float16(cams) if np.dtype(dtype) == np.float16 else np.asarray(cams, dtype=dtype)
    if cams.ndim != 3 or cams.shape[0] != keys.shape[0]:
        raise ValueError(f"cams {cams.shape} do not match keys {keys.shape}")
    with atomic_open(path, "wb") as handle:
        np.savez(handle, keys=keys, cams=cams, image_size=np.asarray(image_size, dtype=np.int64))


def read_cam_file(path: Path) -> CamFile:
    """Read and check one cams or refined file (maps returned as float32).

    Raises:
        InputError: missing, unreadable or inconsistent file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path.parent.name} file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys, cams, size = data["keys"], data["cams"], data["image_size"]
    except Exception as exc:
        raise InputError(f"cannot read {path.parent.name} file {path}: {exc}") from None
    if keys.ndim != 1 or cams.ndim != 3 or cams.shape[0] != keys.shape[0] or size.shape != (2,):
        raise InputError(f"{path.parent.name} file {path} is inconsistent: keys {keys.shape}, cams {cams.shape}")
    return CamFile(keys=keys.astype(np.int64), cams=to_float32(cams), image_size=(int(size[0]), int(size[1])))


def done_ids(folder: Path) -> set[str]:
    """Ids with a complete cams file in ``folder``."""
    return ids_in(folder, SUFFIX)
