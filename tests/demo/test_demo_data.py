import numpy as np
import pytest
from PIL import Image

from clipes.data.datasets import open_dataset, read_split
from clipes.data.prompts import builtin_path, load_background_file, load_class_file
from clipes.demo import demo_data
from clipes.errors import UserError
from clipes.store import maskstore


def test_scenes_are_a_pure_function_of_the_seed():
    a, b, c = demo_data.render_scene(5), demo_data.render_scene(5), demo_data.render_scene(6)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.classes == b.classes and a.background == b.background
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("seed", range(0, 400, 23))
def test_mask_boxes_and_labels_agree(seed):
    scene = demo_data.render_scene(seed)
    assert scene.image.shape == (*demo_data.IMAGE_SIZE, 3) and scene.image.dtype == np.uint8
    assert 1 <= len(scene.classes) <= 3 and len(set(scene.classes)) == len(scene.classes)
    assert set(np.unique(scene.mask)) == {0, *(c + 1 for c in scene.classes)}
    for c, (x0, y0, x1, y1) in zip(scene.classes, scene.boxes):
        ys, xs = np.nonzero(scene.mask == c + 1)
        assert (xs.min(), ys.min(), xs.max(), ys.max()) == (x0, y0, x1, y1)
    assert scene.background in demo_data.BACKGROUNDS


def test_objects_take_their_class_colour():
    """Each object's pixels are near its class colour (shading and textures only darken a little)."""
    for seed in range(30):
        scene = demo_data.render_scene(seed)
        for c in scene.classes:
            mean = scene.image[scene.mask == c + 1].astype(float).mean(0)
            distances = [np.abs(mean - np.array(colour)).sum() for _, _, colour, _ in demo_data.CLASSES]
            assert int(np.argmin(distances)) == c


def test_class_statistics_cover_every_class_and_count():
    scenes = [demo_data.render_scene(s) for s in range(200)]
    per_class = np.bincount([c for s in scenes for c in s.classes], minlength=len(demo_data.CLASSES))
    counts = np.bincount([len(s.classes) for s in scenes], minlength=4)
    assert per_class.min() > 30
    assert counts[1] > 40 and counts[2] > 40 and counts[3] > 15
    assert len({s.background for s in scenes}) == len(demo_data.BACKGROUNDS)


def test_prompt_files_match_the_generator():
    classes = load_class_file(builtin_path("demo_classes.tsv"))
    assert classes.names == demo_data.CLASS_NAMES
    assert classes.prompts == demo_data.PROMPTS
    assert load_background_file(builtin_path("demo_background.txt")) == list(demo_data.BACKGROUNDS)


def test_voc_layout_reads_back_and_resumes(tmp_path):
    info = demo_data.write_voc_dataset(tmp_path, train=5, val=3)
    assert info["splits"] == {"train": 5, "val": 3, "trainval": 8}
    split = tmp_path / "ImageSets" / "Segmentation" / "trainval.txt"
    ids = [i for i, _ in read_split(split)]
    assert ids[:2] == ["demo_train_0000", "demo_train_0001"] and ids[-1] == "demo_val_0002"
    ds = open_dataset("voc12", tmp_path, split, load_class_file(builtin_path("demo_classes.tsv")))
    for image_id in ids:
        index = int(image_id[-4:])
        scene = demo_data.render_scene(demo_data.SPLIT_SEED_BASE[image_id.split("_")[1]] + index,
                                       demo_data.DATASET_IMAGE_SIZE)
        assert scene.mask.shape == demo_data.DATASET_IMAGE_SIZE
        assert ds.labels(image_id) == scene.classes
        gt = maskstore.read_png(maskstore.png_path(tmp_path / "SegmentationClass", image_id))
        assert np.array_equal(gt, scene.mask)
        jpeg = np.asarray(Image.open(ds.image_path(image_id)), dtype=float)
        assert np.abs(jpeg - scene.image).mean() < 6  # JPEG at quality 92
    # a second call keeps finished files and rewrites nothing
    stamp = (tmp_path / "JPEGImages" / "demo_val_0000.jpg").stat().st_mtime_ns
    (tmp_path / "SegmentationClass" / "demo_val_0001.png").unlink()
    demo_data.write_voc_dataset(tmp_path, train=5, val=3)
    assert (tmp_path / "JPEGImages" / "demo_val_0000.jpg").stat().st_mtime_ns == stamp
    assert (tmp_path / "SegmentationClass" / "demo_val_0001.png").is_file()
    assert not list(tmp_path.rglob("*.tmp-*"))
    with pytest.raises(UserError, match="made with other settings"):
        demo_data.write_voc_dataset(tmp_path, train=5, val=3, size=(224, 224))


def test_splits_never_share_seeds_with_the_demo_clip_training():
    from clipes.demo.demo_clip import PROBE_SEED_BASE, TRAIN_SEED_BASE

    val_end = demo_data.SPLIT_SEED_BASE["val"] + 10_000
    assert demo_data.SPLIT_SEED_BASE["train"] + 10_000 <= demo_data.SPLIT_SEED_BASE["val"]
    assert val_end <= PROBE_SEED_BASE < TRAIN_SEED_BASE
