import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipes.backbones.clip_loader import load_clip
from clipes.demo import demo_clip, demo_data
from stages.demo import DEMO_CLIP


def test_object_phrases():
    assert demo_clip.object_phrase([0]) == "a red disc"
    assert demo_clip.object_phrase([1, 5]) == "a blue square and a cyan ring"
    assert demo_clip.object_phrase([2, 3, 4], article="") == "yellow triangle, magenta star and orange cross"


def test_captions_name_the_window_content():
    rng = np.random.default_rng(0)
    seen_background_only = False
    for _ in range(50):
        text, named = demo_clip.caption((0, 4), "sand", rng)
        assert "red disc" in text and "orange cross" in text
        assert named == ("on sand" in text)
        text, named = demo_clip.caption((), "wood", rng)
        assert named and "wood" in text and "disc" not in text
        seen_background_only = True
    assert seen_background_only


def test_contrastive_loss_against_a_hand_computation():
    torch.manual_seed(0)
    image, text = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    scale = torch.tensor(math.log(10.0), dtype=torch.float64)
    eye = torch.eye(5, dtype=torch.bool)
    logits = 10 * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
    plain = (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.t(), torch.arange(5))) / 2
    assert torch.allclose(demo_clip.contrastive_loss(image, text, eye, scale), plain)
    positives = eye.clone()
    positives[0, 3] = positives[3, 0] = True  # captions 0 and 3 describe both images 0 and 3
    positives[1, 2] = True  # caption 2 also describes image 1 (not the reverse)
    expected_rows, expected_cols = [], []
    for i in range(5):
        hits = [j for j in range(5) if positives[i, j]]
        expected_rows.append(-sum(logits[i].log_softmax(0)[j] for j in hits) / len(hits))
    for j in range(5):
        hits = [i for i in range(5) if positives[i, j]]
        expected_cols.append(-sum(logits[:, j].log_softmax(0)[i] for i in hits) / len(hits))
    expected = (torch.stack(expected_rows).mean() + torch.stack(expected_cols).mean()) / 2
    assert torch.allclose(demo_clip.contrastive_loss(image, text, positives, scale), expected)


@pytest.mark.parametrize("seed", range(12))
def test_windows_never_cut_an_object_ambiguously(seed):
    scene = demo_data.render_scene(seed)
    rng = np.random.default_rng(seed)
    for _ in range(20):
        window, inside = demo_clip.pick_window(scene, rng)
        assert window.shape == (14, 14) and window.any()
        pixels = np.kron(window, np.ones((16, 16), bool))
        for c in scene.classes:
            fraction = (pixels & (scene.mask == c + 1)).sum() / (scene.mask == c + 1).sum()
            assert (fraction >= 0.6) == (c in inside)
            assert not 0.15 < fraction < 0.6


def test_batches_are_reproducible_and_positives_are_consistent():
    images, windows, texts, positives = demo_clip.make_batch(3, 12)
    again = demo_clip.make_batch(3, 12)
    assert torch.equal(images, again[0]) and torch.equal(windows, again[1]) and texts == again[2]
    assert images.shape == (12, 3, 224, 224) and windows.shape == (12, 196)
    assert positives.diagonal().all()
    assert not torch.equal(images, demo_clip.make_batch(4, 12)[0])


def test_window_pooling_is_a_masked_mean():
    model = demo_clip.build_model(0).eval()
    images = torch.randn(2, 3, 224, 224)
    windows = torch.zeros(2, 196)
    windows[0, :5] = 1
    windows[1] = 1
    with torch.no_grad():
        cls, pooled = demo_clip.image_features(model, images, windows)
        _, full = demo_clip.image_features(model, images)
        assert torch.allclose(cls, model.encode_image(images), atol=1e-4)
    assert torch.allclose(pooled[1], full[1], atol=1e-5)
    assert not torch.allclose(pooled[0], full[0], atol=1e-3)


def test_training_writes_an_openai_checkpoint_and_resumes_exactly(tmp_path):
    opts = demo_clip.TrainOptions(steps=4, batch_size=6, warmup=2, save_every=2)
    straight = tmp_path / "straight.pt"
    demo_clip.train_demo_clip(straight, opts, echo=lambda _: None)

    def kill_after_first_save(line):
        if "probe accuracy" in line:
            raise KeyboardInterrupt

    resumed = tmp_path / "resumed.pt"
    with pytest.raises(KeyboardInterrupt):
        demo_clip.train_demo_clip(resumed, opts, echo=kill_after_first_save)
    assert not resumed.exists() and resumed.with_name("resumed.pt.state").is_file()
    lines = []
    demo_clip.train_demo_clip(resumed, opts, echo=lines.append)
    assert any("resuming at step 2" in line for line in lines)
    assert not resumed.with_name("resumed.pt.state").exists()
    a = torch.load(straight, weights_only=True)
    b = torch.load(resumed, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype == torch.float16 for v in a.values())
    loaded = load_clip(str(straight))
    assert loaded.config["vision_layers"] == demo_clip.ARCHITECTURE["vision_layers"]
    assert loaded.config["vision_patch_size"] == 16 and loaded.config["pretrained_grid"] == 14


def test_the_bundled_demo_clip():
    """The committed checkpoint: OpenAI format, under 10 MB, and it recognises held-out scenes."""
    assert DEMO_CLIP.is_file() and DEMO_CLIP.stat().st_size <= 10_000_000
    loaded = load_clip(str(DEMO_CLIP))
    assert loaded.config["vision_patch_size"] == 16 and loaded.config["checkpoint_dtype"] == "float16"
    assert demo_clip.probe(loaded.model, count=32) >= 0.75  # 0.84 measured; chance is about 0.1
