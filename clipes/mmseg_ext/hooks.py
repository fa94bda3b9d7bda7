"""Checkpoints that load with ``torch.load(weights_only=True)``.

mmengine stores its training log (``HistoryBuffer`` objects, whose pickles call ``getattr``)
and numpy scalars in every checkpoint, which torch >= 2.6 refuses to load safely, and
allow-listing ``getattr`` would reopen the door to arbitrary code. :class:`PlainCheckpointHook`
writes those as plain lists and numbers instead and rebuilds them when a checkpoint is loaded, so
resuming, testing and predicting never need an unsafe load. :class:`MethodMetaHook` adds what a
method's model was trained with to each checkpoint's meta; :class:`ProgressHook` is the console.
"""

from __future__ import annotations

import json

from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmseg.registry import HOOKS

_MARK = "__clipes_history_buffer__"


def _plain(value):
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalar
        return value.item()
    if hasattr(value, "tolist") and not hasattr(value, "is_floating_point"):  # numpy array
        return value.tolist()
    return value


def plain_message_hub(state: dict) -> dict:
    """``MessageHub.state_dict()`` with HistoryBuffers as ``{mark, log, count, max_length}`` dicts."""
    scalars = {}
    for key, buffer in state.get("log_scalars", {}).items():
        if isinstance(buffer, HistoryBuffer):
            log, count = buffer.data
            buffer = {_MARK: True, "log": [float(x) for x in log], "count": [float(x) for x in count],
                      "max_length": int(buffer.max_length)}
        scalars[key] = buffer
    info = {key: _plain(value) for key, value in state.get("runtime_info", {}).items()}
    return {**state, "log_scalars": scalars, "runtime_info": info}


def restore_message_hub(state: dict) -> dict:
    """Inverse of :func:`plain_message_hub`."""
    scalars = {}
    for key, value in state.get("log_scalars", {}).items():
        if isinstance(value, dict) and value.get(_MARK):
            value = HistoryBuffer(value["log"], value["count"], value["max_length"])
        scalars[key] = value
    return {**state, "log_scalars": scalars}


@HOOKS.register_module()
class PlainCheckpointHook(Hook):
    """Keep mmengine checkpoints free of objects that a safe ``torch.load`` rejects."""

    priority = "VERY_LOW"  # after every hook that adds to the checkpoint

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if "message_hub" in checkpoint:
            checkpoint["message_hub"] = plain_message_hub(checkpoint["message_hub"])
        meta = checkpoint.get("meta", {})
        for key in list(meta):
            meta[key] = _plain(meta[key])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if "message_hub" in checkpoint:
            checkpoint["message_hub"] = restore_message_hub(checkpoint["message_hub"])


@HOOKS.register_module()
class MethodMetaHook(Hook):
    """Record what a method's model was trained with in each checkpoint, under ``meta[key]``
    (``weclip``, ``weakclip``: the CLIP's path and sha256, the classes, the options), as plain data
    that loads with ``weights_only=True``."""

    def __init__(self, key: str, info: dict):
        self.key = str(key)
        self.info = json.loads(json.dumps(info))  # plain dicts (the config hands over ConfigDicts)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint.setdefault("meta", {})[self.key] = json.loads(json.dumps(self.info))


def _is_scalar(value) -> bool:
    """A number, numpy scalar or 0-d tensor (mmseg's metrics are numpy float32)."""
    return isinstance(value, (int, float)) or getattr(value, "ndim", None) == 0


@HOOKS.register_module()
class ProgressHook(Hook):
    """What a person watching ``train-seg`` needs on the console, while mmengine's full log goes to its file.

    A progress bar over the iterations (resumed runs start where they stopped) with the loss, the
    learning rate and tqdm's ETA; one line per validation with its metrics. Only the main process
    of a multi-process run draws.

    Args:
        enabled: draw the bar (the validation lines are printed either way).
        desc: the bar's label.
        lr_group: the parameter group whose learning rate is shown (WeakCLIP: -1, the decoder's;
            its first groups are the CLIP's, at the min-lr leak).
    """

    priority = "BELOW_NORMAL"

    def __init__(self, enabled: bool = True, desc: str = "train-seg", lr_group: int = 0):
        self.enabled = enabled
        self.desc = desc
        self.lr_group = int(lr_group)
        self._bar = None
        self._main = True  # set in before_train

    def before_train(self, runner) -> None:
        from mmengine.dist import is_main_process
        from tqdm import tqdm

        self._main = is_main_process()
        self._bar = tqdm(total=runner.max_iters, initial=runner.iter, unit="it", desc=self.desc,
                         dynamic_ncols=True, disable=not (self.enabled and self._main))

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self._bar is None:
            return
        postfix = {}
        if isinstance(outputs, dict) and outputs.get("loss") is not None:
            loss = outputs["loss"]
            postfix["loss"] = f"{float(loss.detach() if hasattr(loss, 'detach') else loss):.4f}"
        rates = runner.optim_wrapper.get_lr().get("lr") if hasattr(runner.optim_wrapper, "get_lr") else None
        if rates:
            postfix["lr"] = f"{float(rates[self.lr_group]):.2e}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(1)

    def after_val_epoch(self, runner, metrics=None) -> None:
        if not self._main:
            return
        shown = ", ".join(f"{key} {float(value):.2f}" for key, value in (metrics or {}).items()
                          if _is_scalar(value))
        line = f"{self.desc}: validation at iteration {runner.iter}: {shown or 'no metrics'}"
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line)

    def after_train(self, runner) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@HOOKS.register_module()
class RelativePointerHook(Hook):
    """Rewrite mmengine's ``last_checkpoint`` pointer (an absolute path) as the checkpoint's file name,
    atomically, after each save: a work folder that is copied or moved resumes from its own
    checkpoints (:func:`clipes.mmseg_ext.runner.last_checkpoint` looks the name up in its folder)."""

    priority = "LOWEST"  # after mmengine's CheckpointHook wrote the pointer

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        from pathlib import Path

        from mmengine.dist import is_main_process

        from clipes.store.fsutil import atomic_open

        pointer = Path(runner.work_dir) / "last_checkpoint"
        if not is_main_process() or not pointer.is_file():
            return
        text = pointer.read_text(encoding="utf-8").strip()
        if text and Path(text).name != text:
            with atomic_open(pointer, "w") as handle:
                handle.write(Path(text).name)
