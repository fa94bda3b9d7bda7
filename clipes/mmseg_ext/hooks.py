"""Checkpoints that load with ``torch.load(weights_only=True)``.

mmengine stores its training log (``HistoryBuffer`` objects, whose pickles call ``getattr``)
and numpy scalars in every checkpoint, which torch >= 2.6 refuses to load safely, and
allow-listing ``getattr`` would reopen the door to arbitrary code. :class:`PlainCheckpointHook`
writes those as plain lists and numbers instead and rebuilds them when a checkpoint is loaded, so
resuming, testing and predicting never need an unsafe load.
"""

from __future__ import annotations

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
