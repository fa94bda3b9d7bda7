"""Options of the ExCEL commands, with their defaults (the single source of truth; CLIs forward only
what the user set)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from clipes.data.prompts import DEFAULT_TEMPLATE
from clipes.excel import schedule
from clipes.excel.attributes import CLUSTERS, TOP_K
from clipes.excel.model import ATTN_LAYERS, BOX_THRESHOLD, SIZE
from clipes.weclip import schedule as weclip_schedule

STAGE = "excel"
CROP_RULE = {"voc12": "mask", "coco14": "first", "custom": "first"}


@dataclass
class ModelOptions:
    """What shapes ExCEL's numbers (recorded in checkpoints and manifests).

    Attributes:
        dataset: ``voc12``, ``coco14`` or ``custom``.
        class_file / background_file / template: the prompts (as WeCLIP; template ``a clean origami {}.``).
        attributes: the attribute bank: the ExCEL repository's ``*_embedding_bank.pth``, a bank
            clipes wrote (``.npz``), or a descriptor JSON ``{class: [sentences]}`` clipes clusters
            with the CLIP in use.
        clusters: K_a when clustering descriptors [VOC 112, COCO 224, custom: 112 or the sentence
            count when smaller].
        top_k: the aggregation's kept fraction [0.9; the reference masks ``int((1 - 0.9) K_a)``].
        width: decoder width E [256].
        layers: decoder blocks [3].
        attn_layers: attention maps the refinement uses [6: blocks 7..12].
        box_threshold: CAM box threshold [VOC 0.79, COCO 0.88].
        lvc_pass: the dynamic CAM's second forward, ``incremental`` (from the first forward's
            values; the same function, a fraction of the work) or ``full`` (the reference's) [incremental].
    """

    dataset: str = "voc12"
    class_file: Path | None = None
    background_file: Path | None = None
    template: str = DEFAULT_TEMPLATE
    attributes: Path | None = None
    clusters: int | None = None
    top_k: float = TOP_K
    width: int = 256
    layers: int = 3
    attn_layers: int = ATTN_LAYERS
    box_threshold: float | None = None
    lvc_pass: str = "incremental"

    def resolved(self) -> "ModelOptions":
        out = ModelOptions(**asdict(self))
        if out.box_threshold is None:
            out.box_threshold = BOX_THRESHOLD.get(out.dataset, BOX_THRESHOLD["custom"])
        if out.clusters is None:
            out.clusters = CLUSTERS.get(out.dataset, CLUSTERS["voc12"])
        return out

    def plain(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.resolved()).items()}

    def model_kwargs(self) -> dict:
        """:class:`~clipes.excel.model.ExCEL` keyword arguments."""
        r = self.resolved()
        return dict(attn_layers=r.attn_layers, box_threshold=r.box_threshold, fifth=r.dataset == "coco14",
                    lvc_pass=r.lvc_pass)


@dataclass
class TrainOptions:
    """``clipes train-excel``.

    Attributes:
        data_root / split / clip / work: dataset folder, training ids, CLIP checkpoint, work folder
            (checkpoints go to ``<work>/excel``, or ``out``).
        labels_file / images_dir: as for ``clipes cams``.
        iters: training iterations [VOC 30000, COCO 100000].
        batch_size: images per iteration per process [4].
        crop: crop size [320].
        lr: decoder learning rate [1e-3 = the reference's 10 x 1e-4].
        weight_decay: [0.01]. warmup_iters: [VOC 50, COCO 200].
        dynamic_from: first 0-based iteration of the dynamic CAM and the decoder-guided refinement
            [VOC 14000 of 30000, COCO 30000 of 100000, scaled to ``iters``].
        self_affinity_from: first 0-based iteration whose affinity labels come from the decoder's
            prediction [VOC 24000 of 30000, scaled; COCO never].
        crop_rule: ``mask`` (the reference's VOC crop choice, which reads the ground-truth masks)
            or ``first`` (the first window: no pixel label used) [VOC mask, else first].
        aff_weight: [0.1]. seed: [0, as the reference].
        jobs, checkpoint_interval, launcher, resume, verbose, progress, options: as ``train-weclip``.
    """

    data_root: Path | None = None
    split: Path | None = None
    clip: str | None = None
    work: Path | None = None
    out: Path | None = None
    model: ModelOptions = field(default_factory=ModelOptions)
    labels_file: Path | None = None
    images_dir: str | None = None
    masks_dir: Path | None = None
    iters: int | None = None
    batch_size: int = schedule.BATCH
    crop: int = SIZE
    lr: float = schedule.LR
    weight_decay: float = weclip_schedule.WEIGHT_DECAY
    warmup_iters: int | None = None
    dynamic_from: int | None = None
    self_affinity_from: int | None = None
    crop_rule: str | None = None
    aff_weight: float = 0.1
    seed: int = 0
    jobs: int = 2
    checkpoint_interval: int | None = None
    launcher: str = "none"
    resume: bool = True
    verbose: bool = False
    progress: bool = True
    options: dict = field(default_factory=dict)

    def resolved_iters(self) -> int:
        return int(self.iters or schedule.ITERS.get(self.model.dataset, 30000))

    def resolved_warmup(self) -> int:
        if self.warmup_iters is not None:
            return int(self.warmup_iters)
        return schedule.WARMUP_ITERS.get(self.model.dataset, schedule.WARMUP_ITERS["custom"])

    def resolved_dynamic(self) -> int:
        if self.dynamic_from is not None:
            return int(self.dynamic_from)
        return schedule.dynamic_from(self.model.dataset, self.resolved_iters())

    def resolved_self_affinity(self) -> int | None:
        if self.self_affinity_from is not None:
            return int(self.self_affinity_from) if self.self_affinity_from >= 0 else None
        return schedule.self_affinity_from(self.model.dataset, self.resolved_iters())

    def resolved_crop_rule(self) -> str:
        return self.crop_rule or CROP_RULE.get(self.model.dataset, "first")
