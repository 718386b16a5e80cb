"""Sprite Diffusion's core: the noise schedule, the network, the sampler and loading."""

from .editing import fit_mask, fit_sprite
from .images import make_grid, upscale
from .loading import DEFAULT_MODEL_DIR, ModelLoadError, load_pipeline
from .pipeline import MAX_IMAGES, DenoiseStep, SpriteOutput, SpritePipeline, to_uint8
from .samplers import SAMPLERS, Sampler, get_sampler
from .schedule import NUM_TRAIN_STEPS, NoiseSchedule, make_scheduler, timestep_grid, unet_timestep
from .unet import PRESETS, ContextEmbedding, attach_context_embedding, build_unet

__all__ = [
    "DEFAULT_MODEL_DIR", "MAX_IMAGES", "NUM_TRAIN_STEPS", "PRESETS", "SAMPLERS",
    "ContextEmbedding", "DenoiseStep", "ModelLoadError", "NoiseSchedule", "Sampler", "SpriteOutput", "SpritePipeline",
    "attach_context_embedding", "build_unet", "fit_mask", "fit_sprite", "get_sampler", "load_pipeline", "make_grid",
    "make_scheduler", "timestep_grid", "to_uint8", "unet_timestep", "upscale",
]
