"""Reading checkpoints without trusting them: the one place every method's loader goes through.

``torch.load(weights_only=True)`` accepts tensors and plain containers only; a file that would need
arbitrary unpickling is refused with one line, never executed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from clipes.errors import UserError


def torch_file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a ``torch.save`` file, judged from its first bytes (None: it may be).

    ``torch.save`` writes a zip archive (``PK``) or, in the legacy format, a pickle (``0x80``); a text
    file, an empty file or an image named ``.pt`` is neither, and says so in one line instead of an
    unpickler's stack of errors.
    """
    with open(path, "rb") as handle:
        head = handle.read(64)
    if not head:
        return "it is empty"
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return None
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "it is a text file, not a PyTorch checkpoint"
    return "it is not a PyTorch checkpoint (neither a zip archive nor a pickle)"


def safe_load(path: Path):
    """The content of a checkpoint file (tensors and plain data only), on the CPU.

    Raises:
        UserError: missing file, or one that cannot be read safely.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    problem = torch_file_problem(path)
    if problem:
        raise UserError(f"cannot load checkpoint {path}: {problem}")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"cannot load checkpoint {path} safely (tensors and plain data only): "
                        f"{type(exc).__name__}: {first}") from None


def strip_prefix(state: dict, prefix: str = "module.") -> dict:
    """``state`` with ``prefix`` (DDP's ``module.``) dropped from the keys that have it."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
