"""ChunkedSampler (model/graphs.py): the same steps and sprites as SpritePipeline.denoise for the same seed, run a
chunk at a time; its CUDA-graph path falls back to eager chunks where there is no CUDA.

Eager fp32 on the CPU runs the same operations on the same numbers as the step-by-step loop, so the tolerance is
zero. A compiled whole step is held to tests/test_fast.py's bound (1e-3 in [-1, 1] units, 1 uint8 level).
No GPU runs here: the capture and replay bookkeeping is checked with a stand-in graph that runs the recorded chunk
again at each replay; benchmarks/gpu.sh's "graphs" part checks the real graphs' sprites against eager on a GPU.
"""

import logging
import re

import numpy as np
import pytest
import torch

import model.graphs
from model import SpritePipeline, build_unet, make_scheduler, to_uint8
from model.graphs import ChunkedSampler

NAMES = ["hero", "non-hero", "food", "spell", "item"]


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return SpritePipeline(build_unet(len(NAMES), "tiny"), make_scheduler(), NAMES)


def assert_same_steps(chunked, reference, atol: float = 0.0):
    """Same step numbers and timesteps; samples and x0 estimates equal (atol 0: bit for bit)."""
    chunked, reference = list(chunked), list(reference)
    assert [(s.index, s.timestep) for s in chunked] == [(s.index, s.timestep) for s in reference]
    for ours, theirs in zip(chunked, reference, strict=True):
        torch.testing.assert_close(ours.sample, theirs.sample, rtol=0, atol=atol)
        torch.testing.assert_close(ours.predicted_clean, theirs.predicted_clean, rtol=0, atol=atol)
    if atol == 0:
        assert np.array_equal(to_uint8(chunked[-1].sample), to_uint8(reference[-1].sample))


@pytest.mark.parametrize("sampler, guidance_scale, steps, chunk_steps", [
    ("ddpm", 1.0, 7, 3),  # chunks of 3, 3 and 1
    ("ddpm", 2.0, 7, 3),
    ("ddim", 1.0, 7, 3),
    ("ddim", 2.5, 6, 3),  # chunks that divide the steps
    ("ddpm", 2.0, 5, 50),  # the whole loop in one chunk
    ("ddpm", 1.0, 4, 1),  # one step per chunk
    ("ddpm", 1.0, 1, 3),  # one step
    ("ddim", 2.0, 1, 1),
])
def test_chunked_matches_step_by_step(pipe, sampler, guidance_scale, steps, chunk_steps):
    request = dict(context="food", num_images=2, num_inference_steps=steps, sampler=sampler,
                   guidance_scale=guidance_scale, seed=3)
    assert_same_steps(ChunkedSampler(pipe, chunk_steps).denoise(**request), pipe.denoise(**request))


@pytest.mark.parametrize("options", [
    {"add_noise": False},  # the collapse demonstration: no extra noise drawn
    {"noise_scale": 0.5, "context": [1, 0, 0.6, 0, 0]},
    {"noise_scale": 0.0, "context": None},
])
def test_noise_options_and_contexts_match(pipe, options):
    request = {"context": "hero", "num_images": 3, "num_inference_steps": 7, "sampler": "ddpm", "seed": 11, **options}
    assert_same_steps(ChunkedSampler(pipe, 3).denoise(**request), pipe.denoise(**request))


def test_generator_and_global_rng_draw_the_same_noise(pipe):
    request = dict(context="spell", num_images=2, num_inference_steps=5)
    chunked = ChunkedSampler(pipe, 2).denoise(generator=torch.Generator().manual_seed(7), **request)
    assert_same_steps(chunked, pipe.denoise(generator=torch.Generator().manual_seed(7), **request))
    torch.manual_seed(5)  # no generator and no seed: torch's global generator, as the pipeline uses
    chunked = list(ChunkedSampler(pipe, 2).denoise(**request))
    torch.manual_seed(5)
    assert_same_steps(chunked, pipe.denoise(**request))


def test_call_gives_the_pipelines_sprites_and_callbacks(pipe):
    seen = []
    out = ChunkedSampler(pipe, 4)("item", num_images=2, num_inference_steps=9, sampler="ddim", seed=1,
                                  callback=lambda i, t, x, x0: seen.append((i, t)))
    expected = []
    reference = pipe("item", num_images=2, num_inference_steps=9, sampler="ddim", seed=1,
                     callback=lambda i, t, x, x0: expected.append((i, t)))
    assert np.array_equal(out.array, reference.array) and seen == expected and len(out.images) == 2


def test_cuda_graphs_fall_back_to_eager_chunks_without_cuda(pipe, caplog):
    if torch.cuda.is_available() and pipe.device.type == "cuda":
        pytest.skip("this checks the fallback where CUDA is absent")
    with caplog.at_level(logging.WARNING, logger="model.graphs"):
        sampler = ChunkedSampler(pipe, 3, cuda_graphs=True)
    assert sampler.uses_cuda_graphs is False
    assert sampler.fallback_reason in ("CUDA is not available", "the pipeline is on cpu, not a CUDA device")
    assert [r.getMessage() for r in caplog.records] == [f"CUDA graphs off, sampling in eager chunks: "
                                                        f"{sampler.fallback_reason}"]
    request = dict(context="hero", num_images=2, num_inference_steps=7, guidance_scale=2.0, seed=2)
    assert_same_steps(sampler.denoise(**request), pipe.denoise(**request))
    assert ChunkedSampler(pipe, 3).fallback_reason is None  # nothing asked, nothing reported


class StandInGraph:
    """A captured chunk without CUDA: replay runs the recorded chunk function again. It checks what the sampler
    does around real graphs (warm-up as the chunk's real run, capture once per length, buffers reused across
    requests, step indices read from the device), not the recording itself."""

    def __init__(self, body):
        self.body, self.replays = body, 0

    def replay(self):
        self.replays += 1
        self.body()


@pytest.fixture
def stand_in_graphs(monkeypatch):
    """Graphs on: warm_up runs the chunk, capture records it (without running it, as CUDA's does)."""
    captured = []

    def record(body):
        captured.append(StandInGraph(body))
        return captured[-1]
    monkeypatch.setattr(model.graphs, "warm_up", lambda body: body())
    monkeypatch.setattr(model.graphs, "capture", record)
    return captured


def test_captured_chunks_replay_for_every_request_of_their_shape(pipe, stand_in_graphs):
    sampler = ChunkedSampler(pipe, 3)
    sampler.uses_cuda_graphs = True  # as on a GPU
    requests = [dict(context="food", num_images=2, num_inference_steps=7, sampler="ddpm", guidance_scale=2.0, seed=s)
                for s in (1, 2)]
    requests.append({**requests[0], "sampler": "ddim", "guidance_scale": 4.0, "context": "hero"})
    for request in requests:
        assert_same_steps(sampler.denoise(**request), pipe.denoise(**request))
    assert len(stand_in_graphs) == 2, "chunks of 3 and of 1 (7 steps), each captured once for all requests"
    assert [g.replays for g in stand_in_graphs] == [1 + 2 + 2, 0 + 1 + 1], "the first run's chunks run as warm-up"
    other = dict(context="food", num_images=1, num_inference_steps=3, seed=4)  # another shape: its own buffers
    assert_same_steps(sampler.denoise(**other), pipe.denoise(**other))
    assert len(stand_in_graphs) == 3 and sampler.uses_cuda_graphs


def test_a_request_meeting_its_shape_in_use_runs_on_its_own_buffers(pipe, stand_in_graphs):
    sampler = ChunkedSampler(pipe, 2)
    sampler.uses_cuda_graphs = True
    first = dict(context="food", num_images=2, num_inference_steps=4, seed=1)
    second = {**first, "seed": 2}
    running = sampler.denoise(**first)
    started = [next(running)]  # the first request holds the cached buffers ...
    assert_same_steps(sampler.denoise(**second), pipe.denoise(**second))  # ... the second runs beside it
    assert_same_steps(started + list(running), pipe.denoise(**first))
    assert len(stand_in_graphs) == 1, "only the cached buffers' chunks are captured"


def test_a_failed_capture_falls_back_for_good_with_one_log_line(pipe, monkeypatch, caplog):
    def failing_capture(body):
        raise RuntimeError("operation not permitted when stream is capturing")
    monkeypatch.setattr(model.graphs, "warm_up", lambda body: body())
    monkeypatch.setattr(model.graphs, "capture", failing_capture)
    sampler = ChunkedSampler(pipe, 3)
    sampler.uses_cuda_graphs = True
    request = dict(context="spell", num_images=2, num_inference_steps=7, guidance_scale=2.0, seed=9)
    with caplog.at_level(logging.WARNING, logger="model.graphs"):
        assert_same_steps(sampler.denoise(**request), pipe.denoise(**request))
        assert_same_steps(sampler.denoise(**request), pipe.denoise(**request))
    assert sampler.uses_cuda_graphs is False and "capturing a 3-step chunk failed" in sampler.fallback_reason
    assert len(caplog.records) == 1 and "operation not permitted" in caplog.records[0].getMessage()


@pytest.mark.parametrize("kwargs", [
    {"num_inference_steps": 0}, {"num_inference_steps": 2.5}, {"context": "dragon"}, {"context": [1, 0, 0]},
    {"context": [1, 0, -0.5, 0, 0]}, {"num_images": 0}, {"sampler": "euler"}, {"guidance_scale": float("nan")},
    {"noise_scale": -1.0},
])
def test_bad_input_raises_the_pipelines_message(pipe, kwargs):
    request = {"context": "hero", "num_images": 1, "num_inference_steps": 2, **kwargs}
    with pytest.raises(ValueError) as expected:
        pipe.denoise(**request)
    with pytest.raises(ValueError) as err:
        ChunkedSampler(pipe, 2).denoise(**request)  # raised at the call, before any step, as the pipeline does
    assert str(err.value) == str(expected.value)


@pytest.mark.parametrize("sampler", ["unipc", "dpm++2m", "euler-a"])
def test_diffusers_samplers_are_refused_by_name(pipe, sampler):
    with pytest.raises(ValueError, match=re.escape(f"course's samplers only (ddpm, ddim), not '{sampler}'")):
        ChunkedSampler(pipe).denoise("hero", num_images=1, num_inference_steps=2, sampler=sampler)


@pytest.mark.parametrize("chunk_steps", [0, -1, 2.5, True])
def test_chunk_steps_must_be_a_positive_whole_number(pipe, chunk_steps):
    with pytest.raises(ValueError, match="chunk_steps must be a whole number"):
        ChunkedSampler(pipe, chunk_steps)


def test_batching_is_refused(pipe, monkeypatch):
    monkeypatch.setattr(pipe, "batcher", object())
    with pytest.raises(ValueError, match="not with batching"):
        ChunkedSampler(pipe).denoise("hero", num_images=1, num_inference_steps=2)


@pytest.mark.slow  # compiles (tens of seconds on 2 cores)
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_chunked_compiled_whole_step_matches_eager(pipe, sampler):
    """Chunks run pipe.step_function, the compiled whole step here: within test_fast.py's tolerance of eager
    step by step, and bit for bit the compiled step by step (the same compiled function on the same inputs)."""
    from torch._dynamo.utils import counters

    fast = SpritePipeline(pipe.unet, pipe.scheduler, NAMES)  # same weights
    fast.enable_fast_sampling(compile=True, whole_step=True)
    request = dict(context="food", num_images=2, num_inference_steps=8, sampler=sampler, guidance_scale=2.0, seed=3)
    compiled_steps = list(fast.denoise(**request))
    before = counters["stats"]["unique_graphs"]
    chunked = list(ChunkedSampler(fast, 3).denoise(**request))
    assert counters["stats"]["unique_graphs"] == before, "the chunks' inputs keep the compiled step's shapes"
    reference = list(pipe.denoise(**request))
    assert (chunked[-1].sample - reference[-1].sample).abs().max() < 1e-3
    levels = to_uint8(chunked[-1].sample).astype(int) - to_uint8(reference[-1].sample).astype(int)
    assert np.abs(levels).max() <= 1
    assert_same_steps(chunked, compiled_steps)


def test_benchmark_runs_at_toy_size_on_the_cpu(capsys):
    from benchmarks.graph_sampling import main

    main(["--device", "cpu", "--threads", "1", "--sprites", "2", "--steps", "3", "--chunk_steps", "2",
          "--paths", "chunked", "graphs"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| ddpm", "| ddim"))]
    assert len(rows) == 2 * 3, out  # two runs x (eager, chunked, graphs)
    assert all(row.endswith("| 0 / 0.00 |") for row in rows), "every path draws the eager path's sprites"
    assert "chunks of 2, CUDA graphs (fell back: eager chunks)" in out and "CUDA is not available" in out
    assert "one eager DDPM step, 2 sprites" in out and "Self CPU" in out  # the profile's table
