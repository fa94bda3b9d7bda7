"""Reading the prompt data files under ``prompts/`` (or the user's own) with clear errors.

Formats (UTF-8, ``#`` starts a comment line, blank lines ignored):

* class file: one class per line, ``name`` or ``name<TAB>prompt string``. Line order is the
  0-based class index. Names are single tokens (no whitespace); the prompt defaults to the name.
* background file: one prompt string per line.
* template file: one template per line, containing ``{}`` exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from clipes.errors import UserError
from clipes.store.fsutil import read_lines

DEFAULT_TEMPLATE = "a clean origami {}."
BUILTIN = {"voc12", "coco14"}


@dataclass(frozen=True)
class ClassList:
    """Class names (index = position) and the prompt string of each."""

    names: tuple[str, ...]
    prompts: tuple[str, ...]

    def index(self, name: str) -> int | None:
        try:
            return self.names.index(name)
        except ValueError:
            return None


def builtin_path(filename: str) -> Path:
    """Path of a file shipped in the ``prompts`` package."""
    return Path(str(resources.files("prompts").joinpath(filename)))


def load_class_file(path: Path) -> ClassList:
    """Read a class file (see module docstring)."""
    names, prompts = [], []
    for n, line in read_lines(path, "class file"):
        name, _, prompt = line.partition("\t")
        name, prompt = name.strip(), prompt.strip() or name.strip()
        if any(ch.isspace() for ch in name):
            raise UserError(f"{path}:{n}: class name {name!r} contains whitespace (use name<TAB>prompt)")
        if name in names:
            raise UserError(f"{path}:{n}: class name {name!r} appears twice")
        names.append(name)
        prompts.append(prompt)
    return ClassList(tuple(names), tuple(prompts))


def load_background_file(path: Path) -> list[str]:
    """Read a background file: one prompt string per line."""
    return [line.strip() for _, line in read_lines(path, "background file")]


def load_template_file(path: Path) -> list[str]:
    """Read a template file; every template must contain ``{}`` exactly once."""
    templates = []
    for n, line in read_lines(path, "template file"):
        check_template(line.strip(), f"{path}:{n}")
        templates.append(line.strip())
    return templates


def check_template(template: str, where: str = "template") -> str:
    if template.count("{}") != 1:
        raise UserError(f"{where}: template {template!r} must contain {{}} exactly once")
    return template


def default_class_file(dataset: str) -> Path:
    if dataset not in BUILTIN:
        raise UserError(f"DATASET={dataset} has no built-in class list; pass a class file")
    return builtin_path(f"{dataset}_classes.tsv")


def default_background_file(dataset: str) -> Path:
    """VOC's list for voc12 and custom data, COCO's for coco14."""
    return builtin_path("coco14_background.txt" if dataset == "coco14" else "voc12_background.txt")


def class_and_background_lists(dataset: str, class_file: Path | None = None,
                               background_file: Path | None = None) -> tuple[ClassList, list[str]]:
    """The class list and background prompts of a run: the user's files, else the dataset's built-ins.

    Raises:
        UserError: ``custom`` data without a class file, or an unreadable file.
    """
    if dataset == "custom" and class_file is None:
        raise UserError("DATASET=custom needs a class file (--classes FILE)")
    classes = load_class_file(Path(class_file) if class_file else default_class_file(dataset))
    background = load_background_file(Path(background_file) if background_file else default_background_file(dataset))
    return classes, background
