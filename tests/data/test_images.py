import numpy as np
import pytest
import torch
from PIL import Image

from clipes.data.images import check_size, load_image, to_clip_tensor
from clipes.errors import InputError

from helpers import noise_image


@pytest.mark.parametrize("mode,note", [("L", "grayscale"), ("RGBA", "alpha dropped"), ("P", "palette"),
                                       ("CMYK", "CMYK")])
def test_non_rgb_modes_become_rgb_with_a_note(tmp_path, mode, note):
    image = noise_image(40, 30, mode=mode)
    path = tmp_path / ("x.png" if mode != "CMYK" else "x.jpg")
    image.save(path)
    loaded, got_note = load_image(path)
    assert note in got_note
    tensor = to_clip_tensor(loaded, 16)
    assert tensor.shape == (3, 32, 48) and tensor.dtype == torch.float32
    if mode == "L":  # grayscale: the three channels carry the same pixel values
        raw = tensor * torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)
        raw = raw + torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
        torch.testing.assert_close(raw[0], raw[1], rtol=0, atol=1e-5)


def test_16_bit_png_is_scaled_to_8_bits(tmp_path):
    array = np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)
    Image.fromarray(array).save(tmp_path / "deep.png")
    loaded, note = load_image(tmp_path / "deep.png")
    assert "16-bit" in note and loaded.mode == "L"
    values = np.asarray(loaded)
    assert values.max() == 255 and values.min() == 0


def test_rgb_has_no_note_and_reference_resize(tmp_path):
    image = noise_image(33, 17)
    image.save(tmp_path / "x.png")
    loaded, note = load_image(tmp_path / "x.png")
    assert note is None
    tensor = to_clip_tensor(loaded, 16)
    expected = np.asarray(image.resize((48, 32), Image.BICUBIC), dtype=np.float32) / 255.0
    expected = (expected - np.array((0.48145466, 0.4578275, 0.40821073))) / np.array((0.26862954, 0.26130258, 0.27577711))
    np.testing.assert_allclose(tensor.permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="image not found"):
        load_image(tmp_path / "missing.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8not really a jpeg")
    with pytest.raises(InputError, match="cannot decode image"):
        load_image(tmp_path / "junk.jpg")
    noise_image(64, 64).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cannot decode image"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(InputError, match="smaller than one 16x16 patch"):
        check_size(noise_image(20, 10), 16, "tiny.png")
