"""A wrong image folder stops cams, refine and select-prompts at once with one line naming it."""

import shutil

from conftest import GOLDEN, GOLDEN_IDS
from helpers import CLIP, clipes

IDS = GOLDEN_IDS[:2]


def _custom_tree(root):
    """Images in root/photos, split lines '<id> <class name>' from the golden XML labels."""
    (root / "photos").mkdir(parents=True)
    lines = []
    for image_id in IDS:
        shutil.copy(GOLDEN / "JPEGImages" / f"{image_id}.jpg", root / "photos")
        text = (GOLDEN / "Annotations" / f"{image_id}.xml").read_text()
        names = [part.split("</name>")[0] for part in text.split("<name>")[1:]]
        lines.append(f"{image_id} {' '.join(dict.fromkeys(names))}\n")
    split = root / "split.txt"
    split.write_text("".join(lines))
    return split


def _one_error_line(result, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_cams_refine_and_select_prompts_name_the_folder_and_the_subfolder_with_the_images(tmp_path):
    split = _custom_tree(tmp_path / "data")
    classes = ["--classes", "prompts/voc12_classes.tsv"]
    data = tmp_path / "data"
    wrong = clipes("cams", "--dataset", "custom", "--data-root", data, "--split", split, "--clip", CLIP,
                   "--work", tmp_path / "w", "--no-progress", *classes)
    _one_error_line(wrong, f"is in {data};", f"they are in {data / 'photos'}")
    assert not (tmp_path / "w" / "cams").exists()
    picked = clipes("select-prompts", "--dataset", "custom", "--data-root", data, "--split", split, "--clip", CLIP,
                    "--out", tmp_path / "sel.tsv", "--no-progress", *classes)
    _one_error_line(picked, f"is in {data};", f"they are in {data / 'photos'}")
    right = clipes("cams", "--dataset", "custom", "--data-root", data / "photos", "--split", split, "--clip", CLIP,
                   "--work", tmp_path / "w", "--no-progress", *classes)
    assert right.returncode == 0 and "2 done" in right.stdout, right.stderr
    refined = clipes("refine", "--work", tmp_path / "w", "--data-root", data, "--no-crf", "--no-progress")
    _one_error_line(refined, f"is in {data};", f"they are in {data / 'photos'}")
    assert not (tmp_path / "w" / "masks").exists()
