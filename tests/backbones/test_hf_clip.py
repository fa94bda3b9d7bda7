"""Hugging Face CLIPModel folders and OpenAI-named safetensors files load into the same CLIP as
OpenAI's format: features equal transformers' own, CAMs equal those of the OpenAI-format file."""

import json

import numpy as np
import pytest
import torch

from clipes.backbones.clip_loader import load_clip
from clipes.backbones.hf_clip import hf_to_openai
from clipes.clip_es.cam_runner import CamOptions, run_cams
from clipes.compat import ensure_torchvision, import_clip
from clipes.errors import UserError
from clipes.store import camstore

from conftest import GOLDEN, GOLDEN_IDS
from helpers import copy_golden


def _transformers():
    ensure_torchvision()  # transformers imports torchvision whenever one is installed
    import transformers

    return transformers


def tiny_hf_clip(seed=0, act="quick_gelu", vision_heads=2, vision_width=128):
    transformers = _transformers()
    torch.manual_seed(seed)
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1,
                         vocab_size=49408, max_position_embeddings=77, hidden_act=act),
        vision_config=dict(hidden_size=vision_width, intermediate_size=4 * vision_width, num_hidden_layers=3,
                           num_attention_heads=vision_heads, image_size=64, patch_size=16, hidden_act=act),
        projection_dim=32)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # random, non-trivial norms and biases so that a swapped tensor shows
        for name, value in model.named_parameters():
            if "norm" in name or "layrnorm" in name or name.endswith(".bias"):
                value.add_(0.1 * torch.randn_like(value))
    return model


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "tiny-clip"
    model = tiny_hf_clip()
    model.save_pretrained(folder)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    return folder, model


def _features(model_hf, loaded):
    clip = import_clip()
    torch.manual_seed(1)
    pixels = torch.randn(3, 3, 64, 64)
    tokens = clip.tokenize(["a photo of a cat.", "origami dog", "a clean origami train."])
    with torch.no_grad():
        hf_image = model_hf.get_image_features(pixel_values=pixels)
        hf_text = model_hf.get_text_features(input_ids=tokens)
        hf_image = getattr(hf_image, "pooler_output", hf_image)
        hf_text = getattr(hf_text, "pooler_output", hf_text)
        ours_image = loaded.model.encode_image(pixels)
        ours_text = loaded.model.encode_text(tokens)
    return hf_image, ours_image, hf_text, ours_text


def test_folder_features_equal_transformers_own(hf_folder):
    folder, model = hf_folder
    loaded = load_clip(str(folder))
    hf_image, ours_image, hf_text, ours_text = _features(model, loaded)
    assert hf_image.shape == ours_image.shape == (3, 32) and hf_text.shape == ours_text.shape == (3, 32)
    assert hf_image.abs().max() > 0.1 and hf_text.abs().max() > 0.1
    assert (hf_image - ours_image).abs().max() <= 1e-5
    assert (hf_text - ours_text).abs().max() <= 1e-5
    assert torch.allclose(loaded.model.logit_scale, model.logit_scale)
    assert loaded.config["vision_width"] == 128 and loaded.config["vision_layers"] == 3
    assert loaded.config["text_width"] == 64 and loaded.config["vision_patch_size"] == 16
    assert len(loaded.sha256) == 64


def test_the_mapping_is_not_trivially_passing(hf_folder):
    """Swapping two blocks' weights in the mapped dict changes the features: the check has teeth."""
    folder, model = hf_folder
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "model.safetensors"))
    state = hf_to_openai(tensors, folder)
    q, k = state["visual.transformer.resblocks.0.attn.in_proj_weight"].chunk(3)[:2]
    assert torch.equal(q, tensors["vision_model.encoder.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(k, tensors["vision_model.encoder.layers.0.self_attn.k_proj.weight"])
    assert torch.equal(state["visual.proj"], tensors["visual_projection.weight"].t())


def test_safetensors_file_with_openai_names_loads_like_the_torch_file(tmp_path):
    from safetensors.torch import save_file

    reference = load_clip(str(GOLDEN / "clip.pt"))
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in reference.model.state_dict().items()}, str(path))
    loaded = load_clip(str(path))
    side = reference.config["pretrained_grid"] * reference.config["vision_patch_size"]
    image = torch.randn(1, 3, side, side)
    with torch.no_grad():
        assert torch.equal(loaded.model.encode_image(image), reference.model.encode_image(image))


def test_cams_on_a_hugging_face_folder_equal_cams_on_the_same_weights_in_openai_format(hf_folder, tmp_path):
    folder, _ = hf_folder
    loaded = load_clip(str(folder))
    openai_file = tmp_path / "same.pt"
    torch.save(loaded.model.state_dict(), openai_file)
    split = copy_golden(tmp_path / "data", GOLDEN_IDS[:3])
    results = {}
    for name, clip_source in (("hf", folder), ("openai", openai_file)):
        summary = run_cams(CamOptions(dataset="voc12", data_root=tmp_path / "data", split=split, clip=str(clip_source),
                                      work=tmp_path / name, progress=False), echo=lambda _: None)
        assert summary.done == 3 and not summary.failures
        results[name] = {i: camstore.read_cam_file(camstore.cam_path(tmp_path / name / "cams", i)) for i in GOLDEN_IDS[:3]}
    assert results["hf"]
    assert max(cam.cams.max() for cam in results["hf"].values()) > 0.5  # not all-zero maps
    for image_id, cam in results["hf"].items():
        other = results["openai"][image_id]
        assert cam.keys.tolist() == other.keys.tolist()
        np.testing.assert_allclose(cam.cams, other.cams, atol=1e-6)
    recorded = json.loads((tmp_path / "hf" / "cams" / "manifest.json").read_text())["clip"]
    assert recorded["path"] == str(folder) and recorded["sha256"] == loaded.sha256


def _edit_config(folder, tmp_path, change):
    copy = tmp_path / "edited"
    copy.mkdir()
    (copy / "model.safetensors").symlink_to(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("change,message", [
    (lambda c: c["vision_config"].update(hidden_act="gelu"), "activation 'gelu' is not OpenAI's QuickGELU"),
    (lambda c: c["text_config"].update(num_attention_heads=4), "4 attention heads for width 64"),
    (lambda c: c.update(model_type="siglip"), "model_type 'siglip' is not a Hugging Face CLIPModel"),
])
def test_configs_openai_code_cannot_run_are_refused_with_one_line(hf_folder, tmp_path, change, message):
    folder, _ = hf_folder
    with pytest.raises(UserError, match=message) as info:
        load_clip(str(_edit_config(folder, tmp_path, change)))
    assert "\n" not in str(info.value)


def test_missing_or_unknown_tensors_and_missing_weights_are_refused(hf_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    folder, _ = hf_folder
    tensors = load_file(str(folder / "model.safetensors"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((folder / "config.json").read_text())
    save_file({k: v for k, v in tensors.items() if k != "text_model.final_layer_norm.bias"},
              str(broken / "model.safetensors"))
    with pytest.raises(UserError, match="missing the tensor text_model.final_layer_norm.bias"):
        load_clip(str(broken))
    save_file({**tensors, "vision_model.extra.weight": torch.zeros(2)}, str(broken / "model.safetensors"))
    with pytest.raises(UserError, match="tensor vision_model.extra.weight has no place"):
        load_clip(str(broken))
    save_file({k: v for k, v in tensors.items() if "patch_embedding" not in k}, str(broken / "model.safetensors"))
    with pytest.raises(UserError, match="vision tower is not a ViT"):
        load_clip(str(broken))
    (broken / "model.safetensors").unlink()
    with pytest.raises(UserError, match="has a config.json but no model.safetensors"):
        load_clip(str(broken))
    (broken / "config.json").unlink()
    with pytest.raises(UserError, match="is a folder without a Hugging Face config.json"):
        load_clip(str(broken))
