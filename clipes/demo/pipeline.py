"""``clipes demo``: the whole pipeline on the generated demo dataset and the bundled demo CLIP.

Data (:mod:`clipes.demo.demo_data`) -> cams -> refine -> train-seg (tiny DeepLab) -> predict -> eval on the
held-out val split -> viz, every step through the same library calls as the stage commands, so the demo
is resumable like them: run it again and finished work is kept.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from clipes.clip_es.cam_runner import CamOptions, run_cams
from clipes.clip_es.refine_runner import RefineOptions, run_refine
from clipes.data.prompts import builtin_path
from clipes.demo import demo_data
from clipes.errors import UserError
from clipes.eval_runner import EvalOptions, run_eval
from clipes.store import camstore, maskstore
from clipes.store.fsutil import write_json
from clipes.viz import run_viz

STAGE_TITLES = ((camstore.STAGE, "raw CAMs"), (camstore.REFINED_STAGE, "refined maps (CAA)"),
                (maskstore.LABELS_STAGE, "CRF labels"), (maskstore.MASKS_STAGE, "pseudo masks"),
                (maskstore.PREDICTIONS_STAGE, "trained segmenter"))


@dataclass
class DemoOptions:
    """Settings of :func:`run_demo`.

    Attributes:
        work: work folder; the dataset goes to ``<work>/data``.
        clip: demo CLIP checkpoint.
        dino: demo DINOv2 checkpoint (WeCLIP+'s second backbone; None: no WeCLIP+ row).
        seg_config: segmenter config (the tiny CPU DeepLab).
        train / val: scenes per split (pseudo masks are made for both; val is held out from the
            segmenter and scored).
        seg_iters: segmenter iterations (None: the config's).
        attention_layers: final blocks whose attention CAA averages. The spec's 8 suits
            ViT-B/16; in the demo CLIP only the last block's attention groups the patches of an
            object (the block trained with its shortcut dropped, see ``demo/README.md``), so the
            demo uses that one.
        sinkhorn_rounds / affinity_power: CAA's normalisation rounds and matrix power. The
            spec's 3 and 2 turn ViT-B/16's averaged attention into an affinity; the demo CLIP's
            last block already is one, and both steps spread it onto the backdrop, so the demo
            uses it as it is (0 rounds, power 1: symmetrised only). Chosen on the demo's train
            split, see ``demo/README.md``.
        weclip_iters: WeCLIP decoder iterations on the train split (0: no WeCLIP row); 50 keeps
            the whole demo under 8 minutes on 2 cores.
        weclip_warmup: WeCLIP's linear warm-up. The reference's 50 of 30,000 iterations would be the
            whole of a 50-iteration run (the learning rate would never reach its peak: 32.9 mIoU
            on 16 val scenes after training on 96, against 81.8 with a 5-iteration warm-up).
        weclip_width: WeCLIP decoder width (the reference's 256 is far more than 7 classes need).
        weclipplus_iters: WeCLIP+ iterations on the train split (0: no WeCLIP+ row), with WeCLIP's
            warm-up and width; the pseudo-label override starts at the reference's point scaled to
            the run (18,000 of 30,000).
        weclipplus_lr: WeCLIP+'s learning rate in the demo. The reference's 2e-4 (base 2e-5 x 10) is
            meant for 30,000 iterations; in 50 it moves the decoder too little (13.9 mIoU, the
            background baseline's level, against 60.7 with WeCLIP's 2e-3).
        weclipplus_long_side: WeCLIP+'s test long side in the demo. Its scales 1 and 1.5 at the
            reference's 512 make 768-pixel inputs of the 320-pixel scenes: 6 s per scene on 2 cores
            (attention over 2,300-2,900 tokens in three networks); 320, the scenes' own size,
            takes 1 s.
        weakclip_iters: WeakCLIP iterations (tiny config, batch 8 of 224 crops, lr 2e-3) on the train
            split's CLIP-ES pseudo masks (0: no WeakCLIP row); its masks are made for the val split.
            At 150 iterations the triangles are not learnt yet (0 IoU; 82.8 at 200).
        weakclip_ratios: WeakCLIP's test-time view ratios in the demo: the original scale, flipped
            and not (the release's six ratios cost 6x as much on 2 cores).
        excel_iters: ExCEL decoder iterations on the train split (0: no ExCEL rows), with WeCLIP's
            demo warm-up and width and the reference's learning rate (1e-3); its phase points are
            the reference's scaled to the run. Its attribute bank is clustered from
            ``prompts/demo_descriptors.json`` (clipes' own sentences for the demo classes) with the
            demo CLIP. The training-free row (``cams-excel`` on the val split) needs no training.
        excel_clusters: the bank's K_a for the 30 demo sentences (the reference's VOC 112 is for 400).
        jobs: CRF worker processes.
        progress: progress bars.
    """

    work: Path
    clip: Path
    seg_config: Path
    dino: Path | None = None
    train: int = 240
    val: int = 60
    seg_iters: int | None = None
    attention_layers: int = 1
    sinkhorn_rounds: int = 0
    affinity_power: int = 1
    weclip_iters: int = 50
    weclip_warmup: int = 5
    weclip_width: int = 64
    weclipplus_iters: int = 50
    weclipplus_lr: float = 2e-3
    weclipplus_long_side: int = 320
    weakclip_iters: int = 200
    weakclip_ratios: tuple[float, ...] = (1.0,)
    excel_iters: int = 50
    excel_clusters: int = 12
    jobs: int = 2
    progress: bool = True


def run_demo(opts: DemoOptions, echo: Callable[[str], None] = print) -> dict:
    """Run every stage on the demo data and return the eval report (``eval.json``'s content) with
    ``seconds`` per step added under ``timing``.

    Raises:
        UserError: a stage refused its input, or a stage left failed images.
    """
    from clipes.mmseg_ext.runner import SegOptions, last_checkpoint, run_predict, run_train

    work = Path(opts.work).expanduser()
    data = work / "data"
    splits = data / "ImageSets" / "Segmentation"
    timing = {}

    def timed(name, call):
        began = time.perf_counter()
        result = call()
        timing[name] = round(time.perf_counter() - began, 1)
        return result

    info = timed("data", lambda: demo_data.write_voc_dataset(data, opts.train, opts.val))
    echo(f"demo: dataset {data}: {info['splits']['train']} train + {info['splits']['val']} val scenes, "
         f"{len(info['classes'])} classes")
    for name, call in (
        ("cams", lambda: run_cams(CamOptions(
            dataset="voc12", data_root=data, split=splits / "trainval.txt", clip=str(opts.clip), work=work,
            class_file=builtin_path("demo_classes.tsv"), background_file=builtin_path("demo_background.txt"),
            progress=opts.progress), echo=echo)),
        ("refine", lambda: run_refine(RefineOptions(
            work=work, jobs=opts.jobs, attention_layers=opts.attention_layers, sinkhorn_rounds=opts.sinkhorn_rounds,
            affinity_power=opts.affinity_power, progress=opts.progress), echo=echo)),
    ):
        summary = timed(name, call)  # each stage prints its own summary line
        if summary.failed:
            raise UserError(f"demo: {name} failed on {summary.failed} images (see {summary.folder}/manifest.json)")
    seg_options = {}
    if opts.seg_iters:
        seg_options = {"train_cfg.max_iters": opts.seg_iters, "train_cfg.val_interval": opts.seg_iters,
                       "param_scheduler.0.end": opts.seg_iters,
                       "default_hooks.checkpoint.interval": opts.seg_iters}
    out = timed("train-seg", lambda: run_train(SegOptions(
        config=Path(opts.seg_config), work=work, split=splits / "train.txt", val_split=splits / "val.txt",
        options=seg_options, progress=opts.progress), echo=echo))
    checkpoint = last_checkpoint(out)
    if checkpoint is None:
        raise UserError(f"the segmenter run in {out} left no last_checkpoint")
    predictions = work / maskstore.PREDICTIONS_STAGE
    done, already, failures = timed("predict", lambda: run_predict(
        checkpoint, data / "JPEGImages", predictions, split=splits / "val.txt", echo=echo))
    echo(f"predict: {done} done, {already} already done, {len(failures)} failed -> {predictions}")
    if failures:
        raise UserError(f"demo: predict failed on {len(failures)} images")
    report = timed("eval", lambda: run_eval(EvalOptions(work=work, split=splits / "val.txt"), echo=lambda _: None))
    methods = {}
    if opts.weclip_iters:
        methods["weclip"] = timed("weclip", lambda: run_weclip(opts, data, echo))
    if opts.weclipplus_iters and opts.dino is not None:
        methods["weclipplus"] = timed("weclipplus", lambda: run_weclip_plus(opts, data, echo))
    if opts.weakclip_iters:
        methods["weakclip"] = timed("weakclip", lambda: run_weakclip(opts, data, echo))
    if opts.excel_iters:
        methods["excel"] = timed("excel", lambda: run_excel(opts, data, echo))
        methods["excel-free"] = timed("excel-free", lambda: run_excel_free(opts, data, echo))
    if methods:
        report["methods"] = methods
        scores = work / "eval.json"  # eval.json carries the other methods' rows too
        write_json(scores, {**json.loads(scores.read_text()), "methods": report["methods"]})
    report["viz"] = str(timed("viz", lambda: run_viz(work, echo=echo, progress=opts.progress)))
    report["timing"] = timing
    for line in summary_table(report):
        echo(line)
    return report


def _predict_and_score(title: str, command: str, out: Path, work: Path, data: Path, iters: int,
                       predict: Callable[[Path], object]) -> dict:
    """After a one-stage method's demo training run in ``out``: ``predict(checkpoint)`` of its last
    checkpoint on the val split into ``work``, scored there.

    Returns:
        ``{"miou": ..., "iters": ..., "checkpoint": ...}``.
    """
    from clipes.mmseg_ext.runner import last_checkpoint

    checkpoint = last_checkpoint(out)
    if checkpoint is None:
        raise UserError(f"the {title} run in {out} left no last_checkpoint")
    summary = predict(checkpoint)
    if summary.failed:
        raise UserError(f"demo: {command} failed on {summary.failed} images")
    val = data / "ImageSets" / "Segmentation" / "val.txt"
    scores = run_eval(EvalOptions(work=work, split=val, data_root=data), echo=lambda _: None)
    return {"miou": scores["stages"][maskstore.PREDICTIONS_STAGE]["miou"], "iters": iters,
            "checkpoint": str(checkpoint)}


def run_weclip(opts: DemoOptions, data: Path, echo: Callable[[str], None] = print) -> dict:
    """WeCLIP on the demo: its decoder trained on the train split (online RFM pseudo labels from
    the demo CLIP), its predictions on the held-out val split scored like the CLIP-ES rows.

    Everything goes to ``<work>/methods/weclip`` (checkpoints in ``weclip/``, ``predictions/``),
    which ``viz`` draws as a tile of its own.

    Returns:
        ``{"miou": ..., "iters": ..., "checkpoint": ...}``.
    """
    from clipes.mmseg_ext.weclip import run_train
    from clipes.weclip.options import ModelOptions, TrainOptions
    from clipes.weclip.runner import InferOptions, run_predict

    work = Path(opts.work).expanduser() / maskstore.METHODS_DIR / "weclip"
    splits = data / "ImageSets" / "Segmentation"
    model = ModelOptions(dataset="voc12", class_file=builtin_path("demo_classes.tsv"),
                         background_file=builtin_path("demo_background.txt"), width=opts.weclip_width)
    out = run_train(TrainOptions(data_root=data, split=splits / "train.txt", clip=str(opts.clip), work=work,
                                 model=model, iters=opts.weclip_iters, warmup_iters=opts.weclip_warmup, jobs=1,
                                 progress=opts.progress), echo=echo)
    return _predict_and_score("WeCLIP", "predict-weclip", out, work, data, opts.weclip_iters,
                              lambda checkpoint: run_predict(InferOptions(
                                  checkpoint=checkpoint, images=data / "JPEGImages", split=splits / "val.txt",
                                  work=work, progress=opts.progress), echo=echo))


def run_weclip_plus(opts: DemoOptions, data: Path, echo: Callable[[str], None] = print) -> dict:
    """WeCLIP+ on the demo: WeCLIP's run with the demo DINOv2 beside the demo CLIP, into
    ``<work>/methods/weclipplus`` (checkpoints in ``weclipplus/``, ``predictions/``).

    Returns:
        ``{"miou": ..., "iters": ..., "checkpoint": ..., "dino": ...}``.
    """
    from clipes.mmseg_ext.weclip_plus import run_train
    from clipes.weclip_plus.options import ModelOptions, TrainOptions
    from clipes.weclip_plus.runner import InferOptions, run_predict

    work = Path(opts.work).expanduser() / maskstore.METHODS_DIR / "weclipplus"
    splits = data / "ImageSets" / "Segmentation"
    model = ModelOptions(dataset="voc12", class_file=builtin_path("demo_classes.tsv"),
                         background_file=builtin_path("demo_background.txt"), width=opts.weclip_width)
    out = run_train(TrainOptions(data_root=data, split=splits / "train.txt", clip=str(opts.clip), dino=str(opts.dino),
                                 work=work, model=model, iters=opts.weclipplus_iters, warmup_iters=opts.weclip_warmup,
                                 lr=opts.weclipplus_lr, jobs=1, progress=opts.progress), echo=echo)
    row = _predict_and_score("WeCLIP+", "predict-weclipplus", out, work, data, opts.weclipplus_iters,
                             lambda checkpoint: run_predict(InferOptions(
                                 checkpoint=checkpoint, images=data / "JPEGImages", split=splits / "val.txt",
                                 work=work, long_side=opts.weclipplus_long_side, progress=opts.progress), echo=echo))
    return {**row, "dino": str(opts.dino)}


def run_weakclip(opts: DemoOptions, data: Path, echo: Callable[[str], None] = print) -> dict:
    """WeakCLIP on the demo: trained on the train split's CLIP-ES pseudo masks (``<work>/masks``)
    with the tiny config, its pseudo masks made for the held-out val split and scored like the
    CLIP-ES rows.

    Everything goes to ``<work>/methods/weakclip`` (checkpoints in ``weakclip/``, ``masks/``),
    which ``viz`` draws as a tile of its own.

    Returns:
        ``{"miou": ..., "iters": ..., "checkpoint": ...}``.
    """
    from clipes.mmseg_ext.runner import last_checkpoint
    from clipes.mmseg_ext.weakclip import load_model, run_train
    from clipes.weakclip.options import TINY_CONFIG, MasksOptions, TrainOptions
    from clipes.weakclip.runner import run_masks

    work = Path(opts.work).expanduser()
    method = work / maskstore.METHODS_DIR / "weakclip"
    splits = data / "ImageSets" / "Segmentation"
    out = run_train(TrainOptions(work=work, config=TINY_CONFIG, clip=str(opts.clip), split=splits / "train.txt",
                                 out=method / "weakclip", iters=opts.weakclip_iters, progress=opts.progress),
                    echo=echo)
    checkpoint = last_checkpoint(out)
    if checkpoint is None:
        raise UserError(f"the WeakCLIP run in {out} left no last_checkpoint")
    summary = run_masks(MasksOptions(checkpoint=checkpoint, work=work, out=method, split=splits / "val.txt",
                                     ratios=tuple(opts.weakclip_ratios), progress=opts.progress), load_model,
                         echo=echo)
    if summary.failed:
        raise UserError(f"demo: masks-weakclip failed on {summary.failed} images")
    scores = run_eval(EvalOptions(work=method, split=splits / "val.txt", data_root=data), echo=lambda _: None)
    return {"miou": scores["stages"][maskstore.MASKS_STAGE]["with_ignored"]["miou"], "iters": opts.weakclip_iters,
            "checkpoint": str(checkpoint)}


def _excel_model(opts: DemoOptions):
    from clipes.excel.options import ModelOptions

    return ModelOptions(dataset="voc12", class_file=builtin_path("demo_classes.tsv"),
                        background_file=builtin_path("demo_background.txt"),
                        attributes=builtin_path("demo_descriptors.json"), clusters=opts.excel_clusters,
                        width=opts.weclip_width)


def run_excel(opts: DemoOptions, data: Path, echo: Callable[[str], None] = print) -> dict:
    """ExCEL on the demo: its decoder trained on the train split (training-free CAMs refined online),
    its predictions on the held-out val split, into ``<work>/methods/excel``.

    Returns:
        ``{"miou": ..., "iters": ..., "checkpoint": ...}``.
    """
    from clipes.excel.options import TrainOptions
    from clipes.excel.runner import InferOptions, run_predict
    from clipes.mmseg_ext.excel import run_train

    work = Path(opts.work).expanduser() / maskstore.METHODS_DIR / "excel"
    splits = data / "ImageSets" / "Segmentation"
    out = run_train(TrainOptions(data_root=data, split=splits / "train.txt", clip=str(opts.clip), work=work,
                                 model=_excel_model(opts), iters=opts.excel_iters, warmup_iters=opts.weclip_warmup,
                                 jobs=1, progress=opts.progress), echo=echo)
    return _predict_and_score("ExCEL", "predict-excel", out, work, data, opts.excel_iters,
                              lambda checkpoint: run_predict(InferOptions(
                                  checkpoint=checkpoint, images=data / "JPEGImages", split=splits / "val.txt",
                                  work=work, progress=opts.progress), echo=echo))


def run_excel_free(opts: DemoOptions, data: Path, echo: Callable[[str], None] = print) -> dict:
    """ExCEL's training-free labels of the val split (``cams-excel``: one forward per image, no
    training), into ``<work>/methods/excel-free`` (``cams/``, ``masks/``).

    Returns:
        ``{"miou": ..., "title": ...}``.
    """
    from clipes.excel.runner import CamOptions, run_cams

    work = Path(opts.work).expanduser() / maskstore.METHODS_DIR / "excel-free"
    splits = data / "ImageSets" / "Segmentation"
    summary = run_cams(CamOptions(data_root=data, split=splits / "val.txt", clip=str(opts.clip), work=work,
                                  model=_excel_model(opts), progress=opts.progress), echo=echo)
    if summary.failed:
        raise UserError(f"demo: cams-excel failed on {summary.failed} images")
    scores = run_eval(EvalOptions(work=work, split=splits / "val.txt", data_root=data), echo=lambda _: None)
    return {"miou": scores["stages"][maskstore.MASKS_STAGE]["with_ignored"]["miou"],
            "title": "ExCEL training-free labels"}


def stage_miou(report: dict, stage: str) -> float | None:
    """The headline mIoU (0..1) of one stage in an eval report (masks: 255 pixels counted as misses)."""
    data = report["stages"].get(stage)
    if data is None:
        return None
    return data["with_ignored"]["miou"] if stage == maskstore.MASKS_STAGE else data["miou"]


def summary_table(report: dict) -> list[str]:
    """The demo's closing table: mIoU per stage on the held-out images, the baseline, the times."""
    def pct(value):
        return "    -" if value is None else f"{100 * value:5.1f}"

    lines = ["", f"demo: mIoU (%) on {report['images']} held-out val images "
                 f"({len(report['classes'])} classes incl. background)"]
    for stage, title in STAGE_TITLES:
        if stage in report["stages"]:
            extra = ""
            if stage == "masks":
                data = report["stages"]["masks"]
                extra = (f"   ({pct(data['without_ignored']['miou']).strip()} with 255 pixels left out; "
                         f"coverage {pct(data['with_ignored']['coverage']).strip()}%)")
            lines.append(f"  {title:<34}{pct(stage_miou(report, stage))}{extra}")
    for name, data in (report.get("methods") or {}).items():
        title = data.get("title") or f"{maskstore.METHOD_TITLES.get(name, name)} ({data.get('iters')} iterations)"
        lines.append(f"  {title:<34}{pct(data.get('miou'))}")
    baseline = report.get("baseline") or {}
    lines.append(f"  {'baseline: ' + str(baseline.get('class')) + ' everywhere':<34}{pct(baseline.get('miou'))}")
    if report.get("timing"):
        lines.append("  seconds: " + ", ".join(f"{k} {v}" for k, v in report["timing"].items()))
    lines.append(f"  details: {report['work']}/eval.json")
    if report.get("viz"):
        lines.append(f"  inspect: {report['viz']} (open in a browser), or clipes show <id> --work {report['work']}")
    return lines
