"""Continuous batching (model/batching.py): requests in flight share U-Net calls and get the sprites they get alone.

"The same sprites" means up to float rounding: a convolution over 40 rows does not round every row exactly as
over 8 (oneDNN picks its kernels by batch size; about 1e-6 per call here), so samples agree within 1e-4 and
sprites within 1 level at a few pixels in a thousand, the tolerance the compiled path is held to as well.
"""

import threading
import time

import numpy as np
import pytest
import torch

from model import SpritePipeline, build_unet, make_scheduler
from model.batching import Busy, ContinuousBatcher

NAMES = ["hero", "non-hero", "food", "spell", "item"]
REQUESTS = [  # different samplers, step counts, contexts, guidance, sizes
    dict(context="hero", num_images=3, num_inference_steps=20, sampler="ddpm", guidance_scale=2.0, seed=1),
    dict(context="food", num_images=2, num_inference_steps=7, sampler="ddim", seed=2),
    dict(context=[0, 1, 0, 0.5, 0], num_images=4, num_inference_steps=12, sampler="ddim", guidance_scale=3.0, seed=3),
    dict(context="item", num_images=1, num_inference_steps=15, sampler="ddpm", seed=4),
    dict(context="spell", num_images=2, num_inference_steps=6, sampler="unipc", guidance_scale=2.0, seed=5),
    dict(context=None, num_images=2, num_inference_steps=9, sampler="euler-a", seed=6),
]


@pytest.fixture
def pipe():
    torch.manual_seed(0)
    pipe = SpritePipeline(build_unet(len(NAMES), "tiny"), make_scheduler(), NAMES)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def trajectory(pipe, request, started: threading.Event | None = None) -> list[torch.Tensor]:
    """Every step's sample of one request."""
    samples = []
    for step in pipe.denoise(**request):
        samples.append(step.sample.clone())
        if started is not None:
            started.set()
    return samples


def in_threads(pipe, requests, delays=None) -> list[list[torch.Tensor]]:
    results, errors = [None] * len(requests), []

    def run(index):
        try:
            time.sleep((delays or [0] * len(requests))[index])
            results[index] = trajectory(pipe, requests[index])
        except Exception as err:  # noqa: BLE001 -- reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return results


def assert_same_sprites(alone: list[torch.Tensor], batched: list[torch.Tensor]) -> None:
    assert len(alone) == len(batched)
    for a, b in zip(alone, batched, strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
    levels = lambda x: ((x.clamp(-1, 1) + 1) * 127.5).round()  # noqa: E731
    diff = (levels(alone[-1]) - levels(batched[-1])).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.005


def test_requests_get_their_own_sprites_when_merged(pipe):
    alone = [trajectory(pipe, r) for r in REQUESTS]
    batcher = pipe.enable_batching()
    batched = in_threads(pipe, REQUESTS, delays=[0, 0, 0.05, 0.1, 0, 0.02])
    for a, b in zip(alone, batched, strict=True):
        assert_same_sprites(a, b)
    assert max(len(m) for m in batcher.merged) >= 4  # the calls really were merged, most of them at once
    rows = sum(n for m in batcher.merged for n in m)
    assert rows == sum(r["num_images"] * (2 if r.get("guidance_scale", 1) != 1 else 1) * r["num_inference_steps"]
                       for r in REQUESTS)  # every row of every step, each computed once
    assert not batcher.tickets  # everyone left


def test_a_request_joins_and_leaves_mid_loop(pipe):
    long, short = REQUESTS[0], REQUESTS[1]  # 20 DDPM steps, guided (6 rows); 7 DDIM steps (2 rows)
    alone = [trajectory(pipe, long), trajectory(pipe, short)]
    batcher = pipe.enable_batching()
    started, results = threading.Event(), {}
    first = threading.Thread(target=lambda: results.update(long=trajectory(pipe, long, started)))
    first.start()
    assert started.wait(30)
    results["short"] = trajectory(pipe, short)  # joins the long request under way, leaves before its end
    first.join(60)
    assert_same_sprites(alone[0], results["long"])
    assert_same_sprites(alone[1], results["short"])
    shapes = [tuple(m) for m in batcher.merged]
    assert shapes[0] == (6,) and shapes[-1] == (6,)  # alone at the start and, after the short one left, the end
    assert shapes.count((6, 2)) + shapes.count((2, 6)) >= 5  # together in between


def test_a_cancelled_request_frees_its_rows(pipe):
    batcher = pipe.enable_batching(max_rows_in_flight=6)
    steps = pipe.denoise(**REQUESTS[0])  # 6 rows: the whole allowance
    next(steps)
    next(steps)
    assert batcher.rows_in_flight == 6
    with pytest.raises(Busy, match="busy"):
        next(pipe.denoise(**REQUESTS[1]))  # refused at its first step, without touching the first request
    steps.close()  # what gradio does when the client goes away
    assert batcher.rows_in_flight == 0 and not batcher.tickets
    assert len(trajectory(pipe, REQUESTS[1])) == 7  # now there is room


def test_an_error_in_one_request_never_touches_the_others(pipe):
    alone = [trajectory(pipe, r) for r in REQUESTS[:3]]
    eager = pipe.noise_predictor

    def fails_on_a_marked_context(sample, timestep, context):  # rows of one request raise inside the U-Net
        if (context == 7.0).any():
            raise RuntimeError("this request's rows broke the U-Net")
        return eager(sample, timestep, context)
    pipe.noise_predictor = fails_on_a_marked_context
    batcher = pipe.enable_batching()
    poisoned = dict(REQUESTS[3], context=[7.0, 0, 0, 0, 0])
    outcome = {}

    def run_poisoned():
        try:
            trajectory(pipe, poisoned)
        except RuntimeError as err:
            outcome["error"] = str(err)

    thread = threading.Thread(target=run_poisoned)
    thread.start()
    batched = in_threads(pipe, REQUESTS[:3])
    thread.join(60)
    assert outcome["error"] == "this request's rows broke the U-Net"
    for a, b in zip(alone, batched, strict=True):
        assert_same_sprites(a, b)
    assert not batcher.tickets


def test_rows_per_step_are_capped_and_first_steps_go_first():
    seen = []
    gate = threading.Event()

    def predictor(sample, timestep, context):
        gate.wait(10)
        seen.append(sample.shape[0])
        return torch.zeros_like(sample)
    batcher = ContinuousBatcher(predictor, max_rows_per_step=8, gather_s=0.0)
    from model.batching import Call, Ticket
    old, new = Ticket(4, 0, steps_done=3), Ticket(4, 1)
    calls = [Call(t, torch.zeros(4, 3, 2, 2), torch.zeros(4), torch.zeros(4, 5)) for t in (old, old, new)]
    batcher.queue = list(calls)
    chosen = batcher._choose()
    assert chosen[0].ticket is new and sum(c.rows for c in chosen) == 8  # the newcomer's first step, then the oldest
    gate.set()
    batcher._run(chosen)
    assert seen == [8] and all(c.done.is_set() for c in chosen)


def test_merged_calls_are_padded_to_a_compiled_size(pipe):
    alone = trajectory(pipe, REQUESTS[1])
    sizes = []
    eager = pipe.noise_predictor

    def recording(sample, timestep, context):
        sizes.append(sample.shape[0])
        return eager(sample, timestep, context)
    pipe.noise_predictor = recording
    pipe.compiled_batch_sizes = (4, 16)  # as a compile for those sizes leaves it
    pipe.enable_batching()
    assert_same_sprites(alone, trajectory(pipe, REQUESTS[1]))  # 2 rows, run as 4: the padding is dropped
    assert set(sizes) == {4}


def test_without_a_batcher_nothing_changes(pipe):
    reference = trajectory(pipe, REQUESTS[2])
    pipe.enable_batching()
    pipe.batcher = None
    assert all(torch.equal(a, b) for a, b in zip(reference, trajectory(pipe, REQUESTS[2]), strict=True))
    assert np.array_equal(pipe(**REQUESTS[2]).array, pipe(**REQUESTS[2]).array)
