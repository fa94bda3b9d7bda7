"""Options of the WeCLIP commands, with their defaults (the single source of truth; CLIs forward
only what the user set), and the checks that run before anything starts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from clipes.data.datasets import open_dataset
from clipes.data.images import check_image_file
from clipes.data.prompts import DEFAULT_TEMPLATE, class_and_background_lists
from clipes.errors import InputError, UserError
from clipes.weclip import rfm, schedule
from clipes.weclip.data import Sample


@dataclass
class ModelOptions:
    """What shapes WeCLIP's numbers (recorded in checkpoints and manifests).

    Attributes:
        dataset: ``voc12``, ``coco14`` or ``custom`` (class list, box threshold, late-phase blocks).
        class_file / background_file: override the built-in lists.
        template: prompt template.
        width: decoder width E (reference 256).
        grad_method: ``analytic`` (closed form, all classes at once) or ``autograd`` (reference).
        fp16_out_proj: the reference's fp16 attention out-projections (CLIP and decoder).
        late_blocks: late-phase candidate blocks [VOC 6, COCO 10].
        box_threshold: CAM box threshold [VOC 0.4, COCO 0.7].
    """

    dataset: str = "voc12"
    class_file: Path | None = None
    background_file: Path | None = None
    template: str = DEFAULT_TEMPLATE
    width: int = 256
    grad_method: str = "analytic"
    fp16_out_proj: bool = True
    late_blocks: int | None = None
    box_threshold: float | None = None

    def resolved(self) -> "ModelOptions":
        out = ModelOptions(**asdict(self))
        if out.late_blocks is None:
            out.late_blocks = rfm.LATE_BLOCKS.get(out.dataset, 6)
        if out.box_threshold is None:
            out.box_threshold = rfm.BOX_THRESHOLD.get(out.dataset, 0.4)
        return out

    def plain(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.resolved()).items()}


@dataclass
class TrainOptions:
    """``clipes train-weclip``.

    Attributes:
        data_root / split / clip / work: dataset folder, training ids, CLIP checkpoint, work folder
            (checkpoints go to ``<work>/weclip``, or ``out``).
        labels_file / images_dir: as for ``clipes cams``.
        iters: training iterations [VOC 30000, COCO 80000].
        batch_size: images per iteration per process [4].
        crop: crop size [320].
        lr: decoder learning rate [2e-3 = the reference's 10 x 2e-4].
        weight_decay, warmup_iters: [0.01, 50].
        switch_iter: first iteration (1-based) of the decoder-guided RFM [the reference's effective
            point scaled to ``iters``: VOC 9145 of 30000 (its validation forwards advance the
            counter), COCO 40001 of 80000].
        aff_weight: weight of the affinity loss [0.1].
        seed: [1, as the reference].
        jobs: data-loading workers [2].
        checkpoint_interval: iterations between checkpoints [2000, or ``iters`` when smaller].
        launcher: ``none`` or ``pytorch`` (torchrun).
        resume: continue from the last checkpoint in the output folder.
        options: mmengine-style config overrides applied last.
    """

    data_root: Path | None = None
    split: Path | None = None
    clip: str | None = None
    work: Path | None = None
    out: Path | None = None
    model: ModelOptions = field(default_factory=ModelOptions)
    labels_file: Path | None = None
    images_dir: str | None = None
    iters: int | None = None
    batch_size: int = 4
    crop: int = 320
    lr: float = schedule.BASE_LR * schedule.LR_MULTIPLIER
    weight_decay: float = schedule.WEIGHT_DECAY
    warmup_iters: int = schedule.WARMUP_ITERS
    switch_iter: int | None = None
    aff_weight: float = 0.1
    seed: int = 1
    jobs: int = 2
    checkpoint_interval: int | None = None
    launcher: str = "none"
    resume: bool = True
    verbose: bool = False
    progress: bool = True
    options: dict = field(default_factory=dict)

    def resolved_iters(self) -> int:
        return int(self.iters or schedule.ITERS.get(self.model.dataset, 30000))

    def resolved_switch(self) -> int:
        if self.switch_iter is not None:
            return int(self.switch_iter)
        dataset = self.model.dataset
        reference = schedule.ITERS.get(dataset, 30000)
        return max(1, round(schedule.SWITCH_ITER.get(dataset, 9145) * self.resolved_iters() / reference))


def prompt_lists(model: ModelOptions):
    """``(ClassList, background strings)`` of the options' dataset."""
    return class_and_background_lists(model.dataset, model.class_file, model.background_file)


def training_samples(opts, echo=print, order: str = "ascending") -> tuple[list[Sample], dict]:
    """Every usable training image with its classes, and the failures ``{id: reason}``.

    Args:
        opts: options with ``model`` (dataset, class files), ``data_root``, ``split``,
            ``labels_file``, ``images_dir``.
        order: ``ascending`` (WeCLIP: the reference's mask values) or ``source`` (the label source's
            order: VOC's XML order, WeCLIP+'s).

    Raises:
        UserError: no DATA_ROOT / SPLIT, an unreadable split, or no usable image at all.
    """
    if opts.data_root is None or opts.split is None:
        raise UserError("give DATA_ROOT and SPLIT: the training images and their ids")
    classes, _ = prompt_lists(opts.model)
    dataset = open_dataset(opts.model.dataset, opts.data_root, opts.split, classes, opts.labels_file, opts.images_dir)
    if not dataset.ids:
        raise UserError(f"{opts.split} lists no images")
    samples, failures = [], {}
    for image_id in dataset.ids:
        try:
            path = dataset.image_path(image_id)
            check_image_file(path)  # a missing, unreadable or truncated image is left out up front
            labels = list(dataset.labels(image_id))
        except InputError as exc:
            failures[image_id] = str(exc)
            echo(f"failed {image_id}: {exc}")
            continue
        samples.append(Sample(image_id, str(path), sorted(labels) if order == "ascending" else labels))
    if not samples:
        raise UserError(f"none of the {len(dataset.ids)} images of {opts.split} can be used for training")
    return samples, failures
