"""Interoperability with the CLIP-ES code's ``.npy`` CAM files.

CLIP-ES saves, per image, ``np.save`` of a Python dict ``{"keys": int64 [K], "attn_highres":
float16 [K, H, W]}`` (0-based class indices, refined maps at image size). Such a file is a pickle:
reading one runs code from the file, so :func:`read_clipes_npy` refuses unless the caller says
the file is trusted. Writing one is only done on request (``clipes export-npy``); clipes' own
folders never contain pickles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clipes.errors import InputError, UserError
from clipes.store.fsutil import atomic_open


def read_clipes_npy(path: Path, allow_pickle: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(keys [K] int64, maps [K, H, W] float32)`` from a CLIP-ES ``.npy`` dict.

    Args:
        path: the file.
        allow_pickle: must be True: these files are pickles (only for files you trust).

    Raises:
        UserError: ``allow_pickle`` not given.
        InputError: unreadable file or not a CLIP-ES CAM dict.
    """
    if not allow_pickle:
        raise UserError(f"{path} is a pickled CLIP-ES dict; reading it can run code from the file. "
                        f"Pass --allow-pickle if you trust it")
    try:
        data = np.load(path, allow_pickle=True)
        data = data.item() if data.dtype == object and data.shape == () else None
    except Exception as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or "keys" not in data or "attn_highres" not in data:
        raise InputError(f"{path} is not a CLIP-ES CAM dict with 'keys' and 'attn_highres'")
    keys = np.asarray(data["keys"], dtype=np.int64)
    maps = np.asarray(data["attn_highres"], dtype=np.float32)
    if keys.ndim != 1 or maps.ndim != 3 or maps.shape[0] != keys.shape[0]:
        raise InputError(f"{path}: keys {keys.shape} do not match attn_highres {maps.shape}")
    return keys, maps


def write_clipes_npy(path: Path, keys: np.ndarray, maps: np.ndarray) -> None:
    """Atomically write a CLIP-ES ``.npy`` dict (``keys`` int64, ``attn_highres`` float16)."""
    record = {"keys": np.asarray(keys, dtype=np.int64), "attn_highres": np.asarray(maps, dtype=np.float16)}
    with atomic_open(Path(path), "wb") as handle:
        np.save(handle, record, allow_pickle=True)
