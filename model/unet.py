"""The network: a stock diffusers UNet2DModel conditioned on a context vector.

The U-Net adds a class embedding to its time embedding. A stock ``nn.Embedding`` only
takes integer labels; the course mixes contexts (``[1, 0, 0.6, 0, 0]``) and uses the
zero vector for "unconditional". :class:`ContextEmbedding` keeps the same weight (so
the saved model stays a stock ``UNet2DModel`` with ``class_embedding.weight``) and
applies it to float weight vectors as ``weights @ embedding``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import UNet2DModel
from torch import nn


class ContextEmbedding(nn.Embedding):
    """nn.Embedding that also accepts float context vectors (B, C): returns weights @ table."""

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        if context.is_floating_point():
            return context.to(self.weight.dtype) @ self.weight
        return super().forward(context)


def attach_context_embedding(unet: UNet2DModel) -> UNet2DModel:
    """Swap the UNet's class embedding for a ContextEmbedding sharing the same weight."""
    old = unet.class_embedding
    if not isinstance(old, nn.Embedding):
        raise ValueError("the UNet has no class embedding table (set num_class_embeds to the number of contexts)")
    if not isinstance(old, ContextEmbedding):
        new = ContextEmbedding(old.num_embeddings, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
        new.weight = old.weight
        unet.class_embedding = new
    return unet


def guidance_weights(scale: torch.Tensor, knots: list[float]) -> torch.Tensor:
    """Guidance scales (N,) -> (N, K) weights on the guidance rows of the class table: linear interpolation
    between the rows of the two nearest knots (evenly spaced), so the embedding is a learned curve in the scale."""
    knots_t = torch.tensor(knots, dtype=torch.float32, device=scale.device)
    spacing = knots[1] - knots[0] if len(knots) > 1 else 1.0
    return (1 - (scale.float().reshape(-1, 1) - knots_t).abs() / spacing).clamp(min=0)


def with_guidance_rows(unet: UNet2DModel, count: int) -> UNet2DModel:
    """A copy of ``unet`` whose class table has ``count`` more rows, all zero: guidance distillation's student,
    which starts out as its teacher's conditional prediction. It stays a stock UNet2DModel (more class rows)."""
    config = {**unet.config, "num_class_embeds": unet.config.num_class_embeds + count}
    student = UNet2DModel.from_config(config).to(unet.device)
    state = dict(unet.state_dict())
    table = state["class_embedding.weight"]
    state["class_embedding.weight"] = torch.cat([table, table.new_zeros(count, table.shape[1])])
    student.load_state_dict(state)
    return attach_context_embedding(student)


def _levels(channels: tuple[int, ...], attention: bool) -> dict:
    """Down/up block types for a U-Net with attention only at the lowest resolution."""
    down = ["DownBlock2D"] * len(channels)
    up = ["UpBlock2D"] * len(channels)
    if attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return {"block_out_channels": channels, "down_block_types": tuple(down), "up_block_types": tuple(up),
            "add_attention": attention}


# Model sizes compared in the studies (docs/study.md, docs/study-history.md); "medium1-g16" is the bundled
# default model. The "-gN" variants change only the number of GroupNorm groups (diffusers' default is 32),
# which the first study found matters more than width for how fast a sprite model learns.
PRESETS: dict[str, dict] = {
    "tiny": {**_levels((16, 32, 32), True), "layers_per_block": 1, "norm_num_groups": 8},
    "tiny-g4": {**_levels((16, 32, 32), True), "layers_per_block": 1, "norm_num_groups": 4},
    "tiny-g2": {**_levels((16, 32, 32), True), "layers_per_block": 1, "norm_num_groups": 2},
    "small": {**_levels((32, 64, 64), True), "layers_per_block": 1},
    "small-g8": {**_levels((32, 64, 64), True), "layers_per_block": 1, "norm_num_groups": 8},
    "small-noattn": {**_levels((32, 64, 64), False), "layers_per_block": 1},
    "base": {**_levels((32, 64, 128), True), "layers_per_block": 2},
    "base-noattn": {**_levels((32, 64, 128), False), "layers_per_block": 2},
    "medium": {**_levels((64, 128, 128), True), "layers_per_block": 2},
    "large": {**_levels((64, 128, 256), True), "layers_per_block": 2},
    # The quality study's arms (docs/study.md): 4-8 channels per GroupNorm group at every width.
    "small2-g8": {**_levels((32, 64, 64), True), "layers_per_block": 2, "norm_num_groups": 8},
    "medium1-g16": {**_levels((64, 128, 128), True), "layers_per_block": 1, "norm_num_groups": 16},
    "medium-g16": {**_levels((64, 128, 128), True), "layers_per_block": 2, "norm_num_groups": 16},
    "large-g16": {**_levels((64, 128, 256), True), "layers_per_block": 2, "norm_num_groups": 16},
}


def build_unet(num_contexts: int, preset: str | dict | Path = "base", resolution: int = 16) -> UNet2DModel:
    """A fresh UNet2DModel from a preset name, a config dict, or a JSON config file.

    The preset only fixes the architecture; resolution, channels and the number of
    contexts are always set here so they agree with the data.
    """
    if isinstance(preset, dict):
        arch = dict(preset)
    elif isinstance(preset, Path) or str(preset).endswith(".json"):
        path = Path(preset)
        if not path.is_file():
            raise ValueError(f"UNet config file not found: {path}")
        try:
            arch = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"UNet config file {path} is not valid JSON: {err}") from None
    elif preset in PRESETS:
        arch = dict(PRESETS[preset])
    else:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)} or a .json config file")
    if num_contexts < 1:
        raise ValueError("at least one context is needed")
    arch = {k: v for k, v in arch.items() if not k.startswith("_")}
    arch.update(sample_size=resolution, in_channels=3, out_channels=3, num_class_embeds=num_contexts)
    try:
        unet = UNet2DModel(**arch)
    except (TypeError, ValueError) as err:
        raise ValueError(f"invalid UNet config: {err}") from None
    return attach_context_embedding(unet)


def _stages(unet: UNet2DModel) -> list[tuple[str, nn.Module]]:
    return [("input convolution", unet.conv_in), *[(f"down {i + 1}", b) for i, b in enumerate(unet.down_blocks)],
            ("middle", unet.mid_block), *[(f"up {i + 1}", b) for i, b in enumerate(unet.up_blocks)],
            ("output convolution", unet.conv_out)]


@torch.no_grad()
def describe_unet(unet: UNet2DModel, guidance_scales: int = 0) -> str:
    """A Markdown table of the network, stage by stage: what each holds, the shape it hands on and its parameters
    (guidance_scales: the class table's rows for a guidance-distilled model's scales, after the contexts').
    The About tab shows it. The shapes are measured by a forward pass of a copy on the "meta" device (shapes, no
    numbers), so building the page computes nothing (on ZeroGPU no CUDA may run outside a request)."""
    with torch.device("meta"):
        shadow = UNet2DModel.from_config(unet.config)
        size = unet.config.sample_size
        blank = torch.zeros(1, unet.config.in_channels, size, size)
        labels = torch.zeros(1, dtype=torch.long) if unet.config.num_class_embeds else None
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [module.register_forward_hook(
        lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple((out[0] if isinstance(out, tuple) else out)
                                                                       .shape[1:])))
        for name, module in _stages(shadow)]
    try:
        shadow(blank, torch.zeros(1, device="meta"), class_labels=labels)
    finally:
        for hook in hooks:
            hook.remove()
    stages = _stages(unet)

    def holds(module: nn.Module) -> str:
        if isinstance(module, nn.Conv2d):
            return f"3x3 convolution, {module.in_channels} to {module.out_channels} channels"
        parts = [f"{len(module.resnets)} ResNet block{'s' * (len(module.resnets) > 1)}"]
        if "Up" in type(module).__name__:  # UpBlock2D, AttnUpBlock2D: they concatenate the skips
            parts[0] += " taking skip connections from the down path"
        if getattr(module, "attentions", None) is not None and any(a is not None for a in module.attentions):
            parts.append("self-attention")
        parts += ["downsample 2x"] * bool(getattr(module, "downsamplers", None))
        parts += ["upsample 2x"] * bool(getattr(module, "upsamplers", None))
        return ", ".join(parts)

    def count(*modules: nn.Module) -> str:
        return f"{sum(p.numel() for m in modules for p in m.parameters()):,}"

    embed = unet.time_embedding.linear_2.out_features
    rows = [f"| {name} | {holds(module)} | {' x '.join(map(str, shapes[name]))} | {count(module)} |"
            for name, module in stages]
    table = unet.class_embedding.num_embeddings
    table_rows = f"{table - guidance_scales} rows, one per context, and {guidance_scales} for the guidance scale " \
        "(linear weights on the two nearest)" if guidance_scales else f"{table} rows"
    rows += [f"| time embedding | sinusoids of t ({unet.time_embedding.linear_1.in_features}), then a 2-layer MLP "
             f"| {embed} | {count(unet.time_embedding)} |",
             f"| context embedding | c · E, E a learned table of {table_rows}; added to "
             f"the time embedding, and every ResNet block adds a projection of the sum to its channels | {embed} | "
             f"{count(unet.class_embedding)} |",
             f"| norm and activation | GroupNorm ({unet.config.norm_num_groups} groups) and SiLU before the output "
             f"convolution | | {count(unet.conv_norm_out)} |"]
    total = sum(p.numel() for p in unet.parameters())
    return "\n".join(["| stage | holds | shape out (channels x height x width) | parameters |",
                      "| --- | --- | --- | ---: |", *rows, f"| **total** | | | **{total:,}** |"])
