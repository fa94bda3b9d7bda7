"""Stage 3 as library calls: train, evaluate and apply an mmseg segmenter on clipes' stage folders.

:func:`train_config` turns a config from ``segmenter_configs/`` (or any mmseg config using the
clipes plug-in) plus a work folder into a ready mmengine config: the training set is every image
with a pseudo mask (``<WORK>/masks``, or ``labels`` + ``confidence`` for the soft loss), the
dataset, classes and images come from the stage-2 manifest, validation uses real ground truth
when it can be found, and an interrupted run in the same output folder resumes from its last
checkpoint. Everything is checked before the Runner starts.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from clipes.data.datasets import ground_truth_dir, read_split
from clipes.data.segdata import check_training_set, dataset_paths, stage_info
from clipes.errors import InputError, UserError
from clipes.mmseg_ext.compat import prepare
from clipes.store import manifest, maskstore
from clipes.store.fsutil import atomic_open, file_sha256, ids_in

LOSS_TYPE = "ConfidenceCrossEntropyLoss"
SEG_STAGE = "segmenter"
LAUNCHERS = ("none", "pytorch")
_REMOTE = ("open-mmlab://", "torchvision://", "http://", "https://", "mmcls://", "openmmlab://")


@dataclass
class SegOptions:
    """Options of ``clipes train-seg`` / ``test-seg``.

    Attributes:
        config: mmseg config file.
        work: clipes work folder (``masks/`` etc.); optional for ``test-seg``.
        out: mmengine work dir [WORK/segmenter].
        data_root: dataset folder [from the stage-2 manifest].
        dataset: voc12, coco14 or custom [from the manifest]; for masks made elsewhere (no clipes
            manifest), voc12 or coco14 also gives the class list.
        classes: class file (``name`` or ``name<TAB>prompt`` per line) for masks made elsewhere
            [the manifest's classes, else the dataset's built-in list].
        images_dir: image folder relative to DATA_ROOT [dataset default].
        split: training ids [every image with a pseudo mask].
        val_split: validation ids [DATA_ROOT/ImageSets/Segmentation/val.txt when it exists].
        gt_dir: ground-truth PNGs [DATA_ROOT/SegmentationClass, then SegmentationClassAug].
        loss: ``hard`` or ``soft`` [the config's].
        pretrained: backbone weights (path or mmseg/torchvision URL) [the config's].
        checkpoint: weights to evaluate (test-seg).
        options: mmengine ``key=value`` overrides, applied last.
        launcher: ``none`` or ``pytorch`` (torchrun).
        resume: resume from the last checkpoint in ``out`` when there is one.
        verbose: print mmengine's whole log (environment, config, hooks, every log line) on the
            console as well; otherwise the console shows a progress bar and one line per
            validation, and the full log goes only to the log file in ``out``.
        progress: draw the progress bar (when not verbose).
    """

    config: Path
    work: Path | None = None
    out: Path | None = None
    data_root: Path | None = None
    dataset: str | None = None
    classes: Path | None = None
    images_dir: str | None = None
    split: Path | None = None
    val_split: Path | None = None
    gt_dir: Path | None = None
    loss: str | None = None
    pretrained: str | None = None
    checkpoint: Path | None = None
    options: dict = field(default_factory=dict)
    launcher: str = "none"
    resume: bool = True
    verbose: bool = False
    progress: bool = True


def parse_options(pairs) -> dict:
    """``["a.b=1", "c=[1,2]"]`` -> ``{"a.b": 1, "c": [1, 2]}`` (mmengine's ``--cfg-options`` rules)."""
    prepare()
    from mmengine.config import DictAction

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"option {pair!r} is not key=value")
        out[key.strip()] = DictAction._parse_iterable(value.strip())
    return out


def load_config(path: Path):
    """Read an mmengine config, one clear line when it cannot be read."""
    prepare()
    from mmengine.config import Config

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"config not found: {path}")
    try:
        return Config.fromfile(str(path))
    except Exception as exc:
        raise UserError(f"cannot read config {path}: {type(exc).__name__}: {exc}") from None


def _losses(model_cfg) -> list:
    found = []
    for head in ("decode_head", "auxiliary_head"):
        heads = model_cfg.get(head)
        for one in (heads if isinstance(heads, list) else [heads] if heads else []):
            losses = one.get("loss_decode")
            found += [x for x in (losses if isinstance(losses, list) else [losses]) if x and x.get("type") == LOSS_TYPE]
    return found


def _num_classes(cfg) -> int:
    head = cfg.model.decode_head
    return int((head[0] if isinstance(head, list) else head)["num_classes"])


def _fill_num_classes(cfg, info: dict, checkpoint: Path | dict | None = None) -> None:
    """Heads with ``num_classes=None`` get the class count of the data: background + the stage-2
    manifest's classes, or the classes recorded in ``checkpoint`` (a path, or its loaded content)."""
    heads = []
    for key in ("decode_head", "auxiliary_head"):
        value = cfg.model.get(key)
        heads += value if isinstance(value, list) else [value] if value else []
    if all(head.get("num_classes") is not None for head in heads):
        return
    count = len(info["classes"]) + 1 if info.get("classes") else None
    if count is None and checkpoint is not None:
        data = checkpoint if isinstance(checkpoint, dict) else _safe_load(checkpoint)
        meta = data.get("meta", {})
        count = len(meta.get("dataset_meta", {}).get("classes", ())) or None
    if count is None:
        raise UserError("the config leaves num_classes to the data, but no clipes manifest lists the classes "
                        "(masks made elsewhere?): give DATASET=voc12|coco14 or CLASSES=<class file>, or "
                        "OPTIONS=\"model.decode_head.num_classes=N\"")
    for head in heads:
        if head.get("num_classes") is None:
            head["num_classes"] = count


def _stage_info(work: Path | None, opts: SegOptions) -> dict:
    """The masks manifest of ``work`` (see :func:`clipes.data.segdata.stage_info`)."""
    folder = Path(work).expanduser() / maskstore.MASKS_STAGE if work is not None else None
    return stage_info(folder, opts.classes, opts.dataset)


def _dataset_paths(opts: SegOptions, info: dict) -> tuple[str, Path, Path]:
    return dataset_paths(info, opts.dataset, opts.data_root, opts.images_dir)


def _metainfo(info: dict, num_classes: int) -> dict | None:
    classes = info.get("classes")
    if not classes:
        return None
    names = ("background", *classes)
    if len(names) != num_classes:
        raise UserError(f"the config's decode head has num_classes={num_classes} but the pseudo masks have "
                        f"{len(names)} classes (background + {len(classes)}); use a config for this dataset or "
                        f"OPTIONS=\"model.decode_head.num_classes={len(names)} ...\"")
    palette = maskstore.voc_palette()
    return dict(classes=names, palette=[palette[3 * i:3 * i + 3] for i in range(len(names))])


def _write_split(path: Path, ids: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as handle:
        handle.write("".join(f"{image_id}\n" for image_id in ids))
    return path


def _ground_truth(opts: SegOptions, dataset: str, data_root: Path) -> tuple[Path | None, Path | None]:
    val_split = Path(opts.val_split).expanduser() if opts.val_split else None
    if val_split is None and dataset == "voc12":
        default = data_root / "ImageSets" / "Segmentation" / "val.txt"
        val_split = default if default.is_file() else None
    gt_dir = Path(opts.gt_dir).expanduser() if opts.gt_dir else ground_truth_dir(data_root, dataset)
    if val_split is not None and gt_dir is None:
        raise UserError(f"validation split {val_split} given but no ground truth: give GT_DIR")
    return val_split, gt_dir


def _iteration(path: Path) -> int:
    stem = path.stem
    return int(stem.split("_")[-1]) if stem.split("_")[-1].isdigit() else -1


CHECKPOINT_BACKEND = "clipes_atomic"
_POINTER = "last_checkpoint"


def _register_atomic_backend() -> None:
    """mmengine's local file backend, with every checkpoint and pointer written atomically."""
    from mmengine.fileio import LocalBackend, register_backend

    from clipes.store.fsutil import atomic_open

    class AtomicLocalBackend(LocalBackend):
        """Writes under a temporary name and renames (a full disk or a kill leaves no half file)."""

        def put(self, obj: bytes, filepath) -> None:
            with atomic_open(Path(filepath), "wb") as handle:
                handle.write(obj)

        def put_text(self, obj: str, filepath, encoding: str = "utf-8") -> None:
            with atomic_open(Path(filepath), "w") as handle:
                handle.write(obj)

    register_backend(CHECKPOINT_BACKEND, AtomicLocalBackend, force=True)


_register_atomic_backend()


def _complete(path: Path) -> bool:
    """A torch checkpoint (a zip archive) whose central directory is intact: not cut short."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def resume_point(out: Path) -> tuple[Path | None, int]:
    """The newest complete checkpoint a run in ``out`` can resume from, and how many unfinished
    ones were removed on the way (``(None, n)``: nothing to resume).

    Checkpoints are written atomically, so an ``iter_N.pth`` there is complete and the newest one
    wins, also over mmengine's ``last_checkpoint`` pointer (a run killed between a save and the
    pointer's update). The pointer's name is looked up in ``out`` itself, so a copied or moved work
    folder resumes from its own checkpoints. A newer file that is not a complete checkpoint (a save
    cut short before saves were atomic) is removed.

    Raises:
        UserError: the pointer names a checkpoint that is not in ``out``.
    """
    out = Path(out)
    pointer = out / _POINTER
    named = Path(pointer.read_text(encoding="utf-8", errors="replace").strip()).name if pointer.is_file() else ""
    if named and not (out / named).is_file():
        raise UserError(f"{pointer} names {named}, which is not in {out}: put it back, delete {pointer} to "
                        f"resume from the newest checkpoint there, or give --no-resume to start over")
    removed = 0
    for path in sorted((p for p in out.glob("iter_*.pth") if _iteration(p) >= 0), key=_iteration, reverse=True):
        if named and _iteration(path) <= _iteration(out / named):
            break
        if _complete(path):
            return path, removed
        path.unlink()
        removed += 1
    return (out / named if named else None), removed


def last_checkpoint(out: Path) -> Path | None:
    """The checkpoint a run in ``out`` resumes from (see :func:`resume_point`)."""
    return resume_point(out)[0]


def launch_and_resume(cfg, out: Path, launcher: str, resume: bool, name: str, echo: Callable[[str], None],
                      find_unused: bool = False) -> None:
    """What every training command sets last.

    * the launcher (torchrun: NCCL on GPUs; on CPU-only machines gloo and DDP without device ids);
    * checkpoints written atomically (a full disk or a kill leaves no half-written file) with a
      ``last_checkpoint`` pointer that names the file relative to its folder;
    * resumable randomness (:func:`clipes.mmseg_ext.resume.make_resumable`): a run killed and
      resumed gives the uninterrupted run's checkpoints bit for bit;
    * with ``resume``, the run in ``out`` to continue from (:func:`resume_point`).
    """
    import torch

    from clipes.mmseg_ext.resume import make_resumable
    from clipes.store.fsutil import remove_stale_temporaries

    cfg.launcher = launcher
    if launcher != "none":
        cfg.env_cfg.setdefault("dist_cfg", {})["backend"] = "nccl" if torch.cuda.is_available() else "gloo"
        if not torch.cuda.is_available():
            cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False,
                                         find_unused_parameters=find_unused)
    checkpoint = cfg.setdefault("default_hooks", {}).get("checkpoint")
    if checkpoint is not None:
        checkpoint["backend_args"] = dict(backend=CHECKPOINT_BACKEND)
    hooks = list(cfg.get("custom_hooks") or [])
    if not any(hook.get("type") == "RelativePointerHook" for hook in hooks):
        cfg.custom_hooks = hooks + [dict(type="RelativePointerHook")]
    make_resumable(cfg)
    remove_stale_temporaries(out, older_than_s=0)
    last, removed = resume_point(out) if resume else (None, 0)
    if last is not None:
        cfg.resume, cfg.load_from = True, str(last)
        echo(f"{name}: resuming from {last}" + (f" (removed {removed} unfinished checkpoint(s))" if removed else ""))


TRAIN_HINT = "train into another OUT, or delete {folder} to train it from scratch"


def _main_rank() -> bool:
    """The process that holds and records a training folder (rank 0 under torchrun)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def begin_training(out: Path, stage: str, header: dict, identity: str, failures: dict,
                   echo: Callable[[str], None]) -> None:
    """A training folder's manifest, before anything else is written there.

    The main process holds the folder for the run (a second run into it is refused, naming this
    one); every process checks that the folder was made with the same settings (the refusal names
    what works: training commands have no ``--force``); the images left out up front are recorded
    at once.
    """
    main = _main_rank()
    manifest.begin_run(out, stage, header, identity, hold=main, hint=TRAIN_HINT.format(folder=out), echo=echo)
    if main:
        manifest.record_failures(out, failures)


def train_and_record(cfg, name: str, verbose: bool, echo: Callable[[str], None]) -> Path:
    """Run a training config through mmengine's Runner, then record the run in its folder's
    manifest (with the samples that failed when drawn) and release the folder."""
    from clipes.mmseg_ext.resume import read_failures

    out = Path(cfg.work_dir)
    error, runner_iter = None, None
    try:
        with _runner(cfg, verbose) as runner:
            if not verbose:
                echo(f"{name}: full log in {_log_file(runner)}")
            runner.train()
            runner_iter = runner.iter
    except BaseException as exc:
        error = exc
        raise
    finally:
        if _main_rank():
            run = {"finished": manifest.now(), "completed": error is None, "iterations": runner_iter,
                   "checkpoint": (last_checkpoint(out) or Path("")).name if error is None else None}
            try:
                manifest.end_run(out, run, set(), read_failures(out), {}, len(list(out.glob("iter_*.pth"))))
            except Exception:
                if error is None:
                    raise
    return out


def _set_eval_dataset(cfg, key: str, split: Path, image_dir: Path, gt_dir: Path, metainfo: dict | None) -> None:
    loader = cfg.get(key)
    if not loader:
        raise UserError(f"the config has no {key} to evaluate with")
    dataset = loader["dataset"]
    dataset.update(split=str(split), image_dir=str(image_dir), seg_dir=str(gt_dir), confidence_dir=None)
    if metainfo:
        dataset["metainfo"] = metainfo


def train_config(opts: SegOptions, echo: Callable[[str], None] = print):
    """The mmengine config for training, after every check; nothing is written but the split file.

    Raises:
        UserError: unreadable config, missing or bad stage folders, class-count mismatch, bad split.
    """
    cfg = load_config(opts.config)
    cfg.merge_from_dict(opts.options)  # early for the checks below, again at the end so it wins
    if opts.work is None:
        raise UserError("give WORK: the folder holding masks/ (and labels/, confidence/ for the soft loss)")
    work = Path(opts.work).expanduser()
    if not (work / maskstore.MASKS_STAGE).is_dir():
        raise UserError(f"no pseudo masks: {work / maskstore.MASKS_STAGE} not found (run `make refine` first)")
    if opts.launcher not in LAUNCHERS:
        raise UserError(f"unknown launcher {opts.launcher!r}; expected one of {LAUNCHERS}")
    losses = _losses(cfg.model)
    if not losses:
        raise UserError(f"{opts.config}: no {LOSS_TYPE} in the model; clipes configs train with it")
    modes = {loss.get("mode", "hard") for loss in losses}
    mode = opts.loss or (modes.pop() if len(modes) == 1 else None)
    if mode not in ("hard", "soft"):
        raise UserError(f"loss mode must be hard or soft, not {mode!r}")
    for loss in losses:
        loss["mode"] = mode
    info = _stage_info(work, opts)
    dataset, data_root, image_dir = _dataset_paths(opts, info)
    _fill_num_classes(cfg, info)
    num_classes = _num_classes(cfg)
    metainfo = _metainfo(info, num_classes)
    seg_dir = work / (maskstore.MASKS_STAGE if mode == "hard" else maskstore.LABELS_STAGE)
    confidence_dir = work / maskstore.CONFIDENCE_STAGE if mode == "soft" else None
    out = Path(opts.out or work / "segmenter").expanduser()
    split = Path(opts.split).expanduser() if opts.split else None
    if split is not None:
        ids = [image_id for image_id, _ in read_split(split)]
    else:
        ids = sorted(ids_in(seg_dir, ".png")) if seg_dir.is_dir() else []
    checked = check_training_set(ids, image_dir, seg_dir, num_classes, confidence_dir, what="training set", echo=echo)
    failures = dict(checked.failures)
    header = {"command": manifest.command_line(), "input": {"work": str(work), "config": str(opts.config),
                                                           "split": str(split) if split else None},
              "training": {"loss": mode, "images": len(checked.ids), "options": opts.options}}
    identity = manifest.identity_of({"config": file_sha256(Path(opts.config).expanduser()), "loss": mode,
                                     "options": opts.options, "ids": manifest.identity_of({"ids": checked.ids}),
                                     "masks": info.get("identity"), "pretrained": opts.pretrained})
    begin_training(out, SEG_STAGE, header, identity, failures, echo)
    if split is None or checked.failures:
        split = _write_split(out / "train_split.txt", checked.ids)
    train = cfg.train_dataloader["dataset"]
    train.update(split=str(split), image_dir=str(image_dir), seg_dir=str(seg_dir),
                 confidence_dir=str(confidence_dir) if confidence_dir else None)
    if metainfo:
        train["metainfo"] = metainfo
    val_split, gt_dir = _ground_truth(opts, dataset, data_root)
    if val_split is not None:
        val_ids = [image_id for image_id, _ in read_split(val_split)]
        val_checked = check_training_set(val_ids, image_dir, gt_dir, num_classes, what="validation set", echo=echo)
        if val_checked.failures:
            failures.update(val_checked.failures)
            if _main_rank():
                manifest.record_failures(out, val_checked.failures)
            val_split = _write_split(out / "val_split.txt", val_checked.ids)
        _set_eval_dataset(cfg, "val_dataloader", val_split, image_dir, gt_dir, metainfo)
        _set_eval_dataset(cfg, "test_dataloader", val_split, image_dir, gt_dir, metainfo)
    else:
        cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
        echo("train-seg: no validation split found (give VAL_SPLIT and GT_DIR); training without validation")
    if opts.pretrained:
        if not opts.pretrained.startswith(_REMOTE) and not Path(opts.pretrained).expanduser().is_file():
            raise UserError(f"pretrained weights not found: {opts.pretrained}")
        cfg.model.pretrained = opts.pretrained if opts.pretrained.startswith(_REMOTE) else str(
            Path(opts.pretrained).expanduser())
    cfg.work_dir = str(out)
    hooks = list(cfg.get("custom_hooks") or [])
    if not any(hook.get("type") == "PlainCheckpointHook" for hook in hooks):
        hooks = hooks + [dict(type="PlainCheckpointHook")]
    if not opts.verbose and not any(hook.get("type") == "ProgressHook" for hook in hooks):
        hooks = hooks + [dict(type="ProgressHook", enabled=opts.progress)]
    cfg.custom_hooks = hooks
    launch_and_resume(cfg, out, opts.launcher, opts.resume, "train-seg", echo,
                      find_unused=bool(cfg.get("find_unused_parameters", False)))
    cfg.merge_from_dict(opts.options)
    skipped = f" ({len(failures)} left out)" if failures else ""
    echo(f"train-seg: {len(checked.ids)} images{skipped}, {mode} loss, {num_classes} classes, "
         f"validation: {val_split or 'none'}; output {out}")
    return cfg


def _quiet_runner_class():
    """mmengine's Runner whose console shows errors only: the environment report, config dump, hook
    table and log lines (and Python warnings raised while it runs) go to its log file alone."""
    import logging

    from mmengine.runner import Runner

    class QuietRunner(Runner):
        def build_logger(self, *args, **kwargs):
            logger = super().build_logger(*args, **kwargs)
            for handler in logger.handlers:
                if type(handler) is logging.StreamHandler:  # the console; FileHandler is a subclass
                    handler.setLevel(logging.ERROR)

            def to_log(message, category, filename, lineno, file=None, line=None):
                logger.warning(warnings.formatwarning(message, category, filename, lineno, line).rstrip())

            warnings.showwarning = to_log
            return logger

        def load_checkpoint(self, *args, **kwargs):
            # mmengine print()s "Loads checkpoint by local backend ..." when loading or resuming:
            # that line goes to the log file too, not to the console
            import io

            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                checkpoint = super().load_checkpoint(*args, **kwargs)
            for line in printed.getvalue().splitlines():
                self.logger.info(line)
            return checkpoint

    return QuietRunner


@contextlib.contextmanager
def _runner(cfg, verbose: bool = True):
    """The Runner for ``cfg`` (quiet on the console unless ``verbose``); warnings are shown as before afterwards."""
    import torch
    from mmengine.runner import Runner

    if cfg.get("launcher", "none") != "none" and not torch.cuda.is_available():
        # mmengine's pytorch launcher calls torch.cuda.set_device; on CPU-only machines the gloo
        # group is started here from torchrun's environment, and mmengine then uses it as is.
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="gloo")
    shown = warnings.showwarning
    try:
        yield (Runner if verbose else _quiet_runner_class()).from_cfg(cfg)
    finally:
        warnings.showwarning = shown


def _log_file(runner) -> str:
    import logging

    files = [h.baseFilename for h in runner.logger.handlers if isinstance(h, logging.FileHandler)]
    return files[0] if files else str(runner.log_dir)


def run_train(opts: SegOptions, echo: Callable[[str], None] = print) -> Path:
    """Train; returns the output folder (checkpoints, logs, the config used)."""
    return train_and_record(train_config(opts, echo), "train-seg", opts.verbose, echo)


def test_config(opts: SegOptions, echo: Callable[[str], None] = print):
    """The mmengine config for evaluating ``opts.checkpoint`` on validation ground truth."""
    cfg = load_config(opts.config)
    cfg.merge_from_dict(opts.options)
    if opts.checkpoint is None or not Path(opts.checkpoint).expanduser().is_file():
        raise UserError(f"checkpoint not found: {opts.checkpoint}")
    info = _stage_info(opts.work, opts)
    dataset, data_root, image_dir = _dataset_paths(opts, info)
    val_split, gt_dir = _ground_truth(opts, dataset, data_root)
    if val_split is None:
        raise UserError("give VAL_SPLIT (and GT_DIR): nothing to evaluate on")
    _fill_num_classes(cfg, info, Path(opts.checkpoint).expanduser())
    num_classes = _num_classes(cfg)
    metainfo = _metainfo(info, num_classes)
    ids = [image_id for image_id, _ in read_split(val_split)]
    cfg.work_dir = str(Path(opts.out or Path(opts.checkpoint).expanduser().parent / "test").expanduser())
    checked = check_training_set(ids, image_dir, gt_dir, num_classes, what="test set", echo=echo)
    if checked.failures:
        val_split = _write_split(Path(cfg.work_dir) / "test_split.txt", checked.ids)
    _set_eval_dataset(cfg, "test_dataloader", val_split, image_dir, gt_dir, metainfo)
    cfg.load_from = str(Path(opts.checkpoint).expanduser())
    cfg.launcher, cfg.resume = opts.launcher, False
    cfg.merge_from_dict(opts.options)
    echo(f"test-seg: {len(checked.ids)} images from {val_split}, ground truth {gt_dir}")
    return cfg


def run_test(opts: SegOptions, echo: Callable[[str], None] = print) -> dict:
    """Evaluate a checkpoint; returns mmseg's metrics (``mIoU``, ``aAcc``, ``mAcc`` in percent)."""
    cfg = test_config(opts, echo)
    with _runner(cfg, opts.verbose) as runner:
        if not opts.verbose:
            echo(f"test-seg: full log in {_log_file(runner)}")
        metrics = runner.test()
    return {key: float(value) for key, value in metrics.items()}


def _safe_load(checkpoint: Path):
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary objects."""
    from clipes.store.checkpoints import safe_load

    return safe_load(checkpoint)


def load_weights(model, checkpoint: Path, data: dict | None = None) -> None:
    """Load a state dict (plain, or mmengine's ``{"state_dict": ...}``) without unpickling code.

    ``data``: the checkpoint's content when already loaded (it is read from ``checkpoint`` otherwise).
    """
    data = _safe_load(checkpoint) if data is None else data
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"{checkpoint} holds no state dict")
    if isinstance(data, dict) and isinstance(data.get("meta", {}).get("dataset_meta"), dict):
        model.dataset_meta = data["meta"]["dataset_meta"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.startswith("auxiliary_head.")]
    if missing or [key for key in unexpected if not key.startswith("auxiliary_head.")]:
        raise UserError(f"{checkpoint} does not fit the config's model: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}")


def config_of_checkpoint(checkpoint: Path, data: dict | None = None):
    """The config an mmengine checkpoint was trained with (saved in its ``meta``); ``data`` as in
    :func:`load_weights`."""
    from mmengine.config import Config

    data = _safe_load(checkpoint) if data is None else data
    text = data.get("meta", {}).get("cfg") if isinstance(data, dict) else None
    if not text:
        raise UserError(f"{checkpoint} does not record its config; give CONFIG")
    return Config.fromstring(text, ".py")


def run_predict(checkpoint: Path, images: Path, out: Path, config: Path | None = None, device: str = "cpu",
                echo: Callable[[str], None] = print, split: Path | None = None) -> tuple[int, int, dict]:
    """Palette-PNG predictions ``<out>/<id>.png`` for every image in a folder (resumable).

    Args:
        checkpoint: trained weights (read once, safely).
        images: image folder.
        out: prediction folder (gets a manifest, stage ``predictions``).
        config: mmseg config (default: the one recorded in the checkpoint).
        device: ``cpu`` or ``cuda``.
        echo: where progress lines go.
        split: only these ids (a missing image is a failure); default every image in the folder.

    Returns:
        ``(done, already_done, failures {id: reason})``.
    """
    import torch
    from mmseg.apis import inference_model, init_model

    from clipes.data.datasets import IMAGE_EXTENSIONS, find_image

    checkpoint, images, out = (Path(p).expanduser() for p in (checkpoint, images, out))
    if not checkpoint.is_file():
        raise UserError(f"checkpoint not found: {checkpoint}")
    if not images.is_dir():
        raise UserError(f"image folder not found: {images}")
    data = _safe_load(checkpoint)
    if not isinstance(data, dict):
        raise UserError(f"{checkpoint} holds no state dict")
    cfg = load_config(config) if config else config_of_checkpoint(checkpoint, data)
    _fill_num_classes(cfg, {}, data)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("DEVICE=cuda but no GPU is visible")
    with warnings.catch_warnings():  # mmseg's own builder calls its deprecated build_loss
        warnings.filterwarnings("ignore", message="``build_loss`` would be deprecated")
        model = init_model(cfg, checkpoint=None, device=device)
    load_weights(model, checkpoint, data)
    del data
    model.eval()
    failures = {}
    if split is not None:
        paths = []
        for image_id, _ in read_split(Path(split).expanduser()):
            try:
                paths.append(find_image(images, image_id))
            except InputError as exc:
                failures[image_id] = str(exc)
                echo(f"failed {image_id}: {exc}")
    else:
        paths = sorted(p for p in images.iterdir() if p.suffix in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not paths and not failures:
        raise UserError(f"no images in {images}")
    meta = getattr(model, "dataset_meta", None) or {}
    header = {"command": manifest.command_line(), "input": {"checkpoint": str(checkpoint), "images": str(images)},
              "classes": list(meta.get("classes", [])),
              "format": maskstore.MASKS_FORMAT}
    identity = manifest.identity_of({"checkpoint": file_sha256(checkpoint)})
    manifest.begin_run(out, maskstore.PREDICTIONS_STAGE, header, identity)
    done = 0
    existing = maskstore.done_ids(out)
    for path in paths:
        if path.stem in existing:
            continue
        try:
            with torch.no_grad():
                result = inference_model(model, str(path))
            label = result.pred_sem_seg.data[0].cpu().numpy().astype("uint8")  # [H, W]
            maskstore.write_mask(maskstore.png_path(out, path.stem), label)
            done += 1
        except Exception as exc:
            failures[path.stem] = f"{path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            echo(f"failed {path.stem}: {failures[path.stem]}")
    already = len(paths) - done - len([p for p in paths if p.stem in failures])
    manifest.end_run(out, {"finished": manifest.now(), "done": done, "already_done": already,
                           "failed": len(failures)}, {p.stem for p in paths} - set(failures), failures, {},
                     len(maskstore.done_ids(out)))
    return done, already, failures

