"""DINOv2 from a weights file, never from the network: timm's ViT blocks, the hub's token preparation.

WeCLIP+'s reference builds DINOv2 with ``torch.hub.load('facebookresearch/dinov2', name)``, which
downloads code and weights at construction. clipes reads the weights a user has:

* a released hub state dict (``dinov2_vits14_pretrain.pth`` layout: ``cls_token``, ``pos_embed``,
  ``mask_token``, ``register_tokens``, ``patch_embed.proj.*``, ``blocks.N.*`` or the chunked
  ``blocks.C.N.*``, ``norm.*``), as ``.pth`` or ``.safetensors``;
* a Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel`` folder (``config.json`` +
  ``model.safetensors``), mapped to the hub's names in memory (q, k, v concatenated into ``qkv``).

The architecture is read off the weights: width from ``cls_token``, depth from the blocks, patch
size from the patch embedding, register tokens, the MLP (plain or SwiGLU) and its ratio, the
positional grid. The head count is not in the weights: it comes from the Hugging Face config, from a
``<name>_config.json`` (``num_heads``) beside a state dict, or else the released models' rule
(64-wide heads: ViT-S 6, B 12, L 16, g 24).

The network is timm's ``VisionTransformer`` (its patch embedding, blocks with LayerScale, final
LayerNorm), whose attention computes ``softmax(q * d^-1/2 @ k^T) @ v`` with the very operations of
the hub code at the commit WeCLIP+ was released with (85a2460; ``fused=True`` uses
``scaled_dot_product_attention``, as the hub code since June 2025). Neither timm nor transformers
reproduces the hub's positional-embedding interpolation (bicubic with ``scale_factor = (n + 0.1) /
37``, antialias off; their resamplers use the output size): :meth:`DinoV2.positional` computes it as
the hub does, and only the patch tokens' forward goes through timm's modules.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clipes.errors import UserError
from clipes.store.checkpoints import safe_load, torch_file_problem
from clipes.store.fsutil import file_sha256

HF_CONFIG = "config.json"
HUB_NAMES = {  # hub entry -> (width, depth, heads, registers)
    "dinov2_vits14": (384, 12, 6, 0), "dinov2_vitb14": (768, 12, 12, 0), "dinov2_vitl14": (1024, 24, 16, 0),
    "dinov2_vitg14": (1536, 40, 24, 0), "dinov2_vits14_reg": (384, 12, 6, 4), "dinov2_vitb14_reg": (768, 12, 12, 4),
    "dinov2_vitl14_reg": (1024, 24, 16, 4), "dinov2_vitg14_reg": (1536, 40, 24, 4),
}


@dataclass
class DinoConfig:
    """The architecture of a DINOv2 checkpoint (hub ``DinoVisionTransformer`` arguments).

    Attributes:
        embed_dim, depth, num_heads: width, blocks, heads.
        patch_size: patch side (14 for every released model).
        pos_grid: side of the positional table (37 for the 518-pixel training size).
        num_register_tokens: 0, or 4 for the ``_reg`` models.
        mlp_hidden: hidden width of a block's MLP (per branch for SwiGLU).
        swiglu: SwiGLU MLP (ViT-g) instead of Linear-GELU-Linear.
        layerscale: blocks scale their residuals (``ls1.gamma``, ``ls2.gamma``).
        layernorm_eps: LayerNorm epsilon (1e-6).
        interpolate_offset, interpolate_antialias: the hub's positional interpolation (0.1 and off;
            0 and on for the ``_reg`` models).
    """

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 14
    pos_grid: int = 37
    num_register_tokens: int = 0
    mlp_hidden: int = 0
    swiglu: bool = False
    layerscale: bool = True
    layernorm_eps: float = 1e-6
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False

    def hub_name(self) -> str:
        """The hub entry of the same shape (``dinov2_vits14`` ...), or ``custom``."""
        for name, (width, depth, heads, registers) in HUB_NAMES.items():
            if (width, depth, heads, registers) == (self.embed_dim, self.depth, self.num_heads,
                                                    self.num_register_tokens) and self.patch_size == 14:
                return name
        return "custom"


class DinoV2(nn.Module):
    """A frozen-or-not DINOv2 ViT: timm's modules inside, the hub's token layout and interpolation.

    Args:
        config: :class:`DinoConfig`.
        fused: attention through ``scaled_dot_product_attention`` (same maths, other rounding);
            default the explicit softmax of the hub code WeCLIP+ was released with.
    """

    def __init__(self, config: DinoConfig, fused: bool = False):
        super().__init__()
        from clipes.compat import ensure_torchvision

        ensure_torchvision()  # timm imports torchvision
        from timm.layers import Mlp, SwiGLUPacked
        from timm.models.vision_transformer import VisionTransformer

        self.config = config
        mlp = (partial(SwiGLUPacked, act_layer=nn.SiLU), nn.SiLU) if config.swiglu else (Mlp, nn.GELU)
        hidden = config.mlp_hidden * (2 if config.swiglu else 1)
        self.vit = VisionTransformer(
            img_size=config.pos_grid * config.patch_size, patch_size=config.patch_size, embed_dim=config.embed_dim,
            depth=config.depth, num_heads=config.num_heads, mlp_ratio=(hidden + 0.5) / config.embed_dim, qkv_bias=True,
            init_values=1.0 if config.layerscale else None, class_token=True,
            reg_tokens=config.num_register_tokens, pos_embed="none", dynamic_img_size=True, num_classes=0,
            global_pool="", norm_layer=partial(nn.LayerNorm, eps=config.layernorm_eps), mlp_layer=mlp[0],
            act_layer=mlp[1])
        for block in self.vit.blocks:
            block.attn.fused_attn = fused
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.pos_grid ** 2, config.embed_dim))

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def width(self) -> int:
        return self.config.embed_dim

    def positional(self, h: int, w: int) -> torch.Tensor:
        """The hub's ``interpolate_pos_encoding`` for an ``h x w`` patch grid: ``[1, 1 + h*w, D]``."""
        grid = self.config.pos_grid
        if h * w == grid * grid and h == w:
            return self.pos_embed
        table = self.pos_embed.float()
        cls, patches = table[:, 0], table[:, 1:]
        dim = table.shape[-1]
        kwargs = {"size": (h, w)}
        if self.config.interpolate_offset:
            # the hub's kludge: a scale factor slightly above the size ratio (what sets the sampling)
            kwargs = {"scale_factor": (float(h + self.config.interpolate_offset) / grid,
                                       float(w + self.config.interpolate_offset) / grid)}
        patches = F.interpolate(patches.reshape(1, grid, grid, dim).permute(0, 3, 1, 2), mode="bicubic",
                                antialias=self.config.interpolate_antialias, **kwargs)
        if tuple(patches.shape[-2:]) != (h, w):
            raise ValueError(f"positional interpolation gave {tuple(patches.shape[-2:])}, not {(h, w)}")
        patches = patches.permute(0, 2, 3, 1).view(1, -1, dim)
        return torch.cat((cls.unsqueeze(0), patches), dim=1).to(self.pos_embed.dtype)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Token preparation of the hub: patches, CLS, positions, then the registers after CLS.

        Args:
            images: ``[B, 3, H, W]`` with H, W multiples of the patch size.

        Returns:
            ``[B, 1 + R + N, D]``.
        """
        b, _, height, width = images.shape
        h, w = height // self.patch_size, width // self.patch_size
        x = self.vit.patch_embed(images).reshape(b, h * w, -1)  # [B, N, D] (timm gives NHWC)
        x = torch.cat((self.vit.cls_token.expand(b, -1, -1), x), dim=1)
        x = x + self.positional(h, w)
        if self.vit.reg_token is not None:
            x = torch.cat((x[:, :1], self.vit.reg_token.expand(b, -1, -1), x[:, 1:]), dim=1)
        return x

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``forward_features`` of the hub model.

        Args:
            images: ``[B, 3, H, W]`` normalised; H, W multiples of the patch size.

        Returns:
            ``x_norm_clstoken [B, D]``, ``x_norm_patchtokens [B, N, D]`` (row-major grid) and
            ``grid`` (h, w).
        """
        h, w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        x = self.tokens(images)
        for block in self.vit.blocks:
            x = block(x)
        x = self.vit.norm(x)
        return {"x_norm_clstoken": x[:, 0], "x_norm_patchtokens": x[:, 1 + self.config.num_register_tokens:],
                "grid": (h, w)}


# ---- reading weights -----------------------------------------------------------------------------------

def _from_hf(tensors: dict[str, torch.Tensor], config: dict, where: Path) -> dict[str, torch.Tensor]:
    """A Hugging Face Dinov2 state dict under the hub's names."""
    out = {}
    prefix = "dinov2." if any(k.startswith("dinov2.") for k in tensors) else ""
    layers = {}
    for key, value in tensors.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        direct = {"embeddings.cls_token": "cls_token", "embeddings.mask_token": "mask_token",
                  "embeddings.position_embeddings": "pos_embed", "embeddings.register_tokens": "register_tokens",
                  "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
                  "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
                  "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
        if name in direct:
            out[direct[name]] = value
            continue
        match = re.match(r"encoder\.layer\.(\d+)\.(.+)", name)
        if not match:
            if name.startswith("pooler."):
                continue
            raise UserError(f"{where}: unknown Dinov2 tensor {key}")
        layers.setdefault(int(match.group(1)), {})[match.group(2)] = value
    rename = {"norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias", "norm2.weight": "norm2.weight",
              "norm2.bias": "norm2.bias", "attention.output.dense.weight": "attn.proj.weight",
              "attention.output.dense.bias": "attn.proj.bias", "layer_scale1.lambda1": "ls1.gamma",
              "layer_scale2.lambda1": "ls2.gamma", "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
              "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
              "mlp.weights_in.weight": "mlp.w12.weight", "mlp.weights_in.bias": "mlp.w12.bias",
              "mlp.weights_out.weight": "mlp.w3.weight", "mlp.weights_out.bias": "mlp.w3.bias"}
    for index, parts in layers.items():
        for kind in ("weight", "bias"):
            qkv = [parts.pop(f"attention.attention.{p}.{kind}", None) for p in ("query", "key", "value")]
            if any(t is None for t in qkv):
                raise UserError(f"{where}: layer {index} lacks its query/key/value {kind}")
            out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat(qkv, dim=0)
        for name, value in parts.items():
            if name not in rename:
                raise UserError(f"{where}: unknown Dinov2 tensor encoder.layer.{index}.{name}")
            out[f"blocks.{index}.{rename[name]}"] = value
    return out


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The hub-named tensors of a DINOv2 file or Hugging Face folder, and any config found with them."""
    from clipes.backbones.hf_clip import read_safetensors, weight_files

    if path.is_dir():
        config_path = path / HF_CONFIG
        if not config_path.is_file():
            raise UserError(f"{path} is a folder without {HF_CONFIG}: not a Hugging Face Dinov2 model")
        try:
            config = json.loads(config_path.read_text())
        except ValueError as exc:
            raise UserError(f"{config_path}: not JSON ({exc})") from None
        if not str(config.get("model_type", "")).startswith("dinov2"):
            raise UserError(f"{path} holds a {config.get('model_type', 'unknown')!r} model, not a Dinov2")
        tensors = {}
        for file in weight_files(path):
            tensors.update(read_safetensors(file))
        return _from_hf(tensors, config, path), {
            "num_heads": config.get("num_attention_heads"), "layernorm_eps": config.get("layer_norm_eps", 1e-6)}
    if not path.is_file():
        raise UserError(f"DINO weights not found: {path}")
    if path.suffix == ".safetensors":
        state = read_safetensors(path)
    else:
        problem = torch_file_problem(path)
        if problem:
            raise UserError(f"cannot read DINO weights {path}: {problem}")
        state = safe_load(path)
        for key in ("model", "state_dict", "teacher"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a DINOv2 checkpoint: it holds no dict of tensors")
    state = {re.sub(r"^(module\.|backbone\.)", "", k): v for k, v in state.items()}
    side = path.with_name(f"{path.stem}_config.json")
    return state, (json.loads(side.read_text()) if side.is_file() else {})


def _unchunk(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``blocks.<chunk>.<i>.`` (hub checkpoints saved with block chunks) -> ``blocks.<i>.``."""
    if not any(re.match(r"blocks\.\d+\.\d+\.", k) for k in state):
        return state
    return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items()}


def architecture(state: dict[str, torch.Tensor], extra: dict | None = None, where: Path | str = "weights"
                 ) -> DinoConfig:
    """The :class:`DinoConfig` of hub-named DINOv2 tensors.

    Raises:
        UserError: not a DINOv2 (a CLIP's keys, missing tensors), or an unusable shape.
    """
    extra = dict(extra or {})
    if any(k.startswith(("visual.", "transformer.resblocks.", "token_embedding")) for k in state):
        raise UserError(f"{where} is a CLIP checkpoint, not a DINOv2 (give it as CLIP=, and a DINOv2 as DINO=)")
    required = ("cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight", "blocks.0.attn.qkv.weight")
    missing = [k for k in required if k not in state]
    if missing:
        raise UserError(f"{where} is not a DINOv2 checkpoint: {', '.join(missing)} missing")
    width = int(state["cls_token"].shape[-1])
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for i in range(depth):
        for name in ("norm1.weight", "attn.qkv.weight", "attn.proj.weight", "norm2.weight"):
            if f"blocks.{i}.{name}" not in state:
                raise UserError(f"{where} is not a complete DINOv2 checkpoint: blocks.{i}.{name} missing")
    patch = int(state["patch_embed.proj.weight"].shape[-1])
    rows = int(state["pos_embed"].shape[1]) - 1
    grid = int(round(math.sqrt(rows)))
    if grid * grid != rows:
        raise UserError(f"{where}: a positional table of {rows} patch rows is not a square grid")
    registers = int(state["register_tokens"].shape[1]) if "register_tokens" in state else 0
    swiglu = "blocks.0.mlp.w12.weight" in state
    hidden = int(state["blocks.0.mlp.w3.weight"].shape[1] if swiglu else state["blocks.0.mlp.fc1.weight"].shape[0])
    heads = int(extra.get("num_heads") or extra.get("num_attention_heads") or max(width // 64, 1))
    if width % heads:
        raise UserError(f"{where}: width {width} is not divisible by {heads} heads")
    offset = extra.get("interpolate_offset", 0.0 if registers else 0.1)
    antialias = extra.get("interpolate_antialias", bool(registers))
    return DinoConfig(embed_dim=width, depth=depth, num_heads=heads, patch_size=patch, pos_grid=grid,
                      num_register_tokens=registers, mlp_hidden=hidden, swiglu=swiglu,
                      layerscale="blocks.0.ls1.gamma" in state,
                      layernorm_eps=float(extra.get("layernorm_eps", 1e-6)), interpolate_offset=float(offset),
                      interpolate_antialias=bool(antialias))


def _timm_state(state: dict[str, torch.Tensor], config: DinoConfig) -> dict[str, torch.Tensor]:
    """Hub names -> :class:`DinoV2` names (``mask_token`` is training-only and dropped)."""
    out = {"pos_embed": state["pos_embed"]}
    for key, value in state.items():
        if key in ("pos_embed", "mask_token"):
            continue
        name = {"cls_token": "vit.cls_token", "register_tokens": "vit.reg_token"}.get(key)
        if name is None:
            name = "vit." + key.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
        out[name] = value
    return out


@dataclass
class LoadedDino:
    """A DINOv2 read from a file: the model (frozen, float32, eval), where it came from, its shape."""

    model: DinoV2
    path: Path
    sha256: str
    config: DinoConfig

    def describe(self) -> str:
        c = self.config
        return (f"{c.hub_name()} (width {c.embed_dim}, {c.depth} blocks, {c.num_heads} heads, patch "
                f"{c.patch_size}, {c.num_register_tokens} registers) from {self.path}")


def dino_sha256(path: Path) -> str:
    """Hex SHA-256 of a DINO file, or of a Hugging Face folder's weights."""
    from clipes.backbones.hf_clip import weights_sha256

    return weights_sha256(path) if Path(path).is_dir() else file_sha256(path)


def load_dino(path: str | Path, patch_size: int | None = 14, device: str | torch.device = "cpu",
              fused: bool = False) -> LoadedDino:
    """Build a DINOv2 from a local weights file or folder; nothing is downloaded.

    Args:
        path: hub ``.pth`` / ``.safetensors`` state dict, or a Hugging Face Dinov2 folder.
        patch_size: the patch size the caller needs (None: any).
        device: where the model goes.
        fused: see :class:`DinoV2`.

    Raises:
        UserError: one line for a missing or unreadable file, a CLIP, a non-DINOv2, missing tensors
            or another patch size.
    """
    path = Path(path).expanduser()
    state, extra = _read_weights(path)
    state = _unchunk(state)
    config = architecture(state, extra, path)
    if patch_size is not None and config.patch_size != patch_size:
        raise UserError(f"{path} is a DINOv2 with {config.patch_size}-pixel patches; this method needs "
                        f"{patch_size} (the dinov2_vit*14 models)")
    model = DinoV2(config, fused=fused)
    weights = _timm_state(state, config)
    expected = dict(model.named_parameters())
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise UserError(f"{path} does not fit a DINOv2 of its own shape: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}")
    bad = [k for k, v in weights.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        raise UserError(f"{path}: tensor {bad[0]} has shape {tuple(weights[bad[0]].shape)}, expected "
                        f"{tuple(expected[bad[0]].shape)}")
    model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    model.requires_grad_(False)
    model = model.to(device).eval()
    return LoadedDino(model, path, dino_sha256(path), config)


def config_dict(config: DinoConfig) -> dict:
    """Plain fields of a :class:`DinoConfig` (for manifests and checkpoint meta)."""
    return {**asdict(config), "hub_name": config.hub_name()}
