"""Hugging Face ``CLIPModel`` weights, mapped onto OpenAI's layout in memory (no ``transformers``).

A Hugging Face CLIP folder holds ``config.json`` and ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``). Its tensors map one to one onto OpenAI's names: the q/k/v
projections are concatenated into ``in_proj_*``, the two projection matrices are transposed, and
``pre_layrnorm`` keeps Hugging Face's spelling. The mapped state dict then takes exactly the code
path of an OpenAI checkpoint (``clip.model.build_model``), so everything downstream sees one model.

Refused with one line: a config that is not a two-tower ``clip`` model, an activation other than
OpenAI's QuickGELU, a head count other than width // 64 (OpenAI's architecture rule), an MLP
other than 4 x width, a LayerNorm epsilon other than 1e-5, a missing tensor, and a tensor the
mapping does not know (it would otherwise be silently dropped).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from clipes.errors import UserError
from clipes.store.fsutil import file_sha256

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
# transformers' CLIPTextConfig / CLIPVisionConfig defaults, for fields a config.json leaves out.
_DEFAULTS = {
    "text_config": {"hidden_act": "quick_gelu", "hidden_size": 512, "num_attention_heads": 8,
                    "intermediate_size": 2048, "layer_norm_eps": 1e-5},
    "vision_config": {"hidden_act": "quick_gelu", "hidden_size": 768, "num_attention_heads": 12,
                      "intermediate_size": 3072, "layer_norm_eps": 1e-5},
}
_LAYER = {  # Hugging Face name inside an encoder layer -> OpenAI name inside a resblock
    "self_attn.out_proj.weight": "attn.out_proj.weight", "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight", "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight", "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight", "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight", "mlp.fc2.bias": "mlp.c_proj.bias",
}
_DIRECT = {  # whole-model names
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"visual_projection.weight": "visual.proj", "text_projection.weight": "text_projection"}
_TOWERS = {"text_model.encoder.layers.": "transformer.resblocks.",
           "vision_model.encoder.layers.": "visual.transformer.resblocks."}


def is_hf_folder(path: Path) -> bool:
    """A folder holding a ``config.json`` (a Hugging Face model folder, CLIP or not)."""
    return Path(path).is_dir() and (Path(path) / CONFIG).is_file()


def weight_files(folder: Path) -> list[Path]:
    """The safetensors file(s) of a Hugging Face folder: ``model.safetensors``, or the shards its index names.

    Raises:
        UserError: neither file exists, or the index is unreadable.
    """
    folder = Path(folder)
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    if (folder / INDEX).is_file():
        try:
            shards = sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise UserError(f"cannot read {folder / INDEX}: {exc}") from None
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise UserError(f"{folder}: shard {missing[0]} named by {INDEX} is missing")
        return [folder / name for name in shards]
    raise UserError(f"{folder} has a {CONFIG} but no {WEIGHTS}: clipes reads Hugging Face weights as safetensors")


def weights_sha256(folder: Path) -> str:
    """Hex SHA-256 of a folder's weights: the file's own for one file, else of the shards' digests in order."""
    digests = [file_sha256(path) for path in weight_files(folder)]
    return digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of one ``.safetensors`` file (no pickle is involved in this format).

    Raises:
        UserError: the file is not a readable safetensors file.
    """
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read safetensors file {path}: {reason}") from None


def _tower_config(config: dict, key: str, folder: Path) -> dict:
    tower = {**_DEFAULTS[key], **(config.get(key) or {})}
    what = f"{folder / CONFIG} ({key})"
    if tower["hidden_act"] != "quick_gelu":
        raise UserError(f"{what}: activation {tower['hidden_act']!r} is not OpenAI's QuickGELU, which clipes' CLIP "
                        "code runs (this is not an OpenAI-architecture CLIP)")
    width, heads = int(tower["hidden_size"]), int(tower["num_attention_heads"])
    if width // 64 != heads:
        raise UserError(f"{what}: {heads} attention heads for width {width}; OpenAI's architecture has "
                        f"width // 64 = {width // 64}")
    if int(tower["intermediate_size"]) != 4 * width:
        raise UserError(f"{what}: MLP width {tower['intermediate_size']} is not 4 x {width} as in OpenAI's CLIP")
    if abs(float(tower["layer_norm_eps"]) - 1e-5) > 1e-12:
        raise UserError(f"{what}: layer_norm_eps {tower['layer_norm_eps']} differs from OpenAI's 1e-5")
    return tower


def read_config(folder: Path) -> dict:
    """``config.json`` of a Hugging Face CLIP folder, checked against OpenAI's architecture.

    Raises:
        UserError: unreadable, not a two-tower ``clip`` model, or an architecture OpenAI's code cannot run.
    """
    path = Path(folder) / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a Hugging Face config (no JSON object)")
    model_type = config.get("model_type")
    if model_type != "clip":
        raise UserError(f"{path}: model_type {model_type!r} is not a Hugging Face CLIPModel ('clip' with an image "
                        "and a text tower); clipes needs both towers of an OpenAI-architecture ViT CLIP")
    for key in _DEFAULTS:
        _tower_config(config, key, Path(folder))
    return config


def hf_to_openai(tensors: dict[str, torch.Tensor], where: Path) -> dict[str, torch.Tensor]:
    """Rename (and where needed concatenate or transpose) Hugging Face CLIP tensors to OpenAI's layout.

    Args:
        tensors: a ``CLIPModel`` state dict (Hugging Face names).
        where: the folder or file, for messages.

    Returns:
        An OpenAI-format state dict (the same tensors; q/k/v concatenated ``[3 * width, width]``,
        projections transposed to ``[width, embed_dim]``).

    Raises:
        UserError: a missing tensor, or one the mapping does not know.
    """
    if not any(key.startswith("vision_model.embeddings.patch_embedding.") for key in tensors):
        raise UserError(f"{where}: no patch embedding, so the vision tower is not a ViT; clipes needs a ViT CLIP")
    state, used = {}, set()

    def take(name: str) -> torch.Tensor:
        if name not in tensors:
            raise UserError(f"{where} is missing the tensor {name}")
        used.add(name)
        return tensors[name]

    for source, target in _DIRECT.items():
        state[target] = take(source)
    for source, target in _TRANSPOSED.items():
        state[target] = take(source).t().contiguous()  # [embed_dim, width] -> [width, embed_dim]
    for prefix, target in _TOWERS.items():
        blocks = sorted({int(key[len(prefix):].split(".")[0]) for key in tensors if key.startswith(prefix)})
        if blocks != list(range(len(blocks))) or not blocks:
            raise UserError(f"{where}: the {prefix.split('.')[0]} layers are not numbered 0..n-1")
        for block in blocks:
            src, dst = f"{prefix}{block}.", f"{target}{block}."
            for kind in ("weight", "bias"):  # in_proj = [q; k; v], as nn.MultiheadAttention packs them
                state[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                    [take(f"{src}self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")])
            for name, openai in _LAYER.items():
                state[dst + openai] = take(src + name)
    unknown = sorted(key for key in tensors if key not in used and not key.endswith("position_ids"))
    if unknown:
        raise UserError(f"{where}: tensor {unknown[0]} has no place in OpenAI's CLIP"
                        + (f" ({len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    return state


def read_hf_folder(folder: Path) -> dict[str, torch.Tensor]:
    """The OpenAI-format state dict of a Hugging Face CLIP folder (config checked first)."""
    read_config(folder)
    tensors = {}
    for path in weight_files(folder):
        tensors.update(read_safetensors(path))
    return hf_to_openai(tensors, Path(folder))
