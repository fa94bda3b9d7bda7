"""Compatibility shims, each acting only when the problem it works around actually occurs.

The only one today: PyPI's torchvision 0.28.0 is a CUDA build. On a CPU-only torch 2.13.0 its
import fails with ``RuntimeError: operator torchvision::nms does not exist`` because the compiled
ops library cannot load. Declaring the schemas of the two ops its Python code registers fakes for
(``nms`` and ``qnms``) lets the import, transforms and models work; ``torchvision.ops.nms`` stays
unusable, which clipes never needs. With a matching torch (a GPU machine) nothing is done.
"""

import sys

_LIBRARY = None  # keeps the torch.library registration alive for the process lifetime


def _purge_torchvision_modules() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def ensure_torchvision():
    """Import torchvision, declaring missing op schemas only when the CPU/CUDA mismatch bites.

    Returns:
        The imported ``torchvision`` module.
    """
    global _LIBRARY
    try:
        import torchvision

        return torchvision
    except RuntimeError as exc:
        if "torchvision::nms does not exist" not in str(exc):
            raise
    import torch

    _purge_torchvision_modules()
    if _LIBRARY is None:
        _LIBRARY = torch.library.Library("torchvision", "DEF")
        _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARY.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision

    return torchvision


def import_clip():
    """Import OpenAI's ``clip`` package (which imports torchvision) after the shim above."""
    import warnings

    ensure_torchvision()
    with warnings.catch_warnings():  # clip imports pkg_resources, which setuptools deprecates loudly
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import clip

    return clip
