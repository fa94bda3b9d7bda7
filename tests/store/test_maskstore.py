"""Mask and confidence PNGs: palette, values, atomic writes."""

import numpy as np
import pytest
from PIL import Image

from clipes.errors import InputError
from clipes.store import maskstore


def test_voc_palette_colours():
    palette = maskstore.voc_palette()
    assert len(palette) == 768
    assert palette[0:3] == [0, 0, 0] and palette[3:6] == [128, 0, 0] and palette[15 * 3:16 * 3] == [192, 128, 128]
    assert palette[255 * 3:256 * 3] == [224, 224, 192]


def test_mask_roundtrip_is_a_palette_png(tmp_path):
    label = np.array([[0, 1, 15], [20, 255, 3]], np.uint8)
    path = maskstore.png_path(tmp_path, "a")
    maskstore.write_mask(path, label)
    with Image.open(path) as image:
        assert image.mode == "P" and image.convert("RGB").getpixel((1, 0)) == (128, 0, 0)
    np.testing.assert_array_equal(maskstore.read_png(path), label)
    assert maskstore.done_ids(tmp_path) == {"a"} and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_confidence_is_rounded_to_255ths(tmp_path):
    path = maskstore.png_path(tmp_path, "c")
    maskstore.write_confidence(path, np.array([[0.0, 0.5, 0.999, 1.0]]))
    assert maskstore.read_png(path).tolist() == [[0, 128, 255, 255]]


def test_bad_png_and_ids_are_refused(tmp_path):
    Image.new("RGB", (2, 2)).save(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="RGB image"):
        maskstore.read_png(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="not found"):
        maskstore.read_png(tmp_path / "none.png")
    with pytest.raises(InputError):
        maskstore.png_path(tmp_path, "../x")
