import numpy as np
import torch

from clipes.backbones.text import encode_prompts
from clipes.data.prompts import DEFAULT_TEMPLATE, builtin_path, load_background_file, load_class_file

from conftest import GOLDEN


def test_text_features_equal_reference(golden_clip):
    ref = np.load(GOLDEN / "ref_debug" / "_text_features.npz", allow_pickle=False)
    classes = load_class_file(builtin_path("voc12_classes.tsv"))
    background = load_background_file(builtin_path("voc12_background.txt"))
    assert [DEFAULT_TEMPLATE.format(p) for p in classes.prompts] == list(ref["fg_prompts"])
    assert [DEFAULT_TEMPLATE.format(p) for p in background] == list(ref["bg_prompts"])
    fg = encode_prompts(golden_clip.model, list(classes.prompts), [DEFAULT_TEMPLATE])
    np.testing.assert_allclose(fg.numpy(), ref["fg_text_features"], atol=2e-6)


def test_split_synonyms_average_normalised_parts(golden_clip):
    model = golden_clip.model
    joined = encode_prompts(model, ["person with clothes,people,human"], [DEFAULT_TEMPLATE])
    split = encode_prompts(model, ["person with clothes,people,human", "cat"], [DEFAULT_TEMPLATE], synonyms="split")
    parts = encode_prompts(model, ["person with clothes", "people", "human"], [DEFAULT_TEMPLATE])
    mean = parts.mean(0)
    torch.testing.assert_close(split[0], mean / mean.norm(), rtol=0, atol=1e-6)
    assert not torch.allclose(split[0], joined[0], atol=1e-3)
    torch.testing.assert_close(split[1], encode_prompts(model, ["cat"], [DEFAULT_TEMPLATE])[0])


def test_template_ensemble_is_normalised(golden_clip):
    feats = encode_prompts(golden_clip.model, ["cat", "dog"], ["a photo of a {}.", "a {}."])
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(2))
