"""Options of ``train-weakclip`` and ``masks-weakclip`` (plain dataclasses, no mmseg needed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[2] / "segmenter_configs" / "weakclip"
VOC_CONFIG = CONFIG_DIR / "weakclip_vit-b16_2xb8-20k_voc12pseudo-512x512.py"
COCO_CONFIG = CONFIG_DIR / "weakclip_vit-b16_4xb6-40k_coco14pseudo-512x512.py"
TINY_CONFIG = CONFIG_DIR / "weakclip_tiny_1xb8-300_pseudo-224x224.py"
STAGE = "weakclip"  # checkpoints: <WORK>/weakclip
SEED_LABELS = ("clipes", "model")


@dataclass
class TrainOptions:
    """``clipes train-weakclip``.

    Attributes:
        work: clipes work folder; seeds default to ``WORK/masks``, checkpoints to ``WORK/weakclip``.
        config: WeakCLIP config [the released VOC one].
        seeds: folder of seed PNGs (clipes masks, or masks made elsewhere) [WORK/masks].
        out: checkpoint folder [WORK/weakclip].
        clip: CLIP checkpoint (any format clipes reads).
        data_root / dataset / classes / images_dir: where the images are and what the classes are
            [from the seeds' manifest; for masks made elsewhere DATASET or CLASSES].
        split: training ids [every id with a seed PNG]; extra_split: a second list concatenated to
            it (the release trains on VOC train.txt + trainaug.txt, train ids twice per epoch).
        seed_labels: ``clipes`` (contiguous: 0, c+1, 255; COCO mapped to category ids for the
            91-way model) or ``model`` (already in the model's label space) [clipes for a folder
            with a clipes manifest, model otherwise].
        frozen_clip / adapter_lr_mult / chained_coattention: the cleaner variants of spec 12 / 7.
        iters / batch_size / lr / jobs: the config's schedule, images per GPU, AdamW lr, workers.
        options: mmengine ``key=value`` overrides, applied last.
    """

    work: Path | None = None
    config: Path | None = None
    seeds: Path | None = None
    out: Path | None = None
    clip: str | None = None
    data_root: Path | None = None
    dataset: str | None = None
    classes: Path | None = None
    images_dir: str | None = None
    split: Path | None = None
    extra_split: Path | None = None
    seed_labels: str | None = None
    frozen_clip: bool | None = None
    adapter_lr_mult: float | None = None
    chained_coattention: bool | None = None
    iters: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    jobs: int | None = None
    options: dict = field(default_factory=dict)
    launcher: str = "none"
    resume: bool = True
    verbose: bool = False
    progress: bool = True


@dataclass
class MasksOptions:
    """``clipes masks-weakclip``.

    Attributes:
        checkpoint: a clipes ``iter_N.pth`` or a reference checkpoint (mmseg 0.19 state dict).
        clip: CLIP [the one a clipes checkpoint names; required for reference checkpoints].
        config: model config for reference checkpoints [VOC for 21 classes, COCO for 91].
        work: work folder: ids and dataset from ``WORK/masks`` (the seeds) unless given.
        out: folder whose ``masks/`` receives the masks [WORK/methods/weakclip].
        data_root / dataset / images_dir / split: the images [from WORK/masks' manifest / its ids].
        crf: the inference CRF [on]; ratios / flip / img_scale: the test-time views [the config's].
        device: cpu or cuda.
        force: recompute into a folder made another way.
    """

    checkpoint: Path | None = None
    clip: str | None = None
    config: Path | None = None
    work: Path | None = None
    out: Path | None = None
    data_root: Path | None = None
    dataset: str | None = None
    images_dir: str | None = None
    split: Path | None = None
    crf: bool = True
    ratios: tuple[float, ...] | None = None
    flip: bool | None = None
    img_scale: tuple[int, int] | None = None
    device: str = "cpu"
    force: bool = False
    progress: bool = True
