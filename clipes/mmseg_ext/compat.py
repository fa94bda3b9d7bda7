"""Compatibility of the mmseg stack with what installs here, each shim acting only when needed.

* ``mmcv-lite`` has no compiled ops, yet mmseg imports ``mmcv.ops.point_sample`` (and
  ``sigmoid_focal_loss``) at module level, so ``import mmseg.models`` fails. When, and only when,
  ``import mmcv.ops`` fails for want of ``mmcv._ext``, a small pure-PyTorch ``mmcv.ops`` stands in:
  ``point_sample`` (a ``grid_sample`` call), and every other op raises ``ModuleNotFoundError``
  when imported, which is what mmseg's optional imports expect. DeepLab needs no compiled op.
* torchvision on a CPU-only torch: :func:`clipes.compat.ensure_torchvision` (mmengine's Runner
  imports torchvision while collecting environment information).
* torch >= 2.6 loads checkpoints with ``weights_only=True``; clipes keeps it that way (see
  :mod:`clipes.mmseg_ext.hooks` for how its own checkpoints stay loadable).
"""

from __future__ import annotations

import sys
import types
import warnings

import torch
import torch.nn.functional as F

from clipes.compat import ensure_torchvision

_STANDIN_NAME = "clipes pure-PyTorch mmcv.ops stand-in"


def _point_sample(input: torch.Tensor, points: torch.Tensor, align_corners: bool = False,
                  **kwargs) -> torch.Tensor:
    """Features at normalised points: ``input [N, C, H, W]``, ``points [N, P, 2]`` in [0, 1].

    Returns:
        ``[N, C, P]`` (or ``[N, C, Hg, Wg]`` for ``points [N, Hg, Wg, 2]``).
    """
    flat = points.dim() == 3
    grid = (points.unsqueeze(2) if flat else points) * 2.0 - 1.0  # [0, 1] -> grid_sample's [-1, 1]
    out = F.grid_sample(input, grid, align_corners=align_corners, **kwargs)
    return out.squeeze(3) if flat else out


def _needs_compiled(name: str):
    def missing(*args, **kwargs):
        raise RuntimeError(f"mmcv.ops.{name} needs mmcv's compiled ops, which mmcv-lite lacks; install the "
                           "full mmcv build to use it")

    missing.__name__ = name
    return missing


def _standin_module() -> types.ModuleType:
    module = types.ModuleType("mmcv.ops", _STANDIN_NAME)
    module.point_sample = _point_sample
    # mmseg's FocalLoss calls this only for CUDA tensors (its CPU path is pure PyTorch).
    module.sigmoid_focal_loss = _needs_compiled("sigmoid_focal_loss")

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ModuleNotFoundError(f"mmcv.ops.{name} needs mmcv's compiled ops (mmcv-lite is installed)")

    module.__getattr__ = __getattr__
    return module


def install_mmcv_ops_standin() -> bool:
    """Make ``import mmcv.ops`` work on mmcv-lite. Returns whether the stand-in was installed."""
    current = sys.modules.get("mmcv.ops")
    if current is not None:
        return getattr(current, "__doc__", None) == _STANDIN_NAME
    try:
        import mmcv.ops  # noqa: F401
        return False
    except ModuleNotFoundError as exc:
        if "mmcv._ext" not in str(exc):
            raise
    import mmcv

    for name in [m for m in sys.modules if m.startswith("mmcv.ops.")]:
        del sys.modules[name]
    module = _standin_module()
    sys.modules["mmcv.ops"] = module
    mmcv.ops = module
    return True


def prepare() -> None:
    """Everything the mmseg stack needs before its models or Runner are imported."""
    # mmcv-lite's expected absence of compiled ops, said once per import of mmcv.cnn: not news.
    warnings.filterwarnings("ignore", message="Fail to import ``MultiScaleDeformableAttention``")
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    ensure_torchvision()
    install_mmcv_ops_standin()

