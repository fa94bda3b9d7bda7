"""The ``clipes cams`` command end to end, in subprocesses, as a user runs it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from clipes.store import camstore

from conftest import GOLDEN, GOLDEN_IDS
from helpers import CLIP, assert_one_line_each, cams_args, clipes, copy_golden, make_voc, noise_image, run_and_kill


def load_all(folder):
    out = {}
    for image_id in sorted(camstore.done_ids(folder)):
        cam = camstore.read_cam_file(camstore.cam_path(folder, image_id))
        out[image_id] = (cam.keys, cam.cams, cam.image_size)
    return out


@pytest.fixture(scope="module")
def golden_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("golden_run")
    result = clipes(*cams_args(GOLDEN, GOLDEN / "split.txt", work))
    assert result.returncode == 0, result.stderr
    return work, result


def test_cli_matches_reference_on_every_label(golden_run, golden_debug):
    work, result = golden_run
    assert "12 done, 0 already done, 0 failed" in result.stdout
    got = load_all(work / "cams")
    assert sorted(got) == GOLDEN_IDS
    for image_id, (keys, cams, size) in got.items():
        ref = golden_debug[image_id]
        assert keys.tolist() == ref["keys"].tolist() and size == tuple(ref["ori_hw"])
        assert cams.dtype == np.float32 and cams.shape == ref["gradcam_patch"].shape
        assert np.abs(cams - ref["gradcam_patch"]).max() <= 1e-3, image_id


def test_manifest_describes_the_run(golden_run):
    work, _ = golden_run
    data = json.loads((work / "cams" / "manifest.json").read_text())
    assert data["stage"] == "cams" and len(data["classes"]) == 20
    assert data["prompts"]["foreground"][14] == "a clean origami person with clothes,people,human."
    assert len(data["prompts"]["background"]) == 25
    assert data["clip"]["sha256"] == __import__("hashlib").sha256((GOLDEN / "clip.pt").read_bytes()).hexdigest()
    assert data["counts"] == {"files": 12, "failed": 0} and data["failures"] == {}
    assert data["versions"]["torch"] and data["runs"][-1]["done"] == 12


def test_rerun_skips_finished_files(golden_run):
    work, _ = golden_run
    before = {p.name: p.stat().st_mtime_ns for p in (work / "cams").glob("*.npz")}
    result = clipes(*cams_args(GOLDEN, GOLDEN / "split.txt", work))
    assert result.returncode == 0 and "0 done, 12 already done, 0 failed" in result.stdout
    assert before == {p.name: p.stat().st_mtime_ns for p in (work / "cams").glob("*.npz")}


def test_kill_and_resume_gives_the_same_files(golden_run, tmp_path):
    work = tmp_path / "killed"
    run_and_kill(cams_args(GOLDEN, GOLDEN / "split.txt", work), work / "cams", "*.npz")
    partial = camstore.done_ids(work / "cams")
    assert 3 <= len(partial) < 12, "the run ended before it could be killed mid-way"
    for image_id in partial:  # every file that exists is complete
        camstore.read_cam_file(camstore.cam_path(work / "cams", image_id))
    result = clipes(*cams_args(GOLDEN, GOLDEN / "split.txt", work))
    assert result.returncode == 0 and f"{len(partial)} already done" in result.stdout
    resumed, reference = load_all(work / "cams"), load_all(golden_run[0] / "cams")
    assert sorted(resumed) == sorted(reference) == GOLDEN_IDS
    for image_id in reference:
        np.testing.assert_array_equal(resumed[image_id][1], reference[image_id][1])
    assert not [p for p in (work / "cams").iterdir() if p.name.startswith(".")]


def test_bad_inputs_are_reported_and_skipped(tmp_path):
    good = copy_golden(tmp_path, GOLDEN_IDS[:2])
    ids = GOLDEN_IDS[:2]
    noise = noise_image(64, 48)
    noise.save(tmp_path / "full.jpg")
    truncated = (tmp_path / "full.jpg").read_bytes()[:300]
    gray16 = __import__("PIL.Image").Image.fromarray((np.arange(48 * 64).reshape(48, 64) * 20).astype(np.uint16))
    items = {
        "missing_image": (None, ["cat"]), "corrupt": (b"not an image", ["cat"]), "truncated": (truncated, ["cat"]),
        "no_xml": (noise, None), "no_labels": (noise, []), "unknown": (noise, ["unicorn"]),
        "tiny": (noise_image(12, 40), ["cat"]), "gray": (noise_image(64, 48, mode="L"), ["dog"]),
        "rgba": (noise_image(64, 48, mode="RGBA"), ["dog"]), "palette": (noise_image(64, 48, mode="P"), ["dog"]),
    }
    make_voc(tmp_path, items)
    gray16.save(tmp_path / "JPEGImages" / "deep.png")
    (tmp_path / "Annotations" / "deep.xml").write_text((tmp_path / "Annotations" / "gray.xml").read_text())
    split = tmp_path / "all.txt"
    split.write_text("\n".join(ids + list(items) + ["deep"]) + "\n")
    assert good.exists()
    result = clipes(*cams_args(tmp_path, split, tmp_path / "work"))
    assert result.returncode == 1
    bad = {"missing_image": "image not found", "corrupt": "cannot decode image", "truncated": "cannot decode image",
           "no_xml": "annotation not found", "no_labels": "no labels", "unknown": "unknown class name 'unicorn'",
           "tiny": "smaller than one 16x16 patch"}
    assert_one_line_each(result, bad)
    assert "6 done, 0 already done, 7 failed" in result.stdout
    folder = tmp_path / "work" / "cams"
    assert camstore.done_ids(folder) == set(ids) | {"gray", "rgba", "palette", "deep"}
    data = json.loads((folder / "manifest.json").read_text())
    assert set(data["failures"]) == set(bad)
    assert {"gray", "rgba", "palette", "deep"} <= set(data["notes"])
    assert camstore.read_cam_file(folder / "gray.npz").keys.tolist() == [11]


@pytest.mark.parametrize("change,message", [
    ({"--data-root": "/nonexistent/voc"}, "DATA_ROOT not found"),
    ({"--split": "/nonexistent/split.txt"}, "split file not found"),
    ({"--clip": "/nonexistent/clip.pt"}, "CLIP checkpoint not found"),
    ({"--clip": str(GOLDEN / "split.txt")}, "cannot read CLIP checkpoint"),
])
def test_wrong_root_split_or_clip_stop_at_once(tmp_path, change, message):
    args = cams_args(GOLDEN, GOLDEN / "split.txt", tmp_path)
    for flag, value in change.items():
        args[args.index(flag) + 1] = value
    result = clipes(*args)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr
    assert not (tmp_path / "cams").exists()


def test_other_settings_need_force(golden_run, tmp_path):
    work = tmp_path / "w"
    split = copy_golden(tmp_path / "data", GOLDEN_IDS[:1])
    assert clipes(*cams_args(tmp_path / "data", split, work)).returncode == 0
    other = clipes(*cams_args(tmp_path / "data", split, work, "--prompt", "a photo of a {}."))
    assert other.returncode == 2 and "made with other settings" in other.stderr
    forced = clipes(*cams_args(tmp_path / "data", split, work, "--prompt", "a photo of a {}.", "--force"))
    assert forced.returncode == 0 and "1 done" in forced.stdout


def test_shards_split_the_work_without_collisions(golden_run, tmp_path):
    work = tmp_path / "sharded"
    procs = [subprocess.Popen([sys.executable, "-m", "stages.cli", *map(str, cams_args(
        GOLDEN, GOLDEN / "split.txt", work))], env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2"},
        stdout=subprocess.PIPE, text=True) for r in range(2)]
    outputs = [p.communicate()[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert all("6 done, 0 already done, 0 failed" in out for out in outputs)
    got, ref = load_all(work / "cams"), load_all(golden_run[0] / "cams")
    assert sorted(got) == GOLDEN_IDS
    for image_id in ref:
        np.testing.assert_array_equal(got[image_id][1], ref[image_id][1])
    data = json.loads((work / "cams" / "manifest.json").read_text())
    assert sorted(run["shard"] for run in data["runs"]) == ["0/2", "1/2"] and data["counts"]["files"] == 12


def test_batched_run_matches_reference(golden_debug, tmp_path):
    result = clipes(*cams_args(GOLDEN, GOLDEN / "split.txt", tmp_path, "--batch", "4", "--jobs", "2",
                               "--shard", "0/1"))
    assert result.returncode == 0, result.stderr
    for image_id, (keys, cams, _) in load_all(tmp_path / "cams").items():
        assert np.abs(cams - golden_debug[image_id]["gradcam_patch"]).max() <= 1e-3


def test_help_for_every_command():
    for args in (["--help"], ["cams", "--help"]):
        result = clipes(*args)
        assert result.returncode == 0 and "Usage:" in result.stdout


def test_coco_and_custom_layouts(tmp_path):
    images = GOLDEN / "JPEGImages"
    coco_split = tmp_path / "coco.txt"
    coco_split.write_text("2001_000001 39 14\n2001_000003 6\n")
    result = clipes("cams", "--dataset", "coco14", "--data-root", images, "--split", coco_split, "--clip", CLIP,
                    "--work", tmp_path / "coco", "--no-progress")
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "coco" / "cams" / "manifest.json").read_text())
    assert len(data["classes"]) == 80 and len(data["prompts"]["background"]) == 23
    assert camstore.read_cam_file(tmp_path / "coco" / "cams" / "2001_000001.npz").keys.tolist() == [39, 14]
    classes = tmp_path / "classes.tsv"
    classes.write_text("blob\tcoloured blob\nthing\n")
    custom_split = tmp_path / "custom.txt"
    custom_split.write_text("2001_000001 thing blob\n")
    result = clipes("cams", "--dataset", "custom", "--data-root", images, "--split", custom_split, "--clip", CLIP,
                    "--classes", classes, "--work", tmp_path / "custom", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert camstore.read_cam_file(tmp_path / "custom" / "cams" / "2001_000001.npz").keys.tolist() == [1, 0]
