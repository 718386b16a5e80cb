"""Reused deep features across steps: DeepCache (Ma et al., CVPR 2024), training-free.

A U-Net's deep features change little from one sampling step to the next. Every ``interval`` steps the
whole U-Net runs and the feature entering its outermost up block is kept; the steps in between run only
the outermost (full-resolution) blocks on that kept feature: for the bundled model about 37% of the
arithmetic of a full pass. diffusers has no partial forward for UNet2DModel, so ``split_forward`` below
follows ``UNet2DModel.forward`` block by block; a test checks that the full pass equals the stock one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import UNet2DModel

SplitForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None],
                        tuple[torch.Tensor, torch.Tensor]]


def check_cacheable(unet: UNet2DModel) -> None:
    """Raise ValueError for U-Nets whose forward has steps ``split_forward`` does not follow."""
    config = unet.config
    if config.center_input_sample or config.time_embedding_type != "positional" or len(unet.up_blocks) < 2 \
            or any(hasattr(block, "skip_conv") for block in (*unet.down_blocks, *unet.up_blocks)) \
            or hasattr(unet.down_blocks[0], "attentions"):
        raise ValueError("deep-feature caching needs a plain UNet2DModel (positional time embedding, no skip "
                         "connections to the output, no input centring, no attention in the outermost block)")


def split_forward(unet: UNet2DModel, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                  deep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(U-Net output, deep feature). With ``deep`` given, the inner blocks are skipped and it stands in for
    their output (the input of the outermost up block); without it, this is the whole U-Net."""
    emb = unet.time_embedding(unet.time_proj(timestep.expand(sample.shape[0])).to(unet.dtype))
    emb = emb + unet.class_embedding(context).to(unet.dtype)
    outer = unet.down_blocks[0]
    hidden = unet.conv_in(sample)
    skips = (hidden,)
    if deep is None:  # the whole U-Net: every down block, the middle, every up block but the last
        for block in unet.down_blocks:
            hidden, res = block(hidden_states=hidden, temb=emb)
            skips += res
        hidden = unet.mid_block(hidden, emb) if unet.mid_block is not None else hidden
        for block in unet.up_blocks[:-1]:
            hidden, skips = block(hidden, skips[-len(block.resnets):], emb), skips[:-len(block.resnets)]
        deep = hidden
    else:  # the outermost down block's resnets only: its downsampler feeds the skipped inner blocks alone
        for resnet in outer.resnets:
            hidden = resnet(hidden, emb)
            skips += (hidden,)
        skips = skips[:len(unet.up_blocks[-1].resnets)]
    hidden = unet.up_blocks[-1](deep, skips, emb)
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden))), deep


class DeepCache:
    """A noise predictor for one sampling run: the whole U-Net at every ``interval``-th call, the outer blocks
    on the kept deep feature in between. ``interval`` 1 is the plain U-Net at every step."""

    def __init__(self, forward: SplitForward, interval: int):
        if interval < 1:
            raise ValueError(f"the deep-feature cache interval must be at least 1, got {interval}")
        self.forward, self.interval, self.calls, self.deep = forward, interval, 0, None

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        reuse = self.calls % self.interval != 0 and self.deep is not None and self.deep.shape[0] == sample.shape[0]
        self.calls += 1
        output, self.deep = self.forward(sample, timestep, context, self.deep if reuse else None)
        return output
