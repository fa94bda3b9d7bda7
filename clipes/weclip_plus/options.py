"""Options of the WeCLIP+ commands, with their defaults (the single source of truth; CLIs forward only
what the user set)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from clipes.data.prompts import DEFAULT_TEMPLATE
from clipes.weclip import schedule as weclip_schedule
from clipes.weclip_plus import schedule

# per dataset (spec 5, 6, 13): the block the GradCAM runs on (2 = X_10, 1 = X_11, counted from the end of
# blocks 1..11), the RFM+ candidates, whether the box mask is kept, and its threshold
CAM_BLOCK = {"voc12": 2, "coco14": 1, "custom": 2}
LATE_BLOCKS = {"voc12": 6, "coco14": 8, "custom": 6}
BOXES = {"voc12": False, "coco14": True, "custom": False}
BOX_THRESHOLD = {"voc12": 0.4, "coco14": 0.7, "custom": 0.4}
STAGE = "weclipplus"


@dataclass
class ModelOptions:
    """What shapes WeCLIP+'s numbers (recorded in checkpoints and manifests).

    Attributes:
        dataset: ``voc12``, ``coco14`` or ``custom``.
        class_file / background_file / template: the prompts (as WeCLIP).
        width: decoder width E [256].
        layers: decoder blocks [3; the reference uses 5 with a ViT-L/14 DINO].
        grad_method, fp16_out_proj: as WeCLIP.
        cam_block: GradCAM input [VOC 2 = X_10, COCO 1 = X_11].
        late_blocks: RFM+ candidate blocks [VOC 6, COCO 8].
        boxes: RFM+ keeps the CAM box mask [VOC no, COCO yes].
        box_threshold: [VOC 0.4, COCO 0.7].
    """

    dataset: str = "voc12"
    class_file: Path | None = None
    background_file: Path | None = None
    template: str = DEFAULT_TEMPLATE
    width: int = 256
    layers: int = 3
    grad_method: str = "analytic"
    fp16_out_proj: bool = True
    cam_block: int | None = None
    late_blocks: int | None = None
    boxes: bool | None = None
    box_threshold: float | None = None

    def resolved(self) -> "ModelOptions":
        out = ModelOptions(**asdict(self))
        for name, table in (("cam_block", CAM_BLOCK), ("late_blocks", LATE_BLOCKS), ("boxes", BOXES),
                            ("box_threshold", BOX_THRESHOLD)):
            if getattr(out, name) is None:
                setattr(out, name, table.get(out.dataset, table["custom"]))
        return out

    def plain(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.resolved()).items()}

    def model_kwargs(self) -> dict:
        """:class:`~clipes.weclip_plus.model.WeCLIPPlus` keyword arguments."""
        r = self.resolved()
        return dict(cam_block=r.cam_block, late_blocks=r.late_blocks, boxes=r.boxes, box_threshold=r.box_threshold,
                    grad_method=r.grad_method, fp16_out_proj=r.fp16_out_proj)


@dataclass
class TrainOptions:
    """``clipes train-weclipplus``.

    Attributes:
        data_root / split / clip / dino / work: dataset folder, training ids, CLIP checkpoint, DINOv2
            weights (hub ``.pth``, ``.safetensors`` or a Hugging Face folder), work folder
            (checkpoints go to ``<work>/weclipplus``, or ``out``).
        labels_file / images_dir: as for ``clipes cams``.
        iters: training iterations [VOC 30000, COCO 80000].
        batch_size: images per iteration per process [VOC 4, COCO 8].
        crop: crop size [320].
        lr: learning rate of the decoder and both heads [2e-4 = the reference's 10 x 2e-5].
        weight_decay, warmup_iters: [0.01, 50].
        override_after: confident predictions replace the pseudo label from the 0-based iteration
            after this one [VOC 18000 of 30000, COCO 40000 of 80000, scaled to ``iters``].
        aff_weight, cross_weight, dice_weight: loss weights [0.1, 0.1, 1].
        seed: [1, as the reference].
        jobs, checkpoint_interval, launcher, resume, verbose, progress, options: as ``train-weclip``.
    """

    data_root: Path | None = None
    split: Path | None = None
    clip: str | None = None
    dino: str | None = None
    work: Path | None = None
    out: Path | None = None
    model: ModelOptions = field(default_factory=ModelOptions)
    labels_file: Path | None = None
    images_dir: str | None = None
    iters: int | None = None
    batch_size: int | None = None
    crop: int = 320
    lr: float = schedule.LR
    weight_decay: float = weclip_schedule.WEIGHT_DECAY
    warmup_iters: int = weclip_schedule.WARMUP_ITERS
    override_after: int | None = None
    aff_weight: float = 0.1
    cross_weight: float = 0.1
    dice_weight: float = 1.0
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

    def resolved_batch(self) -> int:
        return int(self.batch_size or schedule.BATCH.get(self.model.dataset, 4))

    def resolved_override(self) -> int:
        if self.override_after is not None:
            return int(self.override_after)
        return schedule.override_after(self.model.dataset, self.resolved_iters())
