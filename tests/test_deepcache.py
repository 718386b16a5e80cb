"""DeepCache: the whole U-Net every k steps, its outer blocks on kept deep features in between."""

import numpy as np
import pytest
import torch

from model import SpritePipeline, build_unet, make_scheduler
from model.deepcache import DeepCache, check_cacheable, split_forward

NAMES = ["hero", "non-hero", "food", "spell", "item"]


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return SpritePipeline(build_unet(len(NAMES), "tiny"), make_scheduler(), NAMES)


def batch(rows: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, 3, 16, 16, generator=generator), torch.linspace(50, 400, rows),
            torch.eye(len(NAMES))[:rows])


@torch.no_grad()
def test_the_split_forward_is_the_stock_unet_and_its_outer_pass_rebuilds_it_from_the_deep_feature(pipe):
    sample, timestep, context = batch()
    stock = pipe.unet(sample, timestep, class_labels=context).sample
    whole, deep = split_forward(pipe.unet, sample, timestep, context)
    assert torch.allclose(whole, stock, atol=1e-5)
    outer, kept = split_forward(pipe.unet, sample, timestep, context, deep)
    assert torch.allclose(outer, stock, atol=1e-5) and kept is deep
    other, _ = split_forward(pipe.unet, *batch(seed=1)[:2], context, deep)  # the deep feature matters:
    assert not torch.allclose(other, pipe.unet(*batch(seed=1)[:2], class_labels=context).sample, atol=1e-3)


def test_the_cache_runs_the_whole_unet_every_kth_call():
    calls = []
    cache = DeepCache(lambda sample, t, c, deep: calls.append(deep is None) or (sample, sample), interval=3)
    for _ in range(7):
        cache(torch.zeros(2, 3, 16, 16), torch.zeros(2), torch.zeros(2, 5))
    assert calls == [True, False, False, True, False, False, True]


@pytest.mark.parametrize("sampler", ["ddpm", "dpm++2m-sde"])
def test_interval_one_is_the_plain_path_and_larger_ones_differ_a_little(pipe, sampler):
    def draw(interval: int) -> np.ndarray:
        return pipe("food", num_images=2, num_inference_steps=6, sampler=sampler, seed=4, guidance_scale=2.0,
                    cache_interval=interval).array.astype(int)
    plain = draw(1)
    assert np.array_equal(plain, pipe("food", num_images=2, num_inference_steps=6, sampler=sampler, seed=4,
                                      guidance_scale=2.0).array)
    assert np.array_equal(draw(1), plain)
    cached = draw(3)
    assert 0 < np.abs(cached - plain).mean() < 40


def test_bad_intervals_and_uncacheable_unets_are_named(pipe):
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="cache_interval must be a whole number of at least 1"):
            pipe("hero", num_images=1, num_inference_steps=2, cache_interval=bad)
    unet = build_unet(2, {"block_out_channels": [32, 32], "down_block_types": ["AttnDownBlock2D", "DownBlock2D"],
                          "up_block_types": ["UpBlock2D", "AttnUpBlock2D"], "layers_per_block": 1,
                          "norm_num_groups": 8})
    with pytest.raises(ValueError, match="no attention in the outermost block"):
        check_cacheable(unet)
