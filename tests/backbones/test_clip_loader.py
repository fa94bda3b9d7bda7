import pickle

import pytest
import torch

from clipes.backbones.clip_loader import load_clip, read_state_dict, resolve_checkpoint
from clipes.errors import UserError

from conftest import GOLDEN, make_tiny_clip, save_state_dict


def _same_weights(loaded, reference):
    ref = {k: v.float() for k, v in reference.state_dict().items()}
    got = loaded.model.state_dict()
    assert set(got) == set(ref)
    for key, value in ref.items():
        assert torch.equal(got[key], value), key


def test_golden_checkpoint_architecture(golden_clip):
    cfg = golden_clip.config
    assert (cfg["vision_width"], cfg["vision_layers"], cfg["vision_heads"]) == (128, 12, 2)
    assert (cfg["text_width"], cfg["text_heads"], cfg["embed_dim"]) == (64, 1, 64)
    assert golden_clip.model.visual.transformer.resblocks[0].attn.num_heads == 2
    assert golden_clip.model.visual.conv1.weight.dtype == torch.float32
    assert len(golden_clip.sha256) == 64


@pytest.mark.parametrize("half", [True, False])
def test_plain_state_dict_fp16_and_fp32(tmp_path, half):
    model = make_tiny_clip(seed=3)
    path = save_state_dict(model, tmp_path / "m.pt", half=half)
    loaded = load_clip(str(path))
    expected = make_tiny_clip(seed=3)
    if half:
        expected = expected.half()
    _same_weights(loaded, expected)
    assert loaded.config["vision_heads"] == 2 and loaded.config["checkpoint_dtype"] == ("float16" if half else "float32")


def test_torchscript_archive(tmp_path):
    model = make_tiny_clip(seed=4)
    image, text = torch.randn(1, 3, 64, 64), torch.zeros(1, 77, dtype=torch.long)
    text[0, :3] = torch.tensor([49406, 320, 49407])
    traced = torch.jit.trace(model, (image, text), check_trace=False)
    path = tmp_path / "scripted.pt"
    traced.save(str(path))
    loaded = load_clip(str(path))
    _same_weights(loaded, make_tiny_clip(seed=4))


def test_wrapped_and_prefixed_state_dict(tmp_path):
    model = make_tiny_clip(seed=5)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "w.pt")
    _same_weights(load_clip(str(tmp_path / "w.pt")), make_tiny_clip(seed=5))


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(UserError, match="not found.*nope.pt"):
        resolve_checkpoint(str(tmp_path / "nope.pt"))


def test_not_a_clip_checkpoint(tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "x.pt")
    with pytest.raises(UserError, match="not a CLIP checkpoint"):
        load_clip(str(tmp_path / "x.pt"))
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match="cannot read CLIP checkpoint"):
        load_clip(str(tmp_path / "junk.pt"))


def test_resnet_clip_is_refused(tmp_path):
    state = {"visual.layer1.0.conv1.weight": torch.zeros(4, 4, 1, 1),
             "visual.attnpool.positional_embedding": torch.zeros(50, 8), "logit_scale": torch.zeros(())}
    torch.save(state, tmp_path / "rn.pt")
    with pytest.raises(UserError, match="ResNet CLIP"):
        load_clip(str(tmp_path / "rn.pt"))


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_objects_are_not_unpickled(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        torch.save({"visual.proj": _Payload()}, handle, pickle_module=pickle)
    with pytest.raises(UserError, match="refuses to unpickle|cannot read"):
        read_state_dict(path)
    assert "pwned" not in capsys.readouterr().out


def test_openai_name_download_failure_is_one_line(tmp_path, monkeypatch):
    from clipes.compat import import_clip

    clip = import_clip()

    def offline(url, root):
        raise OSError("network unreachable")

    monkeypatch.setattr(clip.clip, "_download", offline)
    with pytest.raises(UserError, match="could not download CLIP 'ViT-B/16'"):
        resolve_checkpoint("ViT-B/16", download_root=str(tmp_path))
    assert GOLDEN.joinpath("clip.pt").is_file()
