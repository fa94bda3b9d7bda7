"""The ``<WORK>/attention`` folder: the CLIP attention CAA needs, cached by ``clipes cams --save-affinity``.

Each ``<id>.npz`` (no pickle) holds:

* ``attention``: float16 ``[N, N]``, the attention probabilities of the last ``layers`` scheduled
  blocks averaged over heads and blocks, patch tokens only (CLS row and column dropped, rows not
  renormalised), N = h * w patches;
* ``grid``: int64 ``[2]``, the patch grid (h, w).

Bytes per image: about ``2 * N**2`` (float16, uncompressed): 1.2 MB for a VOC image of 500x375
pixels (32 x 24 = 768 patches), 0.08 MB for 224x224. Float16 keeps refined maps within 2e-4 of
recomputed attention (measured on the golden fixture, see docs/clip-es.md). The manifest records ``layers``
and the identity of the cams folder it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipes.errors import InputError
from clipes.store.fsutil import atomic_open, ids_in, item_path
from clipes.store.halfcast import to_float16, to_float32

STAGE = "attention"
SUFFIX = ".npz"
FORMAT = {
    "file": "<id>.npz (numpy, no pickle)",
    "attention": "float16 [N, N]: mean attention of the last 'layers' blocks, patch tokens only",
    "grid": "int64 [2]: patch grid (h, w), N = h * w",
}


@dataclass
class AttentionFile:
    attention: np.ndarray  # [N, N] float32
    grid: tuple[int, int]


def attention_path(folder: Path, image_id: str) -> Path:
    return item_path(folder, image_id, SUFFIX)


def write_attention(path: Path, attention: np.ndarray, grid: tuple[int, int]) -> None:
    """Atomically write one image's mean attention ``[N, N]`` for an ``h x w`` grid."""
    attention = np.asarray(attention)
    if attention.shape != (grid[0] * grid[1],) * 2:
        raise ValueError(f"attention {attention.shape} does not match grid {grid}")
    with atomic_open(path, "wb") as handle:
        np.savez(handle, attention=to_float16(attention), grid=np.asarray(grid, dtype=np.int64))


def read_attention(path: Path) -> AttentionFile:
    """Read one cached attention file.

    Raises:
        InputError: unreadable or inconsistent file.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            attention, grid = data["attention"], data["grid"]
    except Exception as exc:
        raise InputError(f"cannot read attention file {path}: {exc}") from None
    if grid.shape != (2,) or attention.shape != (int(grid[0]) * int(grid[1]),) * 2:
        raise InputError(f"attention file {path} is inconsistent: {attention.shape} for grid {grid.tolist()}")
    return AttentionFile(to_float32(attention), (int(grid[0]), int(grid[1])))


def done_ids(folder: Path) -> set[str]:
    return ids_in(folder, SUFFIX)
