"""ExCEL's frozen CLIP: the surgery forward of an unmodified OpenAI CLIP ViT (spec 3.2-3.4), in fp32.

Blocks 1..7 run as clip runs them and return head-averaged attention. The last five blocks (the
reference's ``reload_self_attn(layers=6)``, off by one) run two paths with their weights:

* the original path: ``x_ori <- x_ori + attn(ln_1 x_ori); x_ori <- x_ori + mlp(ln_2 x_ori)``, its
  attention returned as a **head sum**;
* the new path (the "static visual calibration"): ``x_new <- x_new + proj(concat_h(Sigma v_h))`` with
  ``Sigma`` the head sum of ``[softmax(q q^T s) + softmax(k k^T s) + softmax(v v^T s)] / 3`` (plus the
  LVC map ``G`` on the patch block in a second forward, spec 7), no LayerNorm and no MLP.

The image tokens are ``ln_post(x_new) @ proj`` with the CLS token of the original path, divided by
their norm over the **token** axis. The twelve maps handed to the decoder keep the reference's
in-place updates (spec 3.4): ``F_7`` is the final new path, ``F_8..F_11`` the next block's state
after its attention residual. The positional table follows the reference's modes (spec 3.2):
``train`` replaces the 14 x 14 grid by the crop's grid once (bilinear), ``val`` resizes the
original grid per forward; both only for square grids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SURGERY_BLOCKS = 5  # blocks 8..12 of a 12-block ViT
MODES = ("train", "val")


@dataclass
class SurgeryPass:
    """What one surgery forward gives a batch.

    Attributes:
        image_features: ``[B, L, D]`` projected tokens (CLS of the original path), L2-normalised
            over the token axis.
        attention: ``[blocks, B, L, L]`` per block: head means (standard blocks), head sums
            (surgery blocks), of the original path.
        features: ``[blocks, B, L, C]`` the twelve maps for the decoder (reference semantics).
        grid: ``(h, w)``.
        new_path: ``[B, L, C]`` the final new path (CLS from the original path), before ``ln_post``.
        values: per surgery block its values ``[B, heads, L, C / heads]`` (what the LVC pass reuses).
    """

    image_features: torch.Tensor
    attention: torch.Tensor
    features: torch.Tensor
    grid: tuple[int, int]
    new_path: torch.Tensor | None = None
    values: list[torch.Tensor] | None = None

    def patch_maps(self) -> torch.Tensor:
        """The decoder's inputs ``[blocks, B, C, h, w]`` (CLS dropped), laid out as the reference's."""
        layers, b, _, c = self.features.shape
        h, w = self.grid
        return self.features[:, :, 1:].permute(0, 1, 3, 2).reshape(layers, b, c, h, w)


def _resize_table(table: torch.Tensor, side: int, new_side: int) -> torch.Tensor:
    """The reference's bilinear resize of a ``[1 + side^2, C]`` table to ``new_side`` (op for op)."""
    c = table.shape[-1]
    grid = table[1:, :].reshape(-1, side, side, c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, (new_side, new_side), mode="bilinear")
    grid = grid.reshape(-1, c, new_side * new_side).transpose(1, 2)
    return torch.cat([table[:1, :], grid[0]], 0)


def lvc_map(features: torch.Tensor, beta: float = 1.0, gamma: float = 3.0) -> torch.Tensor:
    """The learnable visual calibration's map ``G`` (spec 7) of the decoder's fused features.

    ``S = 3 (cos - mean)`` with the mean over the **whole batch tensor** (quirk), negative entries
    masked, softmax over the last axis.

    Args:
        features: ``[B, E, h, w]`` fused features (detached).

    Returns:
        ``[B, N, N]``.
    """
    q = F.normalize(features.flatten(2, 3), dim=1)
    similarity = torch.einsum("b c m, b c n -> b m n", q, q)
    similarity = (similarity - torch.mean(similarity) * beta) * gamma
    similarity[similarity < 0.0] = float("-inf")
    return F.softmax(similarity, dim=-1)


def lvc_attention(features: torch.Tensor, heads: int, beta: float = 1.0, gamma: float = 3.0) -> torch.Tensor:
    """:func:`lvc_map` repeated per head, as the reference adds it: ``[B, heads, N, N]``."""
    return lvc_map(features, beta, gamma).unsqueeze(1).repeat(1, heads, 1, 1)


class SurgeryCLIP(nn.Module):
    """The frozen image tower of an unmodified OpenAI CLIP ViT, run as ExCEL runs it.

    Args:
        visual: ``clip.model.VisionTransformer`` (its weights are used, unchanged, in fp32).
        mode: ``train`` (the positional table of ``crop`` replaces the pretrained grid, as the
            reference's training model) or ``val`` (the pretrained grid resized per forward).
        crop: the training crop (its grid makes the ``train`` table).
    """

    def __init__(self, visual: nn.Module, mode: str = "train", crop: int = 320):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.visual = visual
        self.patch_size = int(visual.conv1.kernel_size[0])
        self.width = int(visual.conv1.out_channels)
        self.blocks = visual.transformer.resblocks
        self.heads = int(self.blocks[0].attn.num_heads)
        table = visual.positional_embedding.detach().float()
        if mode == "train":
            side = int((table.shape[0] - 1) ** 0.5)
            table = _resize_table(table, side, crop // self.patch_size)
        self.register_buffer("table", table, persistent=False)
        self.mode = mode
        self.requires_grad_(False)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def positional(self, tokens: int) -> torch.Tensor:
        side = int((self.table.shape[0] - 1) ** 0.5)
        new_side = int((tokens - 1) ** 0.5)
        return self.table if side == new_side else _resize_table(self.table, side, new_side)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, lvc: torch.Tensor | None = None) -> SurgeryPass:
        """One surgery forward.

        Args:
            images: ``[B, 3, H, W]`` ImageNet-normalised, H = W (square grids only, as the reference).
            lvc: ``[B, heads, N, N]`` the LVC map added in the surgery blocks (:func:`lvc_attention`).

        Returns:
            :class:`SurgeryPass`.
        """
        visual = self.visual
        x = visual.conv1(images)
        b, c, h, w = x.shape
        if h != w:
            raise ValueError(f"ExCEL's CLIP takes square patch grids only, not {h} x {w}")
        x = x.reshape(b, c, -1).permute(0, 2, 1)
        x = torch.cat([visual.class_embedding.to(x.dtype) + torch.zeros(b, 1, c, dtype=x.dtype, device=x.device), x],
                      dim=1)
        x = x + self.positional(x.shape[1]).to(x.dtype)
        x = visual.ln_pre(x).permute(1, 0, 2)  # [L, B, C]
        attention, features, values = [], [], []
        first_surgery = self.num_layers - SURGERY_BLOCKS
        x_ori = None
        for index, block in enumerate(self.blocks):
            if index < first_surgery:
                a = block.ln_1(x)
                out, attn = block.attn(a, a, a, need_weights=True)
                x = x + out
                x = x + block.mlp(block.ln_2(x))
                features.append(x.permute(1, 0, 2))
            else:
                source = x if x_ori is None else x_ori
                x_res, x_ori_res, attn, v = self._surgery_attention(block, block.ln_1(source), lvc)
                values.append(v)
                if x_ori is None:
                    x_ori = x + x_ori_res
                else:
                    x_ori += x_ori_res  # in place: the previous block's map takes this residual (spec 3.4)
                x_ori = x_ori + block.mlp(block.ln_2(x_ori))
                x += x_res  # in place: the new path grows inside the 7th map
                features.append(x_ori.permute(1, 0, 2))
            attention.append(attn)
        x[0, :, :] = x_ori[0, :, :]  # CLS of the original path (also in the 7th map, as the reference)
        new_path = x.permute(1, 0, 2)  # [B, L, C]
        return SurgeryPass(self.project(new_path), torch.stack(attention, dim=0), torch.stack(features, dim=0), (h, w),
                           new_path, values)

    def project(self, new_path: torch.Tensor) -> torch.Tensor:
        """Image tokens of a new path ``[B, L, C]``: ``ln_post(x) @ proj``, L2-normalised over the
        **token** axis (quirk): ``[B, L, D]``."""
        tokens = self.visual.ln_post(new_path) @ self.visual.proj
        return tokens / tokens.norm(dim=1, keepdim=True)

    @torch.no_grad()
    def calibrated(self, surgery: SurgeryPass, lvc: torch.Tensor) -> torch.Tensor:
        """The image tokens of the LVC second forward, from the first one's values (spec 7).

        The LVC map only enters the new path, which is a plain sum of the surgery blocks' residuals
        (no LayerNorm, no MLP), and it enters each block linearly: ``Sigma' = Sigma + heads G`` on the
        patch block. So the second forward's new path is the first one's plus, per surgery block,
        ``W_o concat_h(heads G v_h)`` on the patch rows; blocks 1..7, the original path and the
        attention are unchanged. The same function as the reference's whole second forward, in a
        fraction of its work; the last bits differ (summation order), within the goldens' tolerance.

        Args:
            surgery: the first forward.
            lvc: ``[B, N, N]`` from :func:`lvc_map`.

        Returns:
            ``[B, L, D]`` image tokens.
        """
        x = surgery.new_path.clone()
        heads = self.heads
        first = self.num_layers - SURGERY_BLOCKS
        for block, v in zip(list(self.blocks)[first:], surgery.values):
            b, _, n, d = v.shape
            mixed = heads * (lvc @ v[:, :, 1:].transpose(1, 2).reshape(b, n - 1, heads * d))  # [B, N, C]
            x[:, 1:] += F.linear(mixed, block.attn.out_proj.weight)
        return self.project(x)

    def _surgery_attention(self, block: nn.Module, x: torch.Tensor, lvc: torch.Tensor | None):
        """``(new-path residual, original residual [L, B, C], head-summed attention [B, L, L],
        values [B, heads, L, C / heads])``."""
        xt = x.transpose(0, 1)  # [B, L, C]
        b, n, c = xt.shape
        heads = self.heads
        qkv = F.linear(xt, block.attn.in_proj_weight, block.attn.in_proj_bias)
        qkv = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scale = (c // heads) ** -0.5
        attn_ori = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
        attn = (((q @ q.transpose(-2, -1)) * scale).softmax(dim=-1) + ((k @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
                + ((v @ v.transpose(-2, -1)) * scale).softmax(dim=-1)) / 3
        if lvc is not None:
            attn[:, :, 1:, 1:] = attn[:, :, 1:, 1:] + lvc
        attn = torch.sum(attn, dim=1, keepdim=True)
        out_ori = (attn_ori @ v).transpose(1, 2).reshape(b, n, c)
        out_new = attn[:, 0] @ v.transpose(1, 2).reshape(b, n, c)  # one Sigma for every head: one product
        out_new = F.linear(out_new, block.attn.out_proj.weight, block.attn.out_proj.bias)
        out_ori = F.linear(out_ori, block.attn.out_proj.weight, block.attn.out_proj.bias)
        return out_new.transpose(0, 1), out_ori.transpose(0, 1), torch.sum(attn_ori, dim=1), v


def feature_surgery(image_features: torch.Tensor, text: torch.Tensor, classes: int) -> torch.Tensor:
    """The training-free patch-text CAM (spec 5.1): ``[B, N, classes]`` in [0, 1], detached.

    ``s(i, t) = sum_d P[i, d] (w_t T[t, d] - mean_t' w_t' T[t', d])`` with ``w = p / mean(p)``,
    ``p = softmax(2 P_cls T^T)``, then min-max over every token (CLS included; no epsilon, quirk).
    The reference materialises the ``[B, L, T, D]`` products; the sum is taken here as two matrix
    products, ``w_t (P T^T)[i, t] - (P m)[i]`` with ``m = mean_t w_t T_t`` (the same function; the
    last bits follow the summation order, as the reference's own do with its kernel path).

    Args:
        image_features: ``[B, L, D]`` from :class:`SurgeryPass` (CLS first).
        text: ``[T, D]`` enriched text features, the classes' rows first.
        classes: how many leading rows are foreground classes.
    """
    prob = image_features[:, :1, :] @ text.t()  # [B, 1, T]
    prob = (prob * 2).softmax(-1)
    w = prob / prob.mean(-1, keepdim=True)
    centre = (w @ text) / text.shape[0]  # [B, 1, D]: mean over the texts of w_t T_t
    similarity = (image_features @ text.t()) * w - image_features @ centre.transpose(1, 2)  # [B, L, T]
    low, high = similarity.min(1, keepdim=True)[0], similarity.max(1, keepdim=True)[0]
    maps = (similarity - low) / (high - low)  # over every token, CLS included; no epsilon (quirk)
    return maps.detach()[:, 1:, :classes]
