"""Loading OpenAI CLIP checkpoints without trusting them.

Accepted: an OpenAI model name (``ViT-B/16``; fetched by clip's own downloader when online), a
path to an OpenAI-format checkpoint, either a TorchScript archive (the official files) or a plain
state dict saved with ``torch.save`` (fp16 or fp32, optionally under a ``state_dict``/``model`` key,
optionally with ``module.`` prefixes), a ``.safetensors`` file with OpenAI key names, or a Hugging
Face ``CLIPModel`` folder (``config.json`` + ``model.safetensors``, mapped by :mod:`clipes.backbones.hf_clip`).
The architecture is inferred from tensor shapes by clip's own ``build_model`` (heads = width // 64).
Plain files are read with ``weights_only=True``: a file that would need arbitrary unpickling is
refused, never executed.

The model is returned in fp32 holding the checkpoint's values, as the reference runs on CPU. (An
fp32 checkpoint keeps its fp32 values; clip's own ``load`` would round them through fp16.)
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clipes.backbones import hf_clip
from clipes.compat import import_clip
from clipes.errors import UserError
from clipes.store.checkpoints import torch_file_problem
from clipes.store.fsutil import file_sha256

_REQUIRED_KEYS = (
    "visual.conv1.weight",
    "visual.class_embedding",
    "visual.positional_embedding",
    "visual.ln_post.weight",
    "token_embedding.weight",
    "positional_embedding",
    "text_projection",
    "ln_final.weight",
    "logit_scale",
)


@dataclass
class LoadedClip:
    """A CLIP model ready for inference plus what identifies it.

    Attributes:
        model: ``clip.model.CLIP`` in eval mode, fp32, on the requested device.
        path: the checkpoint file (or Hugging Face folder) that was read.
        sha256: hex digest of that file (of a folder: of its safetensors weights).
        config: architecture read off the weights (widths, layers, heads, patch size, ...).
    """

    model: torch.nn.Module
    path: Path
    sha256: str
    config: dict = field(default_factory=dict)


def resolve_checkpoint(name_or_path: str, download_root: str | None = None) -> Path:
    """Turn ``CLIP=`` into a local file: an existing path, or an OpenAI name downloaded by clip.

    Raises:
        UserError: neither an existing file nor a known OpenAI model name, or the download failed.
    """
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_file() or hf_clip.is_hf_folder(path):
        return path
    clip = import_clip()
    names = clip.available_models()
    if str(name_or_path) in names:
        root = download_root or os.path.expanduser("~/.cache/clip")
        try:
            return Path(clip.clip._download(clip.clip._MODELS[str(name_or_path)], root))
        except Exception as exc:  # network errors, checksum mismatch
            raise UserError(
                f"could not download CLIP '{name_or_path}' into {root} ({type(exc).__name__}: {exc}); "
                "pass CLIP=<path to a downloaded checkpoint> instead"
            ) from None
    if path.is_dir():
        raise UserError(f"CLIP checkpoint {path} is a folder without a Hugging Face {hf_clip.CONFIG}")
    if path.exists():
        raise UserError(f"CLIP checkpoint {path} is not a file")
    raise UserError(
        f"CLIP checkpoint not found: {name_or_path} (no such file, and not an OpenAI model name: "
        f"{', '.join(names)})"
    )


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.endswith("constants.pkl") for name in archive.namelist())


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors, in OpenAI's key layout, from a TorchScript archive, a plain (weights-only)
    ``torch.save`` file, a ``.safetensors`` file or a Hugging Face CLIP folder.

    Raises:
        UserError: unreadable file, a file needing arbitrary unpickling, or no tensor dict inside.
    """
    path = Path(path)
    if path.is_dir():
        return hf_clip.read_hf_folder(path)
    if path.suffix == ".safetensors":
        return hf_clip.read_safetensors(path)
    problem = torch_file_problem(path) if path.is_file() else None
    if problem:
        raise UserError(f"cannot read CLIP checkpoint {path}: {problem}")
    try:
        if _is_torchscript_archive(path):
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            reason = "it holds pickled Python objects, which clipes refuses to unpickle"
        raise UserError(f"cannot read CLIP checkpoint {path}: {reason}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise UserError(f"{path} is not a CLIP checkpoint: it holds no dict of tensors")
    state = {
        (k[len("module."):] if isinstance(k, str) and k.startswith("module.") else k): v
        for k, v in state.items()
    }
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"{path} is not a CLIP checkpoint: it holds values that are not tensors")
    return state


def check_clip_state_dict(state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse anything but a ViT CLIP in OpenAI's key layout, with a one-line reason."""
    if any(k.startswith("visual.layer1.") or k.startswith("visual.attnpool.") for k in state):
        raise UserError(
            f"{path} is a ResNet CLIP; clipes needs a ViT CLIP (e.g. ViT-B/16), since GradCAM targets "
            "the last transformer block"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in state]
    if missing or "visual.proj" not in state:
        missing = missing or ["visual.proj"]
        raise UserError(
            f"{path} is not a CLIP checkpoint in OpenAI's format (missing {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''})"
        )


def architecture(state: dict[str, torch.Tensor]) -> dict:
    """The dimensions clip's ``build_model`` will infer, for manifests and messages."""
    width = state["visual.conv1.weight"].shape[0]
    text_width = state["ln_final.weight"].shape[0]
    return {
        "embed_dim": int(state["text_projection"].shape[1]),
        "vision_width": int(width),
        "vision_layers": len([k for k in state if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")]),
        "vision_heads": int(width // 64),
        "vision_patch_size": int(state["visual.conv1.weight"].shape[-1]),
        "pretrained_grid": round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5),
        "text_width": int(text_width),
        "text_layers": len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks")}),
        "text_heads": int(text_width // 64),
        "context_length": int(state["positional_embedding"].shape[0]),
        "checkpoint_dtype": str(state["visual.conv1.weight"].dtype).replace("torch.", ""),
    }


def load_clip(name_or_path: str, device: str | torch.device = "cpu", download_root: str | None = None) -> LoadedClip:
    """Load an OpenAI CLIP ViT for inference, fp32, frozen.

    Args:
        name_or_path: OpenAI model name or checkpoint path.
        device: where the model should live.
        download_root: cache folder for named models (clip's default when None).

    Returns:
        A :class:`LoadedClip`.

    Raises:
        UserError: missing file, not a CLIP checkpoint, a ResNet CLIP, or unreadable weights.
    """
    path = resolve_checkpoint(name_or_path, download_root)
    state = read_state_dict(path)
    check_clip_state_dict(state, path)
    config = architecture(state)
    if config["vision_width"] < 64 or config["text_width"] < 64:
        raise UserError(f"{path}: widths below 64 give zero attention heads under OpenAI's rule")
    clip = import_clip()
    try:
        model = clip.model.build_model(dict(state)).float()
        # build_model casts to fp16 before loading; load again so fp32 checkpoints keep their values
        # (fp16 ones are unchanged: every fp16 value is exact in fp32). load_state_dict copies
        # tensor by tensor into the fp32 parameters, so no second full-size copy is ever held.
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in state.items() if k in own})
    except Exception as exc:
        raise UserError(f"{path} is not a loadable CLIP checkpoint: {type(exc).__name__}: {exc}") from None
    del state, own  # the checkpoint's tensors are no longer needed
    model = model.eval().requires_grad_(False).to(device)
    sha256 = hf_clip.weights_sha256(path) if path.is_dir() else file_sha256(path)
    return LoadedClip(model=model, path=path, sha256=sha256, config=config)
