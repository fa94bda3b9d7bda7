"""The flags and command bodies that the one-stage methods' commands share.

``train-<method>``, ``predict-<method>`` and ``masks-<method>`` of WeCLIP, WeCLIP+ and ExCEL take the
same dataset, run and output flags and turn them into their method's options the same way; each
stage module adds only its method's own flags. Options the user did not give stay ``None`` and are
dropped, so the library's defaults rule.
"""

from __future__ import annotations

import sys
from typing import Callable

import click

from clipes.data.datasets import DATASETS
from stages.common import PATH, echo_main, only_set


def flags(*decorators: Callable) -> Callable:
    """One decorator applying click options so that ``--help`` lists them in the order given."""
    def apply(func):
        for decorator in reversed(decorators):
            func = decorator(func)
        return func
    return apply


NO_PROGRESS = click.option("--no-progress", "progress", flag_value=False, default=None, help="No progress bar.")
FORCE = click.option("--force", is_flag=True, default=None, help="Recompute into a folder made another way.")
DEVICE = click.option("--device", help="cpu (default), cuda or cuda:N.")

# the dataset and text flags every method's model options start with
DATASET_FLAGS = flags(
    click.option("--dataset", type=click.Choice(DATASETS), help="Dataset layout and class list [voc12]."),
    click.option("--classes", "class_file", type=PATH, help="Class file: name<TAB>prompt per line."),
    click.option("--background", "background_file", type=PATH, help="Background prompts, one per line."),
    click.option("--prompt", "template", help="Prompt template with {} [a clean origami {}.]."),
)
DATASET_KEYS = ("dataset", "class_file", "background_file", "template")

# where the training images come from
SOURCE_FLAGS = flags(
    click.option("--labels", "labels_file", type=PATH,
                 help="voc12: plain label file '<id> <class> ...' instead of XML."),
    click.option("--images-dir", help="Image folder relative to DATA_ROOT [JPEGImages for voc12, else DATA_ROOT]."),
)


def train_input_flags(folder: str) -> Callable:
    """``--data-root``, ``--split``, ``--clip``, ``--work``/``--out`` (checkpoints in WORK/<folder>)."""
    return flags(
        click.option("--data-root", type=PATH, required=True, help="Dataset folder (VOC: the VOC2012 folder)."),
        click.option("--split", type=PATH, required=True, help="Training ids (VOC: train_aug.txt)."),
        click.option("--clip", "clip_source", required=True, help="CLIP ViT checkpoint (OpenAI name or path)."),
        click.option("--work", type=PATH, help=f"Work folder; checkpoints in WORK/{folder}."),
        click.option("--out", type=PATH, help=f"Checkpoint folder [WORK/{folder}]."),
    )


# how a training run runs: workers, checkpoints, processes, resume, logging
TRAIN_RUN_FLAGS = flags(
    click.option("--jobs", type=int, help="Data-loading workers [2]."),
    click.option("--checkpoint-interval", type=int, help="Iterations between checkpoints [2000]."),
    click.option("--launcher", type=click.Choice(["none", "pytorch"]), help="pytorch under torchrun [none]."),
    click.option("--resume/--no-resume", default=None, help="Continue from OUT's last checkpoint [resume]."),
    click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
                 help="mmengine config override (repeatable)."),
    click.option("--verbose", is_flag=True, default=None, help="Also print mmengine's whole log on the console."),
    NO_PROGRESS,
)


def infer_flags(title: str, *extra: Callable) -> Callable:
    """``--checkpoint``, ``--clip``, then ``extra`` (a second backbone, the image size), ``--device`` and the rest."""
    return flags(
        click.option("--checkpoint", type=PATH, required=True,
                     help=f"{title} checkpoint (clipes iter_N.pth or the reference's)."),
        click.option("--clip", "clip_source", help="CLIP checkpoint [the one a clipes checkpoint names]."),
        *extra,
        DEVICE,
        FORCE,
        NO_PROGRESS,
    )


# predict-<method>: which images, where to, CRF
PREDICT_FLAGS = flags(
    click.option("--images", type=PATH, help="Image folder to predict."),
    click.option("--split", type=PATH, help="Only these ids [every image in IMAGES]."),
    click.option("--work", type=PATH,
                 help="Work folder: predictions go to WORK/predictions (scored by `clipes eval`)."),
    click.option("--out", type=PATH, help="Prediction folder [WORK/predictions]."),
    click.option("--crf/--no-crf", default=None, help="Dense CRF after the multi-scale logits [on, as published]."),
    click.option("--jobs", type=int, help="CRF worker processes [1 on CPU, up to 8 on a GPU]."),
)

# masks-<method>: a dataset split into OUT/masks
MASKS_FLAGS = flags(
    click.option("--data-root", type=PATH, required=True, help="Dataset folder."),
    click.option("--split", type=PATH, required=True, help="Ids to make pseudo masks for."),
    click.option("--labels", "labels_file", type=PATH, help="voc12: plain label file instead of XML."),
    click.option("--images-dir", help="Image folder relative to DATA_ROOT."),
    click.option("--work", type=PATH, help="Work folder: masks go to WORK/masks."),
    click.option("--out", type=PATH, help="Folder whose masks/ receives them [WORK]."),
)


def pop_model(options: dict, keys: tuple[str, ...]) -> dict:
    """Take the model flags out of ``options``: the ones the user gave."""
    return only_set(**{key: options.pop(key, None) for key in keys})


def given_options(options: dict, renames: dict[str, str] | None = None) -> dict:
    """The options the user gave, ``--clip`` as ``clip`` and any other flag renamed to its option's name."""
    options = only_set(**options)
    for flag, name in {"clip_source": "clip", **(renames or {})}.items():
        if flag in options:
            options[name] = options.pop(flag)
    return options


def train(command: str, options: dict, model, train_options: Callable, run_train: Callable) -> None:
    """Run a training command: ``run_train(train_options(model=model, ...))``, then say where it wrote."""
    from clipes.mmseg_ext.runner import parse_options

    options = given_options(options)
    options["options"] = parse_options(options.get("options") or ())
    out = run_train(train_options(model=model, **options), echo=echo_main)
    echo_main(f"{command}: done; checkpoints and logs in {out}")


def infer(run: Callable, infer_options: Callable, options: dict, keys: tuple[str, ...],
          renames: dict[str, str] | None = None) -> None:
    """Run ``predict-``/``masks-<method>``; exit 1 when any image failed.

    A clipes checkpoint records its model options; each model flag given here overrides only itself.
    """
    model = pop_model(options, keys)
    summary = run(infer_options(model=model, **given_options(options, renames)), echo=click.echo)
    sys.exit(1 if summary.failed else 0)
