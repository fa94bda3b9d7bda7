"""DINOv2 from local weights: the hub layout, Hugging Face folders, registers, SwiGLU, the refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clipes.backbones.dinov2 import DinoConfig, DinoV2, load_dino
from clipes.compat import ensure_torchvision
from clipes.errors import UserError

from conftest import GOLDEN
from helpers import make_tiny_dino


def _hf(tmp_path, registers: int = 0, swiglu: bool = False, seed: int = 0):
    """A tiny random Hugging Face Dinov2 (with registers) model saved as a folder, and the model."""
    ensure_torchvision()
    import transformers

    torch.manual_seed(seed)
    kwargs = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=4, image_size=56,
                  patch_size=14, use_swiglu_ffn=swiglu)
    if registers:
        config = transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **kwargs)
        model = transformers.Dinov2WithRegistersModel(config)
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**kwargs))
    with torch.no_grad():  # non-trivial LayerScale, norms and tokens
        for name, param in model.named_parameters():
            if "lambda1" in name or "layernorm" in name or "norm" in name or "token" in name:
                param.add_(0.3 * torch.randn_like(param))
    folder = tmp_path / f"hf-{registers}-{swiglu}"
    model.save_pretrained(folder)
    return folder, model.eval()


@pytest.mark.parametrize("registers, swiglu", [(0, False), (4, False), (0, True)])
def test_a_hugging_face_folder_gives_the_same_patch_tokens_as_transformers(tmp_path, registers, swiglu):
    folder, reference = _hf(tmp_path, registers, swiglu)
    loaded = load_dino(folder)
    config = loaded.config
    assert (config.embed_dim, config.depth, config.num_heads, config.num_register_tokens, config.swiglu) == \
        (64, 2, 4, registers, swiglu)
    images = torch.randn(2, 3, 56, 56)  # the model's own 4 x 4 grid: no interpolation on either side
    with torch.no_grad():
        ours = loaded.model(images)
        theirs = reference(pixel_values=images).last_hidden_state  # after the final LayerNorm
    start = 1 + registers
    assert float((ours["x_norm_patchtokens"] - theirs[:, start:]).abs().max()) <= 1e-5
    assert float((ours["x_norm_clstoken"] - theirs[:, 0]).abs().max()) <= 1e-5
    assert ours["grid"] == (4, 4)


def test_hub_state_dicts_load_in_every_form(tmp_path):
    path = make_tiny_dino(tmp_path / "dino.pth", width=64, depth=2, heads=2, grid=5)
    plain = load_dino(path)
    assert plain.config == DinoConfig(64, 2, 2, 14, 5, 0, 256, False, True, 1e-6, 0.1, False)
    state = torch.load(path, weights_only=True)
    images = torch.randn(1, 3, 98, 84)  # 7 x 6 patches: the positional table is interpolated
    with torch.no_grad():
        expected = plain.model(images)["x_norm_patchtokens"]
    forms = {"chunked.pth": {k.replace("blocks.", "blocks.0.", 1) if k.startswith("blocks.") else k: v
                             for k, v in state.items()},
             "ddp.pth": {f"module.{k}": v for k, v in state.items()},
             "wrapped.pth": {"model": state}}
    for name, content in forms.items():
        torch.save(content, tmp_path / name)
        (tmp_path / name.replace(".pth", "_config.json")).write_text('{"num_heads": 2}')  # heads: not in weights
        with torch.no_grad():
            got = load_dino(tmp_path / name).model(images)["x_norm_patchtokens"]
        assert torch.equal(got, expected), name
    from safetensors.torch import save_file

    save_file(state, tmp_path / "dino.safetensors")
    (tmp_path / "dino_config.json").write_text('{"num_heads": 2}')
    assert torch.equal(load_dino(tmp_path / "dino.safetensors").model(images)["x_norm_patchtokens"], expected)
    assert expected.shape == (1, 42, 64)


def test_the_positional_interpolation_is_the_hubs(tmp_path):
    """scale_factor (n + 0.1) / grid, bicubic, antialias off: not the output-size resampling of timm or transformers."""
    path = make_tiny_dino(tmp_path / "dino.pth", width=32, depth=1, heads=1, grid=6)
    model = load_dino(path).model
    table = model.pos_embed.detach()
    patches = table[:, 1:].reshape(1, 6, 6, 32).permute(0, 3, 1, 2)
    hub = torch.nn.functional.interpolate(patches, scale_factor=(4.1 / 6, 5.1 / 6), mode="bicubic", antialias=False)
    by_size = torch.nn.functional.interpolate(patches, size=(4, 5), mode="bicubic", antialias=False)
    got = model.positional(4, 5)
    assert torch.equal(got[:, 0], table[:, 0])
    assert torch.equal(got[:, 1:], hub.permute(0, 2, 3, 1).reshape(1, 20, 32))
    assert float((got[:, 1:] - by_size.permute(0, 2, 3, 1).reshape(1, 20, 32)).abs().max()) > 1e-4
    assert torch.equal(model.positional(6, 6), table)  # the model's own grid: the table as it is


def test_the_golden_dino_is_read_with_its_config(tmp_path):
    loaded = load_dino(GOLDEN.parent / "weclipplus-small" / "dino.pt")
    recorded = json.loads((GOLDEN.parent / "weclipplus-small" / "dino_config.json").read_text())
    assert loaded.config.num_heads == recorded["num_heads"] and loaded.config.embed_dim == recorded["embed_dim"]
    assert sum(p.numel() for p in loaded.model.parameters()) + loaded.config.embed_dim == recorded["n_params"]
    assert all(not p.requires_grad for p in loaded.model.parameters()) and not loaded.model.training


def test_wrong_files_are_one_line(tmp_path):
    with pytest.raises(UserError, match="is a CLIP checkpoint, not a DINOv2"):
        load_dino(GOLDEN / "clip.pt")
    other_patch = make_tiny_dino(tmp_path / "p16.pth", patch=16)
    with pytest.raises(UserError, match="16-pixel patches; this method needs 14"):
        load_dino(other_patch)
    assert load_dino(other_patch, patch_size=None).config.patch_size == 16
    state = torch.load(make_tiny_dino(tmp_path / "ok.pth"), weights_only=True)
    del state["blocks.1.attn.qkv.weight"]
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(UserError, match="blocks.1.attn.qkv.weight missing"):
        load_dino(tmp_path / "cut.pth")
    (tmp_path / "notes.pth").write_text("dinov2 weights\n")
    with pytest.raises(UserError, match="text file"):
        load_dino(tmp_path / "notes.pth")
    with pytest.raises(UserError, match="not found"):
        load_dino(tmp_path / "missing.pth")
    torch.save({"head.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not a DINOv2 checkpoint"):
        load_dino(tmp_path / "other.pth")


def test_fused_attention_is_the_same_maths(tmp_path):
    path = make_tiny_dino(tmp_path / "dino.pth")
    images = torch.randn(1, 3, 70, 70)
    with torch.no_grad():
        explicit = load_dino(path).model(images)["x_norm_patchtokens"]
        fused = load_dino(path, fused=True).model(images)["x_norm_patchtokens"]
    assert float((explicit - fused).abs().max()) <= 1e-4
    assert np.isfinite(explicit.numpy()).all()


def test_a_model_of_no_released_shape_is_named_custom():
    assert DinoConfig(384, 12, 6).hub_name() == "dinov2_vits14"
    assert DinoConfig(768, 12, 12, num_register_tokens=4).hub_name() == "dinov2_vitb14_reg"
    assert DinoConfig(64, 4, 2).hub_name() == "custom"
    assert isinstance(DinoV2(DinoConfig(32, 1, 1, mlp_hidden=64)), torch.nn.Module)
