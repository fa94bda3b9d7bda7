"""Dense access to the image tower of an unmodified OpenAI CLIP ViT.

clip's ``VisionTransformer.forward`` only accepts the pretraining resolution and returns the CLS
feature. This wrapper reuses its modules as they are and adds what the CAM and affinity stages
need: any input size (positional embedding interpolated to the patch grid), patch tokens, and
per-block attention probabilities. Tensors run in clip's sequence-first layout ``[T, B, C]``
(T = 1 + h*w tokens, CLS first).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DenseViT(nn.Module):
    """Image tower of a CLIP ViT with dense outputs at any input size.

    Args:
        visual: ``clip.model.VisionTransformer`` (used unmodified).
        fp16_pos_embed: round the interpolated positional table to fp16, as the reference does
            even in fp32 (its default quirk).
    """

    def __init__(self, visual: nn.Module, fp16_pos_embed: bool = True):
        super().__init__()
        self.visual = visual
        self.fp16_pos_embed = fp16_pos_embed
        self.patch_size = int(visual.conv1.kernel_size[0])
        self.width = int(visual.conv1.out_channels)
        self.blocks = visual.transformer.resblocks
        self.num_heads = int(self.blocks[0].attn.num_heads)
        self._pos_cache: dict[tuple, torch.Tensor] = {}

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (h, w) of an input of ``height x width`` pixels (multiples of the patch)."""
        return height // self.patch_size, width // self.patch_size

    def positional_embedding(self, h: int, w: int) -> torch.Tensor:
        """Positional table for an ``h x w`` grid: ``[1 + h*w, C]``, CLS row first.

        The pretrained square grid is resized bilinearly (align_corners=False); the result is cached
        per grid size.
        """
        table = self.visual.positional_embedding
        key = (h, w, table.device, table.dtype)
        cached = self._pos_cache.get(key)
        if cached is not None:
            return cached
        cls_row, grid_rows = table[:1], table[1:]
        side = round(grid_rows.shape[0] ** 0.5)
        grid = grid_rows.t().reshape(1, -1, side, side)  # [1, C, s, s]
        grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
        out = torch.cat([cls_row, grid.reshape(grid.shape[1], h * w).t()], dim=0)  # [1+h*w, C]
        if self.fp16_pos_embed:
            out = out.half().to(table.dtype)
        self._pos_cache[key] = out
        return out

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embedding + CLS + positional table + ln_pre.

        Args:
            images: ``[B, 3, H, W]`` normalised, H and W multiples of the patch size.

        Returns:
            Tokens ``[T, B, C]`` ready for the first block.
        """
        visual = self.visual
        x = visual.conv1(images.to(visual.conv1.weight.dtype))  # [B, C, h, w]
        b, c, h, w = x.shape
        x = x.reshape(b, c, h * w).permute(0, 2, 1)  # [B, N, C]
        cls = visual.class_embedding.to(x.dtype) + torch.zeros(b, 1, c, dtype=x.dtype, device=x.device)
        x = torch.cat([cls, x], dim=1)  # [B, T, C]
        x = x + self.positional_embedding(h, w).to(x.dtype)
        x = visual.ln_pre(x)
        return x.permute(1, 0, 2)  # [T, B, C]

    def run_blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Blocks ``start..stop-1`` exactly as clip runs them (no attention weights kept)."""
        for block in self.blocks[start:stop]:
            x = block(x)
        return x

    @staticmethod
    def block_with_attention(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One clip residual block that also returns head-averaged attention probabilities.

        Args:
            block: a ``clip.model.ResidualAttentionBlock``.
            x: ``[T, B, C]``.

        Returns:
            ``(x_out [T, B, C], attention [B, T, T])``, rows are queries.
        """
        out, attn = DenseViT.block_attention(block, x)
        x = x + out
        x = x + block.mlp(block.ln_2(x))
        return x, attn

    @staticmethod
    def block_attention(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention branch of one clip block: ``(output [T, B, C], head-averaged probs [B, T, T])``."""
        a = block.ln_1(x)
        return block.attn(a, a, a, need_weights=True, average_attn_weights=True)

    def run_blocks_with_attention(self, x: torch.Tensor, start: int, stop: int) -> tuple[torch.Tensor, list]:
        """Like :meth:`run_blocks` but also returns each block's ``[B, T, T]`` attention."""
        maps = []
        for block in self.blocks[start:stop]:
            x, attn = self.block_with_attention(block, x)
            maps.append(attn)
        return x, maps

    def schedule(self, tokens: int, quirk_77_tokens: bool = True) -> list[int]:
        """Block indices in the order the reference runs them for an image of ``tokens`` tokens.

        Normally every block once. The reference's text-length test (``x.shape[0] == 77``) makes an
        image of exactly 76 patches run all blocks in the frozen pass and then the last block again
        for the gradient, so its schedule repeats the last block (quirk, on by default).
        """
        order = list(range(self.num_layers))
        if quirk_77_tokens and tokens == 77:
            order.append(self.num_layers - 1)
        return order

    def run_schedule(self, x: torch.Tensor, order: list[int], attention_last: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run blocks in ``order``, summing the head-averaged attention of the last entries.

        Args:
            x: ``[T, B, C]``.
            order: block indices (see :meth:`schedule`).
            attention_last: how many of the final entries contribute attention (0: none).

        Returns:
            ``(x [T, B, C], attention sum [B, T, T] or None)``.
        """
        total = None
        first = len(order) - attention_last
        for position, index in enumerate(order):
            block = self.blocks[index]
            if position < first:
                x = block(x)
                continue
            x, attn = self.block_with_attention(block, x)
            total = attn if total is None else total + attn
        return x, total

    @torch.no_grad()
    def mean_attention(self, images: torch.Tensor, last: int = 8, quirk_77_tokens: bool = True) -> torch.Tensor:
        """Attention of the last ``last`` scheduled blocks, averaged over heads and blocks.

        Args:
            images: ``[B, 3, H, W]`` normalised.
            last: number of final blocks averaged (reference: 8).
            quirk_77_tokens: see :meth:`schedule`.

        Returns:
            ``[B, N, N]`` over patch tokens (CLS row and column dropped, rows not renormalised).
        """
        x = self.embed(images)
        order = self.schedule(x.shape[0], quirk_77_tokens)
        if not 1 <= last <= len(order):
            raise ValueError(f"cannot average the last {last} of {len(order)} blocks")
        x, total = self.run_schedule(x, order[:-1], attention_last=last - 1)
        attn = self.block_attention(self.blocks[order[-1]], x)[1]  # the final block's MLP is not needed
        total = attn if total is None else total + attn
        return total[:, 1:, 1:] / last

    @torch.no_grad()
    def plain_forward(self, images: torch.Tensor) -> torch.Tensor:
        """Gradient-free forward of the whole tower to the projected CLS feature ``[B, D]``.

        This is the yardstick the benchmark compares the CAM cost against.
        """
        x = self.run_blocks(self.embed(images), 0, self.num_layers)
        x = self.visual.ln_post(x[0])
        return x @ self.visual.proj


def fp16_out_projection(attn: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """WeCLIP's attention out-projection: ``x``, weight and bias cast to fp16 (the reference's quirk)."""
    return F.linear(x.half(), attn.out_proj.weight.half(), attn.out_proj.bias.half())


def reference_attention(attn: nn.MultiheadAttention, x: torch.Tensor, mask: torch.Tensor | None = None,
                        fp16_out_proj: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention with the weights of ``attn``, op for op as WeCLIP's reference computes it.

    Args:
        attn: a ``torch.nn.MultiheadAttention`` (packed in-projection), used for its weights only.
        x: ``[T, B, C]`` queries = keys = values.
        mask: optional additive ``[T, T]`` mask.
        fp16_out_proj: run the out-projection in fp16 (reference quirk, default).

    Returns:
        ``(out [T, B, C] float32, head-averaged probabilities [B, T, T])``.
    """
    t, b, c = x.shape
    heads = attn.num_heads
    d = c // heads
    packed = F.linear(x.float(), attn.in_proj_weight, attn.in_proj_bias)  # [T, B, 3C]
    packed = packed.unflatten(-1, (3, c)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()  # [3, T, B, C]
    q, k, v = (p.contiguous().view(t, b * heads, d).transpose(0, 1) for p in packed)  # [B*H, T, d]
    q = q / math.sqrt(d)
    scores = torch.bmm(q, k.transpose(-2, -1))  # [B*H, T, T]
    if mask is not None:
        scores = scores + mask
    probs = F.softmax(scores, dim=-1)
    out = torch.bmm(probs, v).transpose(0, 1).contiguous().view(t, b, c)  # [T, B, C]
    if fp16_out_proj:
        out = fp16_out_projection(attn, out)
    else:
        out = F.linear(out, attn.out_proj.weight, attn.out_proj.bias)
    return out, probs.view(b, heads, t, t).sum(dim=1) / heads


def reference_block(block: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None,
                    fp16_out_proj: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One pre-LN residual block (clip's ``ResidualAttentionBlock`` weights) with the reference attention.

    Returns:
        ``(x [T, B, C] float32, attention [B, T, T])``.
    """
    out, probs = reference_attention(block.attn, block.ln_1(x), mask, fp16_out_proj)
    x = x + out  # fp16 + fp32 -> fp32
    x = x + block.mlp(block.ln_2(x))
    return x, probs
