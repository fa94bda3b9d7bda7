import json
import statistics

import numpy as np
import pytest
import torch

from clipes.backbones.clip_loader import load_clip
from clipes.backbones.vit import DenseViT
from clipes.clip_es.prompt_select import average_precision, mean_average_precision, sharpness
from clipes.compat import import_clip
from clipes.data.datasets import open_dataset
from clipes.data.images import load_image, to_clip_tensor
from clipes.data.prompts import builtin_path, load_background_file, load_class_file

from conftest import GOLDEN
from helpers import clipes


def test_sharpness_by_hand():
    even, skewed, single = np.array([0.3, 0.3]), np.array([0.9, 0.1]), np.array([0.7])
    assert sharpness([even]) == pytest.approx(0.0)
    assert sharpness([single]) == pytest.approx(0.0)  # one label: no spread
    # var([0.9, 0.1]) = 0.16 (population), mean 0.5 -> 0.32
    assert sharpness([skewed]) == pytest.approx(0.32)
    three = np.array([0.6, 0.3, 0.0])  # var = (0.09 + 0 + 0.09) / 3 = 0.06, mean 0.3 -> 0.2
    assert sharpness([skewed, three, even]) == pytest.approx(0.32 + 0.2)
    assert sharpness([skewed, three, even], "ratio-of-sums") == pytest.approx((0.16 + 0.06) / (0.5 + 0.3 + 0.3))
    with pytest.raises(ValueError):
        sharpness([skewed], "median")
    with pytest.raises(ValueError):
        sharpness([])


def test_average_precision_by_hand():
    # ranking: 0.9 (+), 0.8 (-), 0.7 (+), 0.1 (-) -> precisions at hits 1/1 and 2/3
    assert average_precision(np.array([0.9, 0.1, 0.7, 0.8]), np.array([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([0.2, 0.1]), np.array([0, 0])) is None
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.3]])
    labels = np.array([[1, 0], [0, 1], [0, 0]], dtype=bool)
    assert mean_average_precision(scores, labels) == pytest.approx(1.0)


def _independent_sharpness(template, ids, softmax_over):
    """The spec's definition with plain Python statistics over clip's own features."""
    clip = import_clip()
    loaded = load_clip(str(GOLDEN / "clip.pt"))
    model = loaded.model
    vit = DenseViT(model.visual)
    classes = load_class_file(builtin_path("voc12_classes.tsv"))
    background = load_background_file(builtin_path("voc12_background.txt"))
    dataset = open_dataset("voc12", GOLDEN, GOLDEN / "split.txt", classes)
    prompts = list(classes.prompts) + (background if softmax_over == "classes+background" else [])
    with torch.no_grad():
        text = model.encode_text(clip.tokenize([template.format(p) for p in prompts])).float()
        text = text / text.norm(dim=-1, keepdim=True)
        total = 0.0
        for image_id in ids:
            image = to_clip_tensor(load_image(dataset.image_path(image_id))[0], 16)[None]
            tokens = vit.visual.ln_post(vit.run_blocks(vit.embed(image), 0, vit.num_layers)[:, 0])
            feature = tokens[1:].mean(0) @ vit.visual.proj
            feature = feature / feature.norm()
            probs = (model.logit_scale.exp() * feature @ text.t()).softmax(-1)
            s = [float(probs[c]) for c in dataset.labels(image_id)]
            total += statistics.pvariance(s) / statistics.mean(s)
    return total


@pytest.mark.parametrize("softmax_over", ["classes", "classes+background"])
def test_command_ranks_the_whole_pool_and_matches_an_independent_computation(tmp_path, softmax_over):
    out = tmp_path / "ranking.tsv"
    result = clipes("select-prompts", "--dataset", "voc12", "--data-root", GOLDEN, "--split", GOLDEN / "split.txt",
                    "--clip", GOLDEN / "clip.pt", "--out", out, "--n-images", 8, "--softmax-over", softmax_over,
                    "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split("\t") for line in out.read_text().splitlines()[1:]]
    assert len(rows) == 81  # CLIP's 80 ImageNet templates + a clean origami {}.
    assert [int(r[0]) for r in rows] == list(range(1, 82))
    values = [float(r[1]) for r in rows]
    assert values == sorted(values) and values[-1] > values[0]
    templates = {r[3]: float(r[1]) for r in rows}
    assert "a clean origami {}." in templates
    ids = GOLDEN.joinpath("split.txt").read_text().split()[:8]
    for template in ("a clean origami {}.", "a bad photo of a {}."):
        expected = _independent_sharpness(template, ids, softmax_over)
        assert templates[template] == pytest.approx(expected, rel=1e-4, abs=1e-9)
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["images"] == 8 and report["ranking"][0]["template"] == rows[0][3]
    assert f'best: PROMPT="{rows[0][3]}"' in result.stdout
    again = tmp_path / "again.tsv"
    clipes("select-prompts", "--dataset", "voc12", "--data-root", GOLDEN, "--split", GOLDEN / "split.txt",
           "--clip", GOLDEN / "clip.pt", "--out", again, "--n-images", 8, "--softmax-over", softmax_over,
           "--no-progress")
    assert again.read_text() == out.read_text()  # deterministic ranking


def test_own_pool_and_bad_options(tmp_path):
    pool = tmp_path / "pool.txt"
    pool.write_text("# mine\na photo of a {}.\nan origami {}.\na photo of a {}.\n")
    out = tmp_path / "r.tsv"
    result = clipes("select-prompts", "--dataset", "voc12", "--data-root", GOLDEN, "--split", GOLDEN / "split.txt",
                    "--clip", GOLDEN / "clip.pt", "--out", out, "--pool", pool, "--n-images", 3, "--no-progress",
                    "--aggregate", "ratio-of-sums", "--feature", "cls")
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(out.read_text().splitlines()) == 3  # header + 2 distinct templates
    pool.write_text("no placeholder here\n")
    bad = clipes("select-prompts", "--dataset", "voc12", "--data-root", GOLDEN, "--split", GOLDEN / "split.txt",
                 "--clip", GOLDEN / "clip.pt", "--out", out, "--pool", pool, "--no-progress")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "must contain {}" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = clipes("select-prompts", "--dataset", "voc12", "--data-root", tmp_path / "nope", "--split",
                     GOLDEN / "split.txt", "--clip", GOLDEN / "clip.pt", "--no-progress")
    assert missing.returncode == 2 and "DATA_ROOT not found" in missing.stderr
