import pytest

from clipes.data.prompts import builtin_path, check_template, load_background_file, load_class_file, load_template_file
from clipes.errors import UserError


def test_builtin_lists_match_the_reference():
    voc = load_class_file(builtin_path("voc12_classes.tsv"))
    coco = load_class_file(builtin_path("coco14_classes.tsv"))
    assert len(voc.names) == 20 and len(coco.names) == 80
    assert voc.prompts[2] == "bird avian" and voc.prompts[14] == "person with clothes,people,human"
    assert voc.prompts[10] == "diningtable" and voc.prompts[19] == "tvmonitor screen"
    assert coco.prompts[31] == "sknowboard" and coco.prompts[44] == "dessertspoon"
    assert coco.prompts[78] == "hairdrier,blowdrier" and coco.names[78] == "hair_drier"
    voc_bg = load_background_file(builtin_path("voc12_background.txt"))
    coco_bg = load_background_file(builtin_path("coco14_background.txt"))
    assert len(voc_bg) == 25 and len(coco_bg) == 23
    assert coco_bg == [b for b in voc_bg if b not in ("keyboard", "sign")]


def test_template_pool_has_80_imagenet_templates_plus_origami():
    pool = load_template_file(builtin_path("templates.txt"))
    assert len(pool) == 81 and len(set(pool)) == 81
    assert pool[-1] == "a clean origami {}." and "itap of my {}." in pool


def test_bad_files_name_file_and_line(tmp_path):
    bad = tmp_path / "classes.tsv"
    bad.write_text("cat\ndining table\n")
    with pytest.raises(UserError, match=r"classes.tsv:2: .*whitespace"):
        load_class_file(bad)
    bad.write_text("cat\ncat\tfeline\n")
    with pytest.raises(UserError, match="appears twice"):
        load_class_file(bad)
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(UserError, match="empty"):
        load_background_file(tmp_path / "empty.txt")
    with pytest.raises(UserError, match="exactly once"):
        check_template("a photo")
    with pytest.raises(UserError, match="not found"):
        load_class_file(tmp_path / "missing.tsv")


def test_class_file_prompt_defaults_to_name(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text("# comment\nwidget\ngizmo\tshiny gizmo,gadget\n")
    classes = load_class_file(path)
    assert classes.names == ("widget", "gizmo") and classes.prompts == ("widget", "shiny gizmo,gadget")
