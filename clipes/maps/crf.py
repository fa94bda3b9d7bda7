"""Dense CRF on the refined maps and the confidence rule (spec section 6).

The probability stack is ``[(1 - max_k map_k) ** bg_power, map_1, ..., map_K]`` (not renormalised).
By default it is formed in float16, as the reference does on the float16 maps it saved, so the
unary ``-log(clip(p, 1e-5, 1))`` carries the same rounding. The colour image of the bilateral term is
by default the reference's: BGR minus the Caffe mean, cast to uint8 with negative values wrapping
modulo 256 (made explicit here instead of relying on an undefined float-to-uint8 cast); ``"rgb"``
gives the plain image instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from clipes.errors import InputError
from clipes.store.halfcast import to_float16, to_float32

CRF_COLORS = ("reference", "rgb")
MEAN_BGR = (104.008, 116.669, 122.675)


@dataclass(frozen=True)
class CrfParams:
    """DenseCRF2D settings (reference values).

    Attributes:
        iterations: mean-field iterations.
        gaussian_sxy / gaussian_compat: smoothness kernel.
        bilateral_sxy / bilateral_srgb / bilateral_compat: appearance kernel.
        color: ``reference`` (BGR minus mean, wrapped to uint8) or ``rgb`` (the plain image).
        fp16_probs: form the probability stack and unary in float16, as the reference does.
        bg_power: exponent of the background score ``(1 - max) ** bg_power``.
    """

    iterations: int = 10
    gaussian_sxy: float = 1.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 4.0
    color: str = "reference"
    fp16_probs: bool = True
    bg_power: float = 1.0

    def as_dict(self) -> dict:
        return asdict(self)


def read_crf_image(path: Path, color: str = "reference") -> np.ndarray:
    """The colour image the bilateral kernel sees, ``[H, W, 3]`` uint8.

    The file is decoded by OpenCV as the reference does (8-bit BGR; grayscale becomes three equal
    channels), ignoring EXIF orientation so the size matches the CAM stage's decoding.

    Raises:
        InputError: missing or undecodable image.
    """
    if color not in CRF_COLORS:
        raise ValueError(f"unknown CRF colour mode {color!r}; expected one of {CRF_COLORS}")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {exc.strerror or exc}") from None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if bgr is None:
        raise InputError(f"cannot decode image {path}")
    if color == "rgb":
        return np.ascontiguousarray(bgr[:, :, ::-1])
    shifted = np.trunc(bgr.astype(np.float32) - np.asarray(MEAN_BGR, dtype=np.float32))
    return np.ascontiguousarray(np.mod(shifted.astype(np.int64), 256).astype(np.uint8))


def probability_stack(maps: np.ndarray, params: CrfParams = CrfParams()) -> np.ndarray:
    """``[1 + K, H, W]``: background score then the class maps (float16 or float32).

    The maximum and ``1 - max`` are taken in float32 and rounded once to float16: for float16
    inputs both are exact in float32, so the stack is bit-identical to forming it in float16 (as the
    reference does), without NumPy's element-wise float16 loops (5 ms per VOC image with 2 classes,
    now 0.3 ms).
    """
    fp16 = params.fp16_probs
    maps = to_float16(maps) if fp16 else to_float32(maps)
    background = 1 - to_float32(maps).max(axis=0, keepdims=True)  # float32, exact for float16 maps
    background = to_float16(background) if fp16 else background
    if params.bg_power != 1:
        background = np.power(background, params.bg_power).astype(maps.dtype)
    return np.concatenate([background, maps], axis=0)


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CrfParams = CrfParams()) -> np.ndarray:
    """Mean-field inference of a fully connected CRF.

    Args:
        image: ``[H, W, 3]`` uint8 (see :func:`read_crf_image`).
        probs: ``[L, H, W]`` label probabilities (not necessarily normalised).

    Returns:
        ``[L, H, W]`` float32 marginals.
    """
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    labels, height, width = probs.shape
    crf = dcrf.DenseCRF2D(width, height, labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb,
                             rgbim=np.ascontiguousarray(image), compat=params.bilateral_compat)
    return np.asarray(crf.inference(params.iterations), dtype=np.float32).reshape(labels, height, width)


def labels_and_confidence(probs: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Argmax label (0 background, ``keys[i] + 1`` for row i + 1) and its probability.

    Equal to ``np.argmax`` / ``np.max`` over the first axis (the first row wins ties), computed one
    row at a time in float32, which is exact for float16 stacks and avoids ``np.argmax``'s
    per-pixel strided loop (about 4 ms per VOC image).

    Args:
        probs: ``[1 + K, H, W]``.
        keys: ``[K]`` class indices.

    Returns:
        ``(label [H, W] uint8, confidence [H, W] float32)``.
    """
    lookup = np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1]).astype(np.uint8)
    rows = to_float32(probs)
    if rows.shape[0] > 256:  # more rows than a uint8 index holds
        return np.take(lookup, np.argmax(rows, axis=0)), rows.max(axis=0)
    best = rows[0].copy()
    winner = np.zeros(best.shape, dtype=np.uint8)
    for index in range(1, rows.shape[0]):
        better = (rows[index] > best).view(np.uint8)
        np.maximum(winner, better * np.uint8(index), out=winner)  # index exceeds every earlier winner
        np.maximum(best, rows[index], out=best)  # propagates NaN
    if np.isnan(best).any():  # np.argmax picks the first NaN; keep its rule there
        winner = np.argmax(rows, axis=0)
    return np.take(lookup, winner), best


def pseudo_mask(label: np.ndarray, confidence: np.ndarray, threshold: float) -> np.ndarray:
    """The hard confidence rule: pixels with confidence below ``threshold`` become 255."""
    out = label.copy()
    out[confidence < threshold] = 255
    return out


def crf_labels(image_path: Path, maps: np.ndarray, keys: np.ndarray, params: CrfParams = CrfParams(),
               crf: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Label and confidence maps of one image from its refined maps.

    Args:
        image_path: the image (read only when ``crf``).
        maps: ``[K, H, W]`` refined maps.
        keys: ``[K]`` class indices.
        crf: False skips the CRF; the confidence is then the winning entry of the stack.

    Returns:
        ``(label [H, W] uint8, confidence [H, W] float32)``.

    Raises:
        InputError: the image cannot be read or its size differs from the maps.
    """
    probs = probability_stack(maps, params)
    if crf:
        image = read_crf_image(image_path, params.color)
        if image.shape[:2] != probs.shape[1:]:
            raise InputError(f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its maps are "
                             f"{probs.shape[2]}x{probs.shape[1]}")
        probs = dense_crf(image, probs, params)
    return labels_and_confidence(probs, keys)
